"""How the declared features are grouped in the store, and how a record is read for them.

Features that share a ``key`` and a ``time`` share one list of window entries
per key (a *group*): a card's count, sum and time since last read one list.
An entry keeps the record's offset, event time, and the group's fields.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streamer.core.dead_letters import BAD_TIMESTAMP, MISSING_FEATURE, MISSING_KEY
from streamer.core.features import InvalidValueError, to_number
from streamer.core.state.declared import (
    NUMERIC_AGGREGATIONS,
    RECORD_KEY,
    RECORD_TIMESTAMP,
    StateFeature,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Group:
    """Features with one key and one time source: one entry list per key value."""

    key: str
    time: str
    fields: tuple[str, ...]
    numeric: tuple[bool, ...]
    """Per field: read as a float (a numeric aggregation reads it) or as its JSON text."""
    horizon_us: int
    """The largest window of the group's features plus the allowed lateness."""


@dataclass(frozen=True)
class Layout:
    """The declared features, their groups, and the late and TTL policy."""

    features: tuple[StateFeature, ...]
    groups: tuple[Group, ...]
    feature_group: tuple[int, ...]
    feature_field: tuple[int, ...]
    """Per feature: the index of its field in its group's entries (-1: none)."""
    allowed_lateness_us: int
    key_ttl_us: int
    """A key whose newest time is older than the partition's clock minus this is forgotten."""

    @property
    def names(self) -> tuple[str, ...]:
        """The declared feature names, in declaration order (the order of every value tuple)."""
        return tuple(f.name for f in self.features)

    @property
    def fingerprint(self) -> str:
        """Changes when anything that changes a stored value changes (foreign-store check)."""
        text = repr((self.features, self.allowed_lateness_us, self.key_ttl_us))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_layout(
    features: Sequence[StateFeature], allowed_lateness_us: int, key_ttl_us: int = 0
) -> Layout:
    """Group the features by (key, time); ``key_ttl_us`` 0 means each group's horizon."""
    order: list[tuple[str, str]] = []
    for f in features:
        if (f.key, f.time) not in order:
            order.append((f.key, f.time))
    groups = []
    feature_group = []
    feature_field = []
    for key, time in order:
        members = [f for f in features if (f.key, f.time) == (key, time)]
        fields = tuple(dict.fromkeys(f.field for f in members if f.field))
        numeric = tuple(
            any(f.field == name and f.agg in NUMERIC_AGGREGATIONS for f in members)
            for name in fields
        )
        horizon = max(f.window_us for f in members) + allowed_lateness_us
        groups.append(Group(key, time, fields, numeric, horizon))
    for f in features:
        index = order.index((f.key, f.time))
        feature_group.append(index)
        feature_field.append(groups[index].fields.index(f.field) if f.field else -1)
    return Layout(
        features=tuple(features),
        groups=tuple(groups),
        feature_group=tuple(feature_group),
        feature_field=tuple(feature_field),
        allowed_lateness_us=allowed_lateness_us,
        key_ttl_us=key_ttl_us,
    )


class BadRecordError(Exception):
    """Why a record cannot update the state: its dead-letter reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_ABSENT = object()


def read_path(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a JSON object, or ``_ABSENT``."""
    if "." not in path:
        return doc.get(path, _ABSENT)
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return _ABSENT
        value = value.get(part, _ABSENT)
        if value is _ABSENT:
            return _ABSENT
    return value


def read_key(doc: dict[str, Any], record_key: bytes | None, path: str) -> bytes:
    """The key's bytes: the record key, a string's UTF-8, or a number's JSON text."""
    if path == RECORD_KEY:
        if record_key is None:
            raise BadRecordError(MISSING_KEY, "the record has no key")
        return record_key
    value = read_path(doc, path)
    if value is _ABSENT or value is None:
        raise BadRecordError(MISSING_KEY, f"key field {path!r} is missing or null")
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):  # a bool is an int: true and 1 are different keys
        return json_text(value).encode()
    raise BadRecordError(MISSING_KEY, f"key field {path!r} is a JSON {type(value).__name__}")


def json_text(value: Any) -> str:
    """A JSON value's text, with a whole float written as an integer: 7.0 and 7 are one number.

    A CSV cell is read as a float (``7`` becomes 7.0) where a JSON record has
    the integer 7: both are the key (or the distinct value) ``7``.
    """
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return orjson.dumps(value).decode()


_MAX_TIME_US = 1 << 62
"""Beyond it (about 146,000 years from 1970) a time is not a time, and would not fit the codec."""
MAX_TIME_US = _MAX_TIME_US


def read_time_us(doc: dict[str, Any], timestamp_ms: int | None, path: str) -> int:
    """Event time in whole microseconds since the epoch (see :func:`_time_us`)."""
    time_us = _time_us(doc, timestamp_ms, path)
    if not -_MAX_TIME_US < time_us < _MAX_TIME_US:
        where = "the record timestamp" if path == RECORD_TIMESTAMP else f"time field {path!r}"
        raise BadRecordError(BAD_TIMESTAMP, f"{where} is out of range")
    return time_us


def _time_us(doc: dict[str, Any], timestamp_ms: int | None, path: str) -> int:
    """Event time in whole microseconds since the epoch.

    The record timestamp is in milliseconds (none, or -1: ``bad_timestamp``). A
    field is epoch milliseconds as a JSON number, or an ISO-8601 string (UTC
    when it names no offset).
    """
    if path == RECORD_TIMESTAMP:
        if timestamp_ms is None or timestamp_ms < 0:
            raise BadRecordError(BAD_TIMESTAMP, "the record has no timestamp")
        return int(timestamp_ms) * 1000
    value = read_path(doc, path)
    if isinstance(value, bool) or value is _ABSENT or value is None:
        raise BadRecordError(BAD_TIMESTAMP, f"time field {path!r} is missing or not a time")
    if isinstance(value, int):
        return value * 1000
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecordError(BAD_TIMESTAMP, f"time field {path!r} is {value}")
        return round(value * 1000)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise BadRecordError(
                BAD_TIMESTAMP, f"time field {path!r} is {value[:64]!r}, not ISO-8601"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return (parsed - _EPOCH) // _MICRO
    raise BadRecordError(BAD_TIMESTAMP, f"time field {path!r} is a JSON {type(value).__name__}")


def read_field(doc: dict[str, Any], path: str, *, numeric: bool) -> float | str:
    """A field's value: a finite float for a numeric aggregation, else its JSON text.

    A number is read as the preprocessor reads a feature (numbers, booleans,
    numeric strings), with its reasons: ``non_numeric_feature``, ``non_finite``.
    """
    value = read_path(doc, path)
    if value is _ABSENT or value is None:
        raise BadRecordError(MISSING_FEATURE, f"field {path!r} is missing or null")
    if not numeric:
        return value if isinstance(value, str) else json_text(value)
    try:
        return to_number(path, value)  # the preprocessor's coercion, and its reasons
    except InvalidValueError as exc:
        raise BadRecordError(exc.reason, exc.detail) from None

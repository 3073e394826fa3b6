"""How the declared features are grouped in the store, and how a record is read for them.

Features that share a ``key`` and a ``time`` share one list of window entries
per key (a *group*): a card's count, sum and time since last read one list.
An entry keeps the record's offset, event time, and the group's fields.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from types import ModuleType
from typing import Any, NamedTuple

import orjson

from streamer.core.dead_letters import (
    BAD_TIMESTAMP,
    MISSING_FEATURE,
    MISSING_KEY,
    NON_FINITE,
    STATE_TOO_LARGE,
)
from streamer.core.features import InvalidValueError, to_number
from streamer.core.state.declared import (
    NUMERIC_AGGREGATIONS,
    RECORD_KEY,
    RECORD_TIMESTAMP,
    StateFeature,
)
from streamer.core.state.limits import entries_that_fit
from streamer.core.state.reading import TypedBatch

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
    max_entries: int = 0
    """The most entries a key of the group holds (0: no bound; core/state/limits.py)."""


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
    max_text_bytes: int = 0
    """The longest key, and text a ``distinct_count`` reads, in UTF-8 bytes (0: no bound)."""

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
    features: Sequence[StateFeature],
    allowed_lateness_us: int,
    key_ttl_us: int = 0,
    *,
    max_entries_per_key: int = 0,
    max_text_bytes: int = 0,
    max_record_bytes: int = 0,
) -> Layout:
    """Group the features by (key, time); ``key_ttl_us`` 0 means each group's horizon.

    The size bounds (core/state/limits.py): a key holds at most
    ``max_entries_per_key`` entries, or, when it is 0 and ``max_record_bytes``
    is not, the most whose changelog record fits ``max_record_bytes``; 0 and
    0: no bound. ``max_text_bytes`` 0: no bound on a key's or a text's length.
    """
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
        max_entries = max_entries_per_key
        if not max_entries and max_record_bytes:
            max_entries = max(1, entries_that_fit(numeric, max_record_bytes, max_text_bytes))
        groups.append(Group(key, time, fields, numeric, horizon, max_entries))
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
        max_text_bytes=max_text_bytes,
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
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 reads as inf (loads_json)
        raise BadRecordError(MISSING_KEY, f"key field {path!r} is {value}, not a finite number")
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
        if not -_MAX_TIME_US < value * 1000 < _MAX_TIME_US:  # 1e306 * 1000 is inf: no round()
            raise BadRecordError(BAD_TIMESTAMP, f"time field {path!r} is out of range")
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


def text_too_long(text: str, max_bytes: int) -> bool:
    """Whether ``text`` is longer than ``max_bytes`` in UTF-8 (encoded only when it may be)."""
    if len(text) > max_bytes:
        return True  # a character is at least a byte
    return len(text) * 4 > max_bytes and len(text.encode()) > max_bytes


def _too_large(what: str, size: int, max_bytes: int) -> BadRecordError:
    return BadRecordError(
        STATE_TOO_LARGE,
        f"{what} is {size} bytes, more than state.max_text_bytes={max_bytes} (a key's state "
        "must fit one changelog record)",
    )


def read_field(doc: dict[str, Any], path: str, *, numeric: bool) -> float | str:
    """A field's value: a finite float for a numeric aggregation, else its JSON text.

    A number is read as the preprocessor reads a feature (numbers, booleans,
    numeric strings), with its reasons: ``non_numeric_feature``, ``non_finite``.
    """
    value = read_path(doc, path)
    if value is _ABSENT or value is None:
        raise BadRecordError(MISSING_FEATURE, f"field {path!r} is missing or null")
    if not numeric:
        if isinstance(value, float) and not math.isfinite(value):  # 1e400 reads as inf
            raise BadRecordError(NON_FINITE, f"field {path!r} is {value}, not finite")
        if isinstance(value, str):
            return value
        try:
            return json_text(value)
        except TypeError:  # orjson writes 255 levels at most, where it reads 1,024
            raise BadRecordError(
                STATE_TOO_LARGE, f"field {path!r} nests deeper than a value kept in state may"
            ) from None
    try:
        return to_number(path, value)  # the preprocessor's coercion, and its reasons
    except InvalidValueError as exc:
        raise BadRecordError(exc.reason, exc.detail) from None


def top_level_paths(layout: Layout) -> tuple[str, ...] | None:
    """The fields the groups read, for a typed decode of a batch (core/state/reading.py).

    None when one is nested: the records are then read from their dicts.
    """
    paths: list[str] = []
    for group in layout.groups:
        sources = [path for path in (group.key, group.time) if path not in _RECORD_PARTS]
        for path in (*sources, *group.fields):
            if "." in path:
                return None
            paths.append(path)
    return tuple(dict.fromkeys(paths))


_RECORD_PARTS = (RECORD_KEY, RECORD_TIMESTAMP)


GroupInput = tuple[bytes, int, tuple[float | str, ...]]
"""A record as one group reads it: its store key, event time (µs) and the group's fields."""


class GroupColumns(NamedTuple):
    """A batch's records as one group reads them, one list per part, in record order."""

    store_keys: list[bytes]
    times_us: list[int]
    rows: list[tuple[float | str, ...]]
    """Per record, the group's fields."""


_RECORD_TIME, _TOP_FIELD_TIME, _OTHER_TIME = range(3)


def _time_source(path: str) -> int:
    if path == RECORD_TIMESTAMP:
        return _RECORD_TIME
    return _OTHER_TIME if "." in path else _TOP_FIELD_TIME


@dataclass(frozen=True)
class _GroupRead:
    """One group's paths, and whether each is a field at the top level (read inline)."""

    prefix: bytes
    """The store keys of the group start with it (``key_state_key(group, b"")``)."""
    key: str
    key_top: bool
    time: str
    time_source: int
    fields: tuple[tuple[str, bool, bool], ...]
    """Per field: its path, whether it is read as a number, whether it is at the top level."""


class RecordReader:
    """Reads records for a layout's groups: one at a time, or a batch column by column.

    Both read the usual record (a string key, an integer time, finite float and
    string fields, at the top level) inline, and anything else through the
    ``read_*`` functions, which read it the same way or raise with the reason,
    in the same order. The columns of a batch are checked in C
    (``set(map(type, column))``); a record that a check does not pass is read
    alone.
    """

    def __init__(
        self, layout: Layout, prefixes: Sequence[bytes], compiled: ModuleType | None = None
    ) -> None:
        """A reader of ``layout``'s groups, whose store keys start with ``prefixes``.

        ``compiled``: the state engine's C module (_engine.c), whose ``typed_group``
        reads a group whose parts are all at hand in one pass; None: the Python reads only.
        """
        self._compiled = compiled
        self._groups = tuple(
            _GroupRead(
                prefix,
                group.key,
                group.key != RECORD_KEY and "." not in group.key,
                group.time,
                _time_source(group.time),
                tuple(
                    (name, numeric, "." not in name)
                    for name, numeric in zip(group.fields, group.numeric, strict=True)
                ),
            )
            for group, prefix in zip(layout.groups, prefixes, strict=True)
        )
        self._max_text = layout.max_text_bytes

    def _check_text(self, key_bytes: bytes, group: _GroupRead, fields: list[float | str]) -> None:
        """A key or a text field longer than ``state.max_text_bytes``: ``state_too_large``."""
        limit = self._max_text
        if len(key_bytes) > limit:
            where = "the record key" if group.key == RECORD_KEY else f"key field {group.key!r}"
            raise _too_large(where, len(key_bytes), limit)
        for (name, numeric, _top), value in zip(group.fields, fields, strict=True):
            if not numeric and text_too_long(value, limit):  # type: ignore[arg-type]
                field_name = f"field {name!r}"
                raise _too_large(field_name, len(str(value).encode()), limit)

    def read(
        self, doc: dict[str, Any], key: bytes | None, timestamp_ms: int | None
    ) -> list[GroupInput]:
        """Per group: the record's store key, time and fields (BadRecordError: its reason)."""
        inputs = []
        for group in self._groups:
            raw = doc.get(group.key) if group.key_top else None
            key_bytes = raw.encode() if type(raw) is str else read_key(doc, key, group.key)
            if group.time_source == _RECORD_TIME:
                raw = timestamp_ms
            else:
                raw = doc.get(group.time) if group.time_source == _TOP_FIELD_TIME else None
            if (
                type(raw) is int
                and (raw >= 0 or group.time_source != _RECORD_TIME)
                and -_MAX_TIME_US < raw * 1000 < _MAX_TIME_US
            ):
                time_us = raw * 1000
            else:
                time_us = read_time_us(doc, timestamp_ms, group.time)
            fields: list[float | str] = []
            for name, numeric, top in group.fields:
                raw = doc.get(name) if top else None
                if (numeric and type(raw) is float and math.isfinite(raw)) or (
                    not numeric and type(raw) is str
                ):
                    fields.append(raw)
                else:
                    fields.append(read_field(doc, name, numeric=numeric))
            if self._max_text:
                self._check_text(key_bytes, group, fields)
            inputs.append((group.prefix + key_bytes, time_us, tuple(fields)))
        return inputs

    def read_columns(
        self,
        docs: Sequence[dict[str, Any]],
        keys: Sequence[bytes | None],
        timestamps_ms: Sequence[int | None],
    ) -> tuple[list[GroupColumns], dict[int, BadRecordError]]:
        """A batch's records per group, and the records that cannot be read (by index).

        Each record gets what :meth:`read` gives it: the columns hold the same
        values, and a bad record's reason is the one :meth:`read` raises.
        """
        count = len(docs)
        alone: set[int] = set()
        """The records to read one at a time."""
        columns = []
        column_at = _column_of(docs)
        for group in self._groups:
            read = self._in_one_pass(group, column_at, keys, timestamps_ms)
            if read is not None:  # no record of the batch is read alone for this group
                columns.append(read)
                continue
            prefix = group.prefix
            if group.key_top:
                raw = column_at(group.key)
                if set(map(type, raw)) == {str}:  # map: in C, a third of a comprehension's time
                    store_keys = list(map(prefix.__add__, map(str.encode, raw)))  # all str
                else:
                    store_keys = [prefix + k.encode() if type(k) is str else b"" for k in raw]
                    alone.update(i for i, k in enumerate(raw) if type(k) is not str)
            elif group.key == RECORD_KEY:
                store_keys = [b"" if k is None else prefix + k for k in keys]
                if None in keys:
                    alone.update(i for i, k in enumerate(keys) if k is None)
            else:
                store_keys = [b""] * count
                alone.update(range(count))
            times_us = self._times(group, column_at, timestamps_ms, alone)
            values = [
                self._column(name, numeric, top, column_at, count, alone)
                for name, numeric, top in group.fields
            ]
            if self._max_text:
                self._long_texts(group, store_keys, values, alone)
            rows: list[tuple[float | str, ...]] = (
                list(zip(*values, strict=True)) if values else [()] * count
            )
            columns.append(GroupColumns(store_keys, times_us, rows))
        bad: dict[int, BadRecordError] = {}
        for index in sorted(alone):
            try:
                inputs = self.read(docs[index], keys[index], timestamps_ms[index])
            except BadRecordError as problem:
                bad[index] = problem
                continue
            for column, (store_key, time_us, fields) in zip(columns, inputs, strict=True):
                column.store_keys[index] = store_key
                column.times_us[index] = time_us
                column.rows[index] = fields
        return columns, bad

    def _in_one_pass(
        self,
        group: _GroupRead,
        column_at: Callable[[str], list[Any]],
        keys: Sequence[bytes | None],
        timestamps_ms: Sequence[int | None],
    ) -> GroupColumns | None:
        """The group's columns read in C, in one pass, or None (the loop below reads them).

        C reads a batch only when none of its records is read alone, and then
        gives what the loop gives: the same store keys, times and rows.
        """
        compiled = self._compiled
        record_key = group.key == RECORD_KEY
        record_time = group.time_source == _RECORD_TIME
        if (
            compiled is None
            or not (group.key_top or record_key)
            or not (record_time or group.time_source == _TOP_FIELD_TIME)
            or not all(top for _name, _numeric, top in group.fields)
        ):
            return None
        key_column = keys if record_key else column_at(group.key)
        times = timestamps_ms if record_time else column_at(group.time)
        read = compiled.typed_group(
            group.prefix,
            key_column if type(key_column) is list else list(key_column),
            record_key,
            times if type(times) is list else list(times),
            record_time,
            [column_at(name) for name, _numeric, _top in group.fields],
            tuple(numeric for _name, numeric, _top in group.fields),
            self._max_text,
        )
        return None if read is None else GroupColumns(*read)

    def _long_texts(
        self,
        group: _GroupRead,
        store_keys: list[bytes],
        values: list[list[Any]],
        alone: set[int],
    ) -> None:
        """Read alone the records whose key or text field may be too long (read checks them)."""
        limit = self._max_text + len(group.prefix)
        if store_keys and max(map(len, store_keys)) > limit:
            alone.update(i for i, k in enumerate(store_keys) if len(k) > limit)
        for (_name, numeric, _top), column in zip(group.fields, values, strict=True):
            if numeric or not column:
                continue
            if max(len(x) if type(x) is str else 0 for x in column) * 4 > self._max_text:
                alone.update(
                    i
                    for i, x in enumerate(column)
                    if type(x) is str and text_too_long(x, self._max_text)
                )

    @staticmethod
    def _times(
        group: _GroupRead,
        column: Callable[[str], list[Any]],
        timestamps_ms: Sequence[int | None],
        alone: set[int],
    ) -> list[int]:
        """The group's event times in µs (0 for a record read alone)."""
        record = group.time_source == _RECORD_TIME
        if record:
            raw: list[Any] = list(timestamps_ms)
        elif group.time_source == _TOP_FIELD_TIME:
            raw = column(group.time)
        else:
            count = len(timestamps_ms)
            alone.update(range(count))
            return [0] * count
        if raw and set(map(type, raw)) == {int}:
            low, high = min(raw), max(raw)
            if (
                (low >= 0 or not record)
                and low * 1000 > -_MAX_TIME_US
                and high * 1000 < _MAX_TIME_US
            ):
                return list(map((1000).__mul__, raw))
        # the read's check, record by record
        ok = [
            type(t) is int and (t >= 0 or not record) and -_MAX_TIME_US < t * 1000 < _MAX_TIME_US
            for t in raw
        ]
        alone.update(i for i, good in enumerate(ok) if not good)
        return [t * 1000 if good else 0 for t, good in zip(raw, ok, strict=True)]

    @staticmethod
    def _column(
        name: str,
        numeric: bool,
        top: bool,
        column: Callable[[str], list[Any]],
        count: int,
        alone: set[int],
    ) -> list[Any]:
        """One field's values (anything for a record read alone)."""
        if not top:
            alone.update(range(count))
            return [None] * count
        raw = column(name)
        if numeric:
            if set(map(type, raw)) != {float} or not all(map(math.isfinite, raw)):
                alone.update(
                    i for i, x in enumerate(raw) if type(x) is not float or not math.isfinite(x)
                )
        elif set(map(type, raw)) != {str}:
            alone.update(i for i, x in enumerate(raw) if type(x) is not str)
        return raw


def _column_of(docs: Sequence[dict[str, Any]]) -> Callable[[str], list[Any]]:
    """``path -> [each record's value there, None when absent]``.

    A typed batch's columns as they are (core/state/reading.py), or each dict's, read in C.
    """
    if isinstance(docs, TypedBatch):
        return docs.columns.__getitem__
    return lambda path: list(map(dict.get, docs, repeat(path)))

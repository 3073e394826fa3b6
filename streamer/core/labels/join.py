"""How a label finds its prediction: the identity both carry, and reading each side.

A prediction and its label meet on an *identity*, one of:

- the scored record's source coordinates (``topic``, ``partition``,
  ``offset``), which every output document carries, and which the label
  carries in fields of the same names (``id_field = ""``, the default);
- a record id (``id_field``): a field path of the label and of the scored
  record, such as ``transaction_id``, or ``$key`` for the record key (an
  output document carries it as ``key``).

Reading never raises for a bad record: :class:`Rejected` carries the reason
that the caller counts (a label for the dead-letter topic, later, in the live
path).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from streamer.core.dead_letters import LABEL_MISROUTED
from streamer.core.state.declared import RECORD_KEY
from streamer.core.state.layout import BadRecordError, json_text, read_path, read_time_us

# Why a label joined no prediction (each one is counted; none raises).
MALFORMED = "malformed"
"""The label record is not a JSON object (or a row the reader could not turn into one)."""
MISSING_ID = "missing_id"
"""It lacks the id field, or a coordinate, or one of them has the wrong type."""
WRONG_TYPE = "wrong_type"
"""Its value is missing or not a label: not 0/1 (classification), not a finite number."""
BAD_TIME = "bad_time"
"""Its ``time_field`` is missing or not a time."""
UNMATCHED = "unmatched"
"""No prediction with its identity is in the ledger (never scored, or expired)."""
DUPLICATE = "duplicate"
"""Its prediction was labelled already: the first label stays."""
PAST_HORIZON = "past_horizon"
"""Its time is more than the horizon after the prediction's: too late to join."""
MISROUTED = LABEL_MISROUTED
"""Live only: its ``partition`` coordinate is not the labels partition it was read from."""

LABEL_REASONS = (MALFORMED, MISSING_ID, WRONG_TYPE, BAD_TIME, UNMATCHED, DUPLICATE, PAST_HORIZON)

# Why an output document holds no prediction to join (counted too).
NO_SCORE = "no_score"
"""It lacks the score field, or the score is not a finite number."""
BAD_OUTPUT = "bad_output"
"""It is not an output document: no coordinates, no model, no ``scored_at``."""

OUTPUT_REASONS = (MALFORMED, MISSING_ID, NO_SCORE, BAD_OUTPUT)

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

_COORDINATES = b"c"
_RECORD_ID = b"i"


@dataclass(frozen=True)
class LabelSpec:
    """How labels are read and joined: ``[labels]`` and the model names, resolved once.

    Attributes:
        id_field: The id's field path in the label and the scored record
            (``$key``: the record key); empty joins by source coordinates.
        value_field: The label's value: 0/1 (or true/false) for classification,
            a number for regression.
        time_field: The label's time (epoch ms or ISO-8601); empty: none, so no
            label latency and no horizon check.
        task: ``classification`` or ``regression``.
        score_field: The output field that holds the score.
        horizon_us: A prediction is joinable this long after it was made.
        challengers: The ``[[challenger]]`` names: an output whose model has one
            of them is that challenger's; any other is the champion's.
    """

    id_field: str = ""
    value_field: str = "label"
    time_field: str = ""
    task: str = CLASSIFICATION
    score_field: str = "score"
    horizon_us: int = 30 * 86_400_000_000
    challengers: frozenset[str] = frozenset()


class Rejected(Exception):  # noqa: N818 - a result, not an error: it is counted, never raised out
    """Why a label or an output cannot be joined: its reason and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Label(msgspec.Struct, frozen=True, gc=False):
    """One label, read: whose it is, its value, and its time (None: the label has none).

    A struct, not a dataclass: a frozen dataclass's ``__init__`` cost 4x a struct's (0.6 µs).
    """

    identity: bytes
    value: float
    time_us: int | None


@dataclass(frozen=True, slots=True)
class Output:
    """One model's prediction for one record, read from an output document."""

    identity: bytes
    challenger: bool
    name: str
    version: str
    score: float
    time_us: int


def coordinates_identity(topic: str, partition: int, offset: int) -> bytes:
    """The identity of the record at ``topic/partition/offset``."""
    return _COORDINATES + b"%d/%d/" % (partition, offset) + topic.encode()


def coordinates_identities(topic: str, partition: int, offsets: Iterable[int]) -> list[bytes]:
    """:func:`coordinates_identity` of each offset of one partition (a batch's, cheaply)."""
    prefix = _COORDINATES + b"%d/" % partition
    suffix = b"/" + topic.encode()
    return [prefix + b"%d" % offset + suffix for offset in offsets]


def coordinates_labels(
    topic: str,
    partition: int,
    records: Sequence[int],
    values: Sequence[float],
    times: Sequence[int] | None,
) -> list[Label]:
    """The labels of records of one partition, given in columns (``times`` None: no time).

    As many as ``records`` and ``values`` have (the shorter), whatever ``times`` has.
    """
    identities = coordinates_identities(topic, partition, records)
    at = times if times is not None else itertools.repeat(None)
    return [
        Label(identity, value, time_us)
        for identity, value, time_us in zip(identities, values, at, strict=False)
    ]


def record_id_identity(record_id: bytes) -> bytes:
    """The identity of a record by its id's bytes (a string's UTF-8, a number's JSON text)."""
    return _RECORD_ID + record_id


def describe_identity(identity: bytes) -> str:
    """The identity as text, for a message: ``topic/partition/offset`` or the id."""
    if identity[:1] == _COORDINATES:
        partition, offset, topic = identity[1:].decode("utf-8", "replace").split("/", 2)
        return f"{topic}/{partition}/{offset}"
    return identity[1:].decode("utf-8", "backslashreplace")


def read_label(doc: Any, record_key: bytes | None, spec: LabelSpec) -> Label:
    """The label in a decoded label record (``record_key``: its key).

    Raises:
        Rejected: With reason ``malformed``, ``missing_id``, ``wrong_type`` or ``bad_time``.
    """
    if not isinstance(doc, dict):
        raise Rejected(MALFORMED, f"a label must be a JSON object, got {type(doc).__name__}")
    identity = _identity(doc, record_key, spec.id_field, "label")
    value = label_value(read_path(doc, spec.value_field), spec)
    time_us = None
    if spec.time_field:
        try:
            time_us = read_time_us(doc, None, spec.time_field)
        except BadRecordError as exc:
            raise Rejected(BAD_TIME, exc.detail) from None
    return Label(identity, value, time_us)


QUICK_TIME_MS = 1 << 52
"""An epoch-ms label time below this in magnitude is in range as microseconds (2^62)."""


def quick_label(doc: Any, spec: LabelSpec) -> Label | None:
    """The label of a record by source coordinates in its common form, cheaply; else None.

    The common form: whole-number coordinates, a whole-number value (0 or 1 for
    classification), an epoch-ms time, each at a top-level field. The label is the
    one :func:`read_label` reads; None: read it with :func:`read_label` (any other
    form, and every reason to reject one).
    """
    if type(doc) is not dict:
        return None
    topic, partition, offset = doc.get("topic"), doc.get("partition"), doc.get("offset")
    value = doc.get(spec.value_field)
    if (
        type(topic) is not str
        or not topic
        or type(partition) is not int
        or type(offset) is not int
        or type(value) is not int
        or partition < 0
        or offset < 0
        or not (value in (0, 1) if spec.task == CLASSIFICATION else -(2**53) < value < 2**53)
    ):
        return None
    time_us = None
    if spec.time_field:
        at = doc.get(spec.time_field)
        if type(at) is not int or not -QUICK_TIME_MS < at < QUICK_TIME_MS:
            return None
        time_us = at * 1000
    return Label(coordinates_identity(topic, partition, offset), float(value), time_us)


def label_value(raw: Any, spec: LabelSpec) -> float:
    """A label's value as a float: 0.0 or 1.0 for classification, any finite number else.

    A number, a boolean or a numeric string (a CSV cell) is read; anything else
    is ``wrong_type``.
    """
    field = spec.value_field
    if isinstance(raw, bool):
        value = 1.0 if raw else 0.0
    elif isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise Rejected(WRONG_TYPE, f"{field!r} is {raw[:64]!r}, not a number") from None
    else:
        # read_path gives a bare object() for an absent field.
        absent = raw is None or type(raw) is object
        got = "missing or null" if absent else f"a JSON {type(raw).__name__}"
        raise Rejected(WRONG_TYPE, f"{field!r} is {got}")
    if not math.isfinite(value):
        raise Rejected(WRONG_TYPE, f"{field!r} is {value}, not finite")
    if spec.task == CLASSIFICATION and value not in (0.0, 1.0):
        raise Rejected(WRONG_TYPE, f"{field!r} is {value!r}; a classification label is 0 or 1")
    return value


def read_output(doc: Any, spec: LabelSpec) -> Output:
    """The prediction in a decoded output document (as the output topics hold them).

    Raises:
        Rejected: With reason ``malformed``, ``bad_output``, ``missing_id`` or ``no_score``.
    """
    if not isinstance(doc, dict):
        raise Rejected(MALFORMED, f"an output must be a JSON object, got {type(doc).__name__}")
    model, scored_at = doc.get("model"), doc.get("scored_at")
    if not isinstance(model, dict) or not isinstance(scored_at, str):
        raise Rejected(BAD_OUTPUT, "an output document has a 'model' object and 'scored_at'")
    name, version = str(model.get("name", "")), str(model.get("version", ""))
    try:
        time_us = _iso_us(scored_at)
    except ValueError:
        raise Rejected(BAD_OUTPUT, f"'scored_at' is {scored_at[:64]!r}, not ISO-8601") from None
    key = doc.get("key")
    identity = _identity(
        doc, key.encode() if isinstance(key, str) else None, spec.id_field, "output"
    )
    score = doc.get(spec.score_field)
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise Rejected(NO_SCORE, f"{spec.score_field!r} is {score!r}, not a finite number")
    return Output(identity, name in spec.challengers, name, version, float(score), time_us)


def record_identity(doc: Any, record_key: bytes | None, id_field: str) -> bytes:
    """The identity of a scored record from its decoded value and key (``id_field`` set).

    Raises:
        Rejected: With reason ``missing_id``.
    """
    if not isinstance(doc, dict) and id_field != RECORD_KEY:
        raise Rejected(MISSING_ID, "the record is not a JSON object")
    return _identity(doc, record_key, id_field, "record")


def iso_time_us(text: str) -> int:
    """An ISO-8601 time (``scored_at``) in microseconds since the epoch (UTC when naive)."""
    # The producer's form (iso_now: ``2026-12-07T02:00:00.123Z``, a new one per batch): its
    # second is parsed once, the milliseconds added (a parse cost 2.4 µs a batch).
    if len(text) == 24 and text[19] == "." and text[23] == "Z":
        millis = text[20:23]
        if millis.isascii() and millis.isdigit():
            second, second_us = _last_second
            if text[:19] != second:
                second_us = _iso_us(text[:19] + "Z")
                _set_last_second(text[:19], second_us)
            return second_us + int(millis) * 1000
    return _iso_us(text)


_last_second = ("", 0)
"""The last second :func:`iso_time_us` parsed (``YYYY-MM-DDTHH:MM:SS``) and its µs."""


def _set_last_second(second: str, second_us: int) -> None:
    global _last_second  # noqa: PLW0603 - one tuple, replaced whole (threads read either)
    _last_second = (second, second_us)


def _identity(doc: dict[str, Any], record_key: bytes | None, id_field: str, what: str) -> bytes:
    if id_field == RECORD_KEY:
        if record_key is None:
            raise Rejected(MISSING_ID, f"the {what} has no record key")
        return record_id_identity(record_key)
    if id_field:
        value = read_path(doc, id_field)
        if isinstance(value, str):
            return record_id_identity(value.encode())
        if isinstance(value, int | float) and not isinstance(value, bool):
            return record_id_identity(json_text(value).encode())
        raise Rejected(MISSING_ID, f"the {what}'s {id_field!r} is missing or not a string/number")
    topic, partition, offset = doc.get("topic"), doc.get("partition"), doc.get("offset")
    whole_partition, whole_offset = _whole(partition), _whole(offset)
    if not isinstance(topic, str) or not topic or whole_partition is None or whole_offset is None:
        raise Rejected(
            MISSING_ID,
            f"the {what} lacks its source coordinates (topic, partition, offset): "
            f"{topic!r}, {partition!r}, {offset!r}",
        )
    return coordinates_identity(topic, whole_partition, whole_offset)


def _whole(value: Any) -> int | None:
    """A non-negative whole number (a CSV cell reads ``3`` as 3.0), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer() and 0 <= value < 2**53:
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    return None


def _iso_us(text: str) -> int:
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

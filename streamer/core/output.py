"""Encode the output records and the dead letters, and group them for the client."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import orjson

if TYPE_CHECKING:
    import numpy as np


def iso_now(now: float | None = None) -> str:
    """UTC time as ISO-8601 with milliseconds, e.g. ``2026-11-25T21:40:00.123Z``."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def key_text(key: bytes | None) -> str | None:
    """The input key as text for the output body (undecodable bytes are escaped)."""
    if key is None:
        return None
    return key.decode("utf-8", "backslashreplace")


# The bytes a JSON string holds as they are: printable ASCII except '"' and '\\'.
_PLAIN_BYTES = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')


def _plain_keys(keys: Sequence[bytes | None]) -> bool:
    """True when every key is present and its JSON string is itself between quotes."""
    if not keys or None in keys:
        return False
    # Deleting every plain byte leaves nothing (one pass in C; a regex was 10x slower).
    return not b"".join(cast("Sequence[bytes]", keys)).translate(None, _PLAIN_BYTES)


def encode_predictions(
    *,
    topic: str,
    partition: int,
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    rows: np.ndarray,
    predictions: np.ndarray,
    output_names: tuple[str, ...],
    model: dict[str, str],
    scored_at: str,
    reasons: Sequence[bytes] = (),
) -> list[bytes]:
    """One JSON document per valid row, in row order.

    ``rows`` indexes into ``offsets`` and ``keys``. A single-output model gives
    a ``score`` field; a multi-output model gives one field per output name.

    The fields that are the same for the whole batch are encoded once, and each
    record is assembled with bytes formatting: a ``dumps`` per record (each
    allocating a fresh buffer) cost about 3x more here. ``repr`` of a finite
    float is its shortest round-trip form, which is valid JSON.
    """
    head = b'{"key":%s,"topic":' + _literal(topic) + b',"partition":' + str(partition).encode()
    if reasons:
        return _with_reasons(
            head, offsets, keys, rows, predictions, output_names, model, scored_at, reasons
        )
    tail = b',"model":' + _literal(model) + b',"scored_at":' + _literal(scored_at) + b"}"
    values = predictions.tolist()
    if predictions.ndim == 1:
        # One %-format per record (key, offset, score): the common single-output case.
        single = head + b',"offset":%d,' + _literal(output_names[0]) + b":%r" + tail
        return _encode_single(single, offsets, keys, rows.tolist(), values)
    template = head + b',"offset":%d,' + b"%s" + tail
    return _encode_multi(template, offsets, keys, rows.tolist(), values, output_names)


def _with_reasons(
    head: bytes,
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    rows: np.ndarray,
    predictions: np.ndarray,
    output_names: tuple[str, ...],
    model: dict[str, str],
    scored_at: str,
    reasons: Sequence[bytes],
) -> list[bytes]:
    """The records with a ``reasons`` field (``model.explain_top_k``), one per prediction row."""
    template = (
        head
        + b',"offset":%d,%s,"reasons":%s,"model":'
        + _literal(model)
        + b',"scored_at":'
        + _literal(scored_at)
        + b"}"
    )
    values = predictions.tolist()
    names = [_literal(name) + b":%r" for name in output_names]
    out: list[bytes] = []
    for index, row in enumerate(rows.tolist()):
        value = values[index]
        score = b",".join(
            n % (v,)
            for n, v in zip(names, value if predictions.ndim == 2 else [value], strict=True)
        )
        key = keys[row]
        key_json = b"null" if key is None else orjson.dumps(key_text(key))
        out.append(template % (key_json, offsets[row], score, reasons[index]))
    return out


def _literal(value: object) -> bytes:
    """``value`` as JSON, for a %-template: a '%' in a name must not format."""
    return orjson.dumps(value).replace(b"%", b"%%")


def _encode_single(
    single: bytes,
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    rows: list[int],
    values: list[float],
) -> list[bytes]:
    """The records of a single-output model: one %-format each with ``single``."""
    dumps = orjson.dumps
    if _plain_keys(keys):
        # Every key is printable ASCII without '"' or '\\': its JSON string is
        # the bytes between quotes, with no decode and no dumps per record.
        plain = single.replace(b'"key":%s', b'"key":"%s"', 1)
        if len(rows) == len(offsets):
            # Every row is valid (rows are distinct indexes in order): no lookups.
            return list(map(plain.__mod__, zip(keys, offsets, values, strict=True)))
        return [
            plain % (keys[row], offsets[row], value)
            for row, value in zip(rows, values, strict=True)
        ]
    return [
        single
        % (
            b"null" if key is None else dumps(key.decode("utf-8", "backslashreplace")),
            offsets[row],
            value,
        )
        for row, value in zip(rows, values, strict=True)
        for key in (keys[row],)
    ]


def _encode_multi(
    template: bytes,
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    rows: list[int],
    values: list[list[float]],
    output_names: tuple[str, ...],
) -> list[bytes]:
    """The records of a multi-output model: one field per output name."""
    dumps = orjson.dumps
    names = [_literal(name) + b":%r" for name in output_names]
    scores = [b",".join(n % (v,) for n, v in zip(names, row, strict=True)) for row in values]
    out: list[bytes] = []
    for row, score in zip(rows, scores, strict=True):
        key = keys[row]
        key_json = b"null" if key is None else dumps(key_text(key))
        out.append(template % (key_json, offsets[row], score))
    return out


def with_state_features(
    encoded: list[bytes],
    rows: Sequence[int],
    names: Sequence[str],
    values: Sequence[tuple[float, ...] | None],
) -> list[bytes]:
    """Each JSON output document with ``"state_features": {name: value}`` (``state.log_features``).

    ``encoded[i]`` is the document of batch row ``rows[i]``; a row without
    computed features is left as it is.
    """
    out = []
    for document, row in zip(encoded, rows, strict=True):
        served = values[row]
        if served is None:
            out.append(document)
        else:
            features = orjson.dumps(dict(zip(names, served, strict=True)))
            out.append(document[:-1] + b',"state_features":' + features + b"}")
    return out


def state_features_json(
    names: Sequence[str], values: Sequence[tuple[float, ...] | None]
) -> list[bytes | None]:
    """Per row, its served features as one JSON object (None: none computed)."""
    return [
        None if served is None else orjson.dumps(dict(zip(names, served, strict=True)))
        for served in values
    ]


# A readable error fits in a header; the rest of a very long one is cut.
MAX_ERROR_CHARS = 1000
# What a record costs beyond its key, value and header bytes: the record batch
# header (61 bytes) and the record's own varints, with room to spare, so that a
# record estimated to fit is never refused by the client's own size check.
RECORD_OVERHEAD_BYTES = 256
HEADER_OVERHEAD_BYTES = 8

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OutputGroup:
    """Records of one batch for one topic, as columns (``headers`` may be None for all).

    What the producer hands to a client's ``send_batch``: a run of consecutive
    answers of a batch that go to the same topic.
    """

    topic: str
    values: Sequence[bytes]
    keys: Sequence[bytes | None]
    headers: Sequence[Headers | None] | None = None
    partition: int | None = None
    """None: the partitioner's choice. A state changelog group names its input's partition,
    and its values may be None (a tombstone: the store deleted the key)."""

    def __len__(self) -> int:
        return len(self.values)


def record_size(key: bytes | None, value: bytes | None, headers: Headers | None) -> int:
    """An upper bound of the bytes a record takes in a produce request."""
    size = RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    for name, header in headers or ():
        size += len(name) + len(header) + HEADER_OVERHEAD_BYTES
    return size


def _cut_headers(field: str, original: bytes) -> Headers:
    return [
        (f"streamer.{field}.size", str(len(original)).encode()),
        (f"streamer.{field}.sha256", hashlib.sha256(original).hexdigest().encode()),
        (f"streamer.{field}.truncated", b"true"),
    ]


@dataclass(frozen=True, slots=True)
class FittedRecord:
    """A dead letter as it is sent: cut to fit when it had to be."""

    key: bytes | None
    value: bytes
    headers: Headers
    truncated: bool


def fit_dead_letter(
    key: bytes | None, value: bytes, headers: Headers, *, max_bytes: int, prefix_bytes: int
) -> FittedRecord:
    """The dead letter unchanged when it fits in ``max_bytes``, else cut to fit.

    The value is cut to at most ``prefix_bytes`` leading bytes, then, if the
    key alone is still too large, the key too; either is cut further (to none)
    only when even that does not fit. A field no longer than ``prefix_bytes``
    is kept whole unless it must be cut to fit: a 300-byte value stays whole
    beside a 1.2 MB key. Each cut field, and only a cut one, gets
    ``streamer.<field>.size``, ``.sha256`` (of the original bytes) and
    ``.truncated`` headers, so that the original can be found and checked in
    the input topic.
    """
    if record_size(key, value, headers) <= max_bytes:
        return FittedRecord(key, value, headers, truncated=False)
    cut = list(headers)
    kept_key, kept_value = key, value
    value_cut = key_cut = False

    def cut_value(limit: int) -> None:
        nonlocal kept_value, value_cut
        if not value_cut:
            cut.extend(_cut_headers("value", value))
            value_cut = True
        kept_value = kept_value[: max(0, limit)]

    def cut_key(limit: int) -> None:
        nonlocal kept_key, key_cut
        if not key_cut:
            cut.extend(_cut_headers("key", key or b""))
            key_cut = True
        kept_key = (kept_key or b"")[: max(0, limit)]

    def over() -> int:
        return record_size(kept_key, kept_value, cut) - max_bytes

    if len(value) > prefix_bytes:
        cut_value(prefix_bytes)
    if over() > 0 and key is not None and len(key) > prefix_bytes:
        cut_key(prefix_bytes)
    if over() > 0 and kept_value:  # the prefixes alone are too large: less of the value
        if not value_cut:
            cut_value(len(kept_value))  # its headers first: they take room too
        cut_value(len(kept_value) - over())
    if over() > 0 and kept_key:  # and then less of the key
        if not key_cut:
            cut_key(len(kept_key))
        cut_key(len(kept_key) - over())
    return FittedRecord(kept_key, kept_value, cut, truncated=value_cut or key_cut)


def minimal_dead_letter(key: bytes | None, value: bytes, headers: Headers) -> FittedRecord:
    """The dead letter as headers only: no key, an empty value, their sizes and hashes."""
    cut = list(headers)
    if value:
        cut += _cut_headers("value", value)
    if key:
        cut += _cut_headers("key", key)
    return FittedRecord(None, b"", cut, truncated=bool(value or key))


def dead_letter_headers(
    *,
    reason: str,
    detail: str,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    model_version: str,
    failed_at: str,
) -> list[tuple[str, bytes]]:
    """Kafka headers that explain a dead letter; the value and key stay the original bytes.

    The error text is cut to ``MAX_ERROR_CHARS``: it may quote the record.
    """
    if len(detail) > MAX_ERROR_CHARS:
        detail = detail[: MAX_ERROR_CHARS - 3] + "..."
    return [
        ("streamer.reason", reason.encode()),
        ("streamer.error", detail.encode("utf-8", "backslashreplace")),
        ("streamer.stage", stage.encode()),
        ("streamer.source.topic", topic.encode()),
        ("streamer.source.partition", str(partition).encode()),
        ("streamer.source.offset", str(offset).encode()),
        ("streamer.model.version", model_version.encode()),
        ("streamer.failed_at", failed_at.encode()),
    ]

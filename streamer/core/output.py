"""Encode the output records and the dead letters."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import numpy as np
import orjson


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
) -> list[bytes]:
    """One JSON document per valid row, in row order.

    ``rows`` indexes into ``offsets`` and ``keys``. A single-output model gives
    a ``score`` field; a multi-output model gives one field per output name.

    The fields that are the same for the whole batch are encoded once, and each
    record is assembled with bytes formatting: a ``dumps`` per record (each
    allocating a fresh buffer) cost about 3x more here. ``repr`` of a finite
    float is its shortest round-trip form, which is valid JSON.
    """
    dumps = orjson.dumps

    def literal(value: object) -> bytes:
        # Constant parts go into a %-template: a '%' in a name must not format.
        return dumps(value).replace(b"%", b"%%")

    head = b'{"key":%s,"topic":' + literal(topic) + b',"partition":' + str(partition).encode()
    tail = b',"model":' + literal(model) + b',"scored_at":' + literal(scored_at) + b"}"
    values = predictions.tolist()
    if predictions.ndim == 1:
        # One %-format per record (key, offset, score): the common single-output case.
        single = head + b',"offset":%d,' + literal(output_names[0]) + b":%r" + tail
        if _plain_keys(keys):
            # Every key is printable ASCII without '"' or '\\': its JSON string is
            # the bytes between quotes, with no decode and no dumps per record.
            plain = single.replace(b'"key":%s', b'"key":"%s"', 1)
            return [
                plain % (keys[row], offsets[row], value)
                for row, value in zip(rows.tolist(), values, strict=True)
            ]
        return [
            single
            % (
                b"null" if key is None else dumps(key.decode("utf-8", "backslashreplace")),
                offsets[row],
                value,
            )
            for row, value in zip(rows.tolist(), values, strict=True)
            for key in (keys[row],)
        ]
    template = head + b',"offset":%d,' + b"%s" + tail
    names = [literal(name) + b":%r" for name in output_names]
    scores = [b",".join(n % (v,) for n, v in zip(names, row, strict=True)) for row in values]
    out: list[bytes] = []
    for row, score in zip(rows.tolist(), scores, strict=True):
        key = keys[row]
        key_json = b"null" if key is None else dumps(key_text(key))
        out.append(template % (key_json, offsets[row], score))
    return out


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
    """Kafka headers that explain a dead letter; the value and key stay the original bytes."""
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

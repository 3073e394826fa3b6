"""Reading a changelog topic back: what a restore writes, and what the last meta record says.

A batch's changes reach the changelog in the order they were written, its
meta record last (:mod:`streamer.core.state.windows`), in one delivery with
the batch's outputs. So the records after the last meta record belong to a
batch whose changelog was never fully acknowledged: that batch was not
committed, its records come again, and a restore must not apply them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgspec

from streamer.core.state.codec import META_KEY, Meta, decode_meta
from streamer.core.state.store import Change

ChangelogRecord = tuple[int, bytes, bytes | None]
"""``(offset, key, value)`` as a changelog reader yields them (value None: a tombstone)."""

_UNSAFE_GROUP_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def safe_group(group_id: str) -> str:
    """``group_id`` as a changelog topic name or a store directory holds it (``_`` for others)."""
    return _UNSAFE_GROUP_CHARS.sub("_", group_id)


def meta_record(key: bytes, value: bytes | None) -> Meta | None:
    """The meta a changelog record holds; None for any other record or an unreadable meta."""
    if key != META_KEY or value is None:
        return None
    try:
        return decode_meta(value)
    except msgspec.DecodeError:
        return None


def last_meta(chunks: Iterable[list[ChangelogRecord]]) -> Meta | None:
    """The meta of the last meta record of a changelog partition (None: it has none)."""
    found: Meta | None = None
    for chunk in chunks:
        for _offset, key, value in chunk:
            if key == META_KEY:
                found = meta_record(key, value)
    return found


@dataclass
class RestoreCount:
    """What :func:`acknowledged_changes` read: records kept and records left after the last meta."""

    kept: int = 0
    dropped: int = 0


def acknowledged_changes(
    chunks: Iterable[list[ChangelogRecord]], count: RestoreCount, chunk: int = 10_000
) -> Iterator[list[Change]]:
    """The changes of a changelog partition up to its last meta record, about ``chunk`` at a time.

    The records after the last meta record are never yielded (``count.dropped``
    says how many there were).
    """
    ready: list[Change] = []
    pending: list[Change] = []
    for records in chunks:
        for _offset, key, value in records:
            pending.append((key, value))
            if key == META_KEY:
                ready.extend(pending)
                pending = []
        if len(ready) >= chunk:
            count.kept += len(ready)
            yield ready
            ready = []
    if ready:
        count.kept += len(ready)
        yield ready
    count.dropped = len(pending)

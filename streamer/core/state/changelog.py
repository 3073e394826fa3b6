"""Reading a changelog topic back: what a restore writes, and what the last meta record says.

A batch's changes reach the changelog in the order they were written, its
meta record last (:mod:`streamer.core.state.windows`), in one delivery with
the batch's outputs. So the records after the last meta record belong to a
batch whose changelog was never fully acknowledged: that batch was not
committed, its records come again, and a restore must not apply them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
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


@dataclass(frozen=True, slots=True)
class Flush:
    """One partition's coalesced changes on their way to the changelog, its meta record last.

    ``covers_from`` is the first input offset of the oldest batch whose changes
    it carries (None: it carries no batch's, only forgotten served runs or a
    sweep); until the flush is acknowledged, no offset from there on may be
    committed.
    """

    flush_id: int
    changes: tuple[Change, ...]
    covers_from: int | None


class CoalescedChangelog:
    """One partition's changelog records between flushes: each key once, with its newest value.

    Kafka Streams' record cache, for the state's changelog: the changes of many
    batches are gathered (:meth:`add`), and :meth:`take` turns them into one
    :class:`Flush`, the key states and served runs in the order they were
    first written, the partition's newest meta record last (so a restore, which
    applies a changelog up to its last meta record, applies a flush whole or
    not at all). A key written by many batches of the interval is sent once.

    The no-data-loss rule (docs/state.md): an input offset is committed only
    once every change it depends on is acknowledged in the changelog.
    :meth:`durable_from` is the first input offset whose changes are not
    (gathered, or in a flush not yet acknowledged): the commit watermark never
    passes it.
    """

    def __init__(self, first_id: Callable[[], int]) -> None:
        self._next_id = first_id
        self._changes: dict[bytes, bytes | None] = {}
        self._meta: bytes | None = None
        self._last_meta: bytes | None = None
        self._covers_from: int | None = None
        self._since: float | None = None
        self._in_flight: dict[int, Flush] = {}

    def add(self, changes: Iterable[Change], first_offset: int | None, now: float) -> None:
        """Gather changes (``first_offset``: the first input offset of the batch they are of).

        The daemon's keeper adds a batch with no changes (its changes stay live
        in the engine until the flush, which adds them, encoded, just before
        :meth:`take`): the batch starts the interval and sets the durable bound.
        """
        gathered = self._changes
        gathered.update(changes)  # in C: a key keeps its first place and takes its newest value
        if META_KEY in gathered:
            self._meta = gathered.pop(META_KEY)
        if first_offset is not None and self._covers_from is None:
            self._covers_from = first_offset
        if self._since is None and (gathered or self._meta is not None or first_offset is not None):
            self._since = now

    def touch(self, now: float) -> None:
        """Changes are waiting elsewhere (the engine's live keys): start the interval."""
        if self._since is None:
            self._since = now

    def due(self, now: float, interval_s: float) -> bool:
        """True when changes have waited ``interval_s`` since the first of them was gathered."""
        return self._since is not None and now - self._since >= interval_s

    @property
    def gathered(self) -> bool:
        """True while changes wait for the next flush."""
        return self._since is not None

    def take(self) -> Flush | None:
        """The gathered changes as one flush, its meta record last (None: nothing gathered)."""
        if self._since is None:
            return None
        meta = self._meta if self._meta is not None else self._last_meta
        changes = list(self._changes.items())
        if meta is not None:
            changes.append((META_KEY, meta))
            self._last_meta = meta
        flush = Flush(self._next_id(), tuple(changes), self._covers_from)
        self._in_flight[flush.flush_id] = flush
        self._changes = {}
        self._meta = None
        self._covers_from = None
        self._since = None
        return flush

    def acknowledged(self, flush_id: int) -> bool:
        """The broker acknowledged a flush; False for one that is not ours (or acknowledged)."""
        return self._in_flight.pop(flush_id, None) is not None

    def unacknowledged(self) -> list[Flush]:
        """The flushes not yet acknowledged, oldest first (a rewind sends them again)."""
        return list(self._in_flight.values())

    def durable_from(self) -> int | None:
        """The first input offset whose changes are not all acknowledged (None: every one is)."""
        bounds = [f.covers_from for f in self._in_flight.values() if f.covers_from is not None]
        if self._covers_from is not None:
            bounds.append(self._covers_from)
        return min(bounds, default=None)

    def everything(self) -> list[Change]:
        """Every change not yet acknowledged, in order (what a rebuilt store lacks)."""
        changes = [change for flush in self._in_flight.values() for change in flush.changes]
        changes.extend(self._changes.items())
        if self._meta is not None:
            changes.append((META_KEY, self._meta))
        return changes

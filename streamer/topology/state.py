"""The lifecycle of each input partition's state in the daemon: open, restore, apply, close.

The consumer actor holds one :class:`StateKeeper` (no pykka here) and hands it
every batch the Ledger cuts, before the Ledger keeps the batch for rewinds:

- **Before a partition's first batch**, its store is opened
  (``state.dir/<topic>-<partition>`` in RocksDB, or in memory when
  ``state.dir`` is empty) and planned against the changelog
  (:func:`~streamer.core.state.restore.plan_restore`): used as it is when it is
  exactly as far as the changelog's last meta record, else emptied and rebuilt
  from the changelog up to that record (:mod:`streamer.core.state.changelog`).
- **Each batch** is applied in offset order; the batch leaves with the values
  each record was served (``state_values``: one float64 block, a row per
  record, which the preparation places by name), the records the state
  rejects, and its store changes for the changelog (sent by the producer with
  its answers).
- **The changelog.** With ``state.changelog_interval_s`` > 0 a partition's
  changes are gathered (:class:`~streamer.core.state.changelog.CoalescedChangelog`,
  each key once with its newest value) and the consumer sends them as one
  :class:`~streamer.messages.StateFlush` per interval (:meth:`StateKeeper.flushes`);
  :meth:`StateKeeper.durable_bounds` says where the commit must stop until
  they are acknowledged. With 0, each batch carries its own changes
  (``SourceBatch.changelog``), sent with its answers.
- **At each commit**, what was served below the committed offset is forgotten;
  those deletions go to the changelog with the partition's next changes.
- **On revoke**, the store is closed and the changes not yet acknowledged are
  dropped: the partition commits only up to its durable bound, and its store
  (ahead of the changelog) is rebuilt from the changelog by the next assignment.

A restarted consumer actor gets a fresh keeper, which plans every partition
again: a store ahead of the changelog is rebuilt from it.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson

from streamer.clients.base import ChangelogReader
from streamer.core.features import decoded_object
from streamer.core.records import TP
from streamer.core.state.changelog import (
    CoalescedChangelog,
    Flush,
    RestoreCount,
    acknowledged_changes,
    last_meta,
    meta_record,
    safe_group,
)
from streamer.core.state.codec import Meta, is_key_state
from streamer.core.state.layout import Layout, top_level_paths
from streamer.core.state.reading import typed_batch
from streamer.core.state.restore import Action, RestorePlan, local_meta, plan_restore, restore
from streamer.core.state.store import (
    WRITE_BEHIND_BYTES,
    Change,
    MemoryStore,
    RocksStore,
    Store,
)
from streamer.core.state.windows import PartitionState
from streamer.messages import Rejection, ServedValues, SourceBatch, StateProgress
from streamer.settings import Settings
from streamer.statefile import STATE_STAGE, SWEEP_EVERY_ROWS, layout_of

log = logging.getLogger(__name__)

_flush_ids = itertools.count()
"""Flush ids unique in the process: a restarted consumer's keeper never reuses an old one."""

DIRTY_ENTRIES = 250_000
"""A partition whose keys changed since its last flush hold more window entries than this
(about 27 MB decoded, the key cache's size) is flushed before its interval is over."""

DIRTY_KEYS = 5_000
"""Nor more keys than this: each live key costs its objects (about 0.5-1 KB) whatever its
entries, and a stream of keys each seen once (1,000,000 distinct cards in the bench's (s)
row) kept a second of them live per partition: +206-237 MB of peak RSS against +187 MB
with the keys written per batch; the bench's 1,250 cards a partition never reach it."""
IDLE_FLUSH_SHARE = 0.1
"""When a poll finds nothing, changes gathered this share of ``state.changelog_interval_s``
leave at once: at the end of a burst the commits trailed by the whole interval (the bench's
200,000-record (s) row, about 2.9 s long, ran at 0.43 of the stateless rate with 1 s and
0.54 with 0.25 s), while an idle poll every few ms would flush once per poll without a floor."""

HIGH_WATERMARK_TIMEOUT_S = 10.0
RESTORE_LOG_EVERY_S = 5.0
STORE_LOCK_WAIT_S = 30.0
"""How long a store that another process holds (a member handing it over) is waited for."""


def changelog_topic_name(settings: Settings) -> str:
    """``state.changelog_topic``, or ``<group>.<input>.state-<fingerprint8>-changelog``."""
    if settings.state.changelog_topic:
        return settings.state.changelog_topic
    group = safe_group(settings.kafka.group_id)
    fingerprint = layout_of(settings).fingerprint[:8]
    return f"{group}.{settings.kafka.input_topic}.state-{fingerprint}-changelog"


class CountingStore:
    """A store that keeps the number of key states it holds, without a scan per batch.

    The engine reads every key it writes first (:meth:`get`, or its cache of
    keys the store holds): a key state whose read found nothing and that a
    write puts is new; one a write deletes was there (only a sweep deletes).
    """

    def __init__(self, store: Store, keys: int) -> None:
        self.inner = store
        self.keys = keys
        self._missing: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:  # noqa: D102
        value = self.inner.get(key)
        if value is None and is_key_state(key):
            self._missing.add(key)
        return value

    def write(self, changes: Sequence[Change]) -> None:  # noqa: D102
        self.inner.write(changes)
        # A batch writes a thousand keys or so: looked at in C (dict, in), not one by one.
        written = dict(changes)
        missing = self._missing
        if missing:
            self.keys += sum(1 for key in missing if written.get(key) is not None)
            missing.clear()
        if None in written.values():  # a sweep's deletions (a batch deletes no key state)
            self.keys -= sum(1 for k, v in written.items() if v is None and is_key_state(k))

    def keys_between(self, low: bytes, high: bytes) -> list[bytes]:  # noqa: D102
        return self.inner.keys_between(low, high)

    def items_from(self, prefix: bytes):  # type: ignore[no-untyped-def]  # noqa: D102
        return self.inner.items_from(prefix)

    def close(self) -> None:  # noqa: D102
        self.inner.close()


@dataclass
class _Partition:
    state: PartitionState
    """Deferred (PartitionState.take_changes): its changes are encoded and written per flush."""
    store: CountingStore
    since_sweep: int = 0
    restore_seconds: float = 0.0


@dataclass
class _Restored:
    """What the last restores did, for the next metrics report."""

    records: dict[TP, int] = field(default_factory=dict)


class StateKeeper:
    """The state of every assigned partition of one consumer (see the module docstring).

    ``reader`` opens a reader of the changelog topic (None: no changelog, for
    tests and file mode: every partition starts from its local store).
    ``report`` gets a :class:`StateProgress` while a partition restores.
    """

    def __init__(
        self,
        settings: Settings,
        reader: Callable[[], ChangelogReader] | None,
        *,
        report: Callable[[StateProgress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout: Layout = layout_of(settings)
        self.names = self.layout.names
        self.topic = settings.kafka.input_topic
        """The topic whose records have state: a batch of another (labels) passes through."""
        self.changelog_topic = changelog_topic_name(settings)
        self._dir = settings.state.dir
        self._group = safe_group(settings.kafka.group_id)
        self._max_bytes = settings.batch.max_record_bytes
        self._paths = top_level_paths(self.layout)
        self._open_reader = reader
        self._reader: ChangelogReader | None = None
        self._report = report
        self._partitions: dict[TP, _Partition] = {}
        self._restored = _Restored()
        self._restoring: TP | None = None
        self._clock = clock
        self.interval_s = settings.state.changelog_interval_s
        """0: each batch carries its changes; else they are gathered this long (flushes)."""
        self._changelogs: dict[TP, CoalescedChangelog] = {}

    # --- the batches -----------------------------------------------------------

    def apply(self, source: SourceBatch) -> SourceBatch:
        """The batch with its features applied (its partition restored first, once).

        A batch of another topic than the input (the labels) has no state: as it is.
        """
        if source.topic != self.topic:
            return source
        tp = (source.topic, source.partition)
        part = self._ready(tp)
        objects = self._objects(source.values)
        columns = (source.offsets, source.keys, source.timestamps_ms, objects)
        part.since_sweep += len(objects)
        carried: tuple[Change, ...] = ()
        try:
            if part.since_sweep >= SWEEP_EVERY_ROWS:
                part.state.sweep()  # keys past their TTL read as empty: no value changes
                part.since_sweep = 0
            applied = part.state.apply_columns(*columns)
        except msgspec.DecodeError as exc:
            # A key that does not decode: the store is corrupt. The failed batch changed
            # nothing (it reads its keys before it changes one): rebuild and apply it again.
            log.warning(
                "the state store of %s/%d is corrupt (%s): rebuilding it from the changelog",
                *tp,
                exc,
                extra={"topic": tp[0], "partition": tp[1]},
            )
            part, carried = self._rebuilt(tp, part)
            applied = part.state.apply_columns(*columns)
        if self.interval_s:
            # Kept live for the partition's next flush; the batch carries none of them.
            self._changelog(tp).add((), source.first_offset, self._clock())
            changelog: tuple[Change, ...] = ()
        else:
            # Forgotten served runs and a sweep since the last batch, then this one's.
            changelog = (*carried, *part.state.take_changes())
        # The preparation places the served values by name (core/preparation.py): the
        # engine's block as it is, a row per record; the rare records served none apart.
        missing = applied.missing
        return replace(
            source,
            state_rejections=tuple(
                Rejection(index, outcome.reason, outcome.detail, STATE_STAGE)
                for index, outcome in sorted(missing.items())
                if outcome is not None  # None: not a JSON object, the preprocessor's reason
            ),
            changelog=changelog,
            state_names=self.names,
            state_values=ServedValues(
                np.frombuffer(applied.values, np.float64).reshape(len(objects), applied.width),
                frozenset(missing),
            ),
        )

    def _objects(self, values: Sequence[bytes | None]) -> Sequence[dict[str, Any] | None]:
        """Each value as a JSON object, or None (the preprocessor gives its reason).

        A batch the typed decode takes (core/state/reading.py: only the fields
        the features read, the usual batch) comes as its columns.
        """
        if self._paths is not None:
            batch = typed_batch(values, self._paths, self._max_bytes)
            if batch is not None:
                return batch
        return [doc if type(doc) is dict else None for doc in _decoded(values, self._max_bytes)]

    def prepare(self, tp: TP) -> None:
        """Open and restore a partition's state now, before its first batch is cut."""
        if tp[0] == self.topic:
            self._ready(tp)

    def committed(self, offsets: Mapping[TP, int]) -> None:
        """The broker accepted these commits: forget what was served below them."""
        for tp, offset in offsets.items():
            part = self._partitions.get(tp)
            if part is not None and part.state.meta.served_from < offset:
                part.state.forget_served(offset)  # kept for the next flush (or batch)
                if self.interval_s:
                    self._changelog(tp).touch(self._clock())

    # --- the gathered changelog (state.changelog_interval_s > 0) ------------------

    def flushes(self, *, force: bool = False, idle: bool = False) -> list[tuple[TP, Flush]]:
        """The flushes due now (``force``: every partition's gathered changes), in order.

        ``idle``: the last poll found nothing, so nothing more is gathered by waiting;
        changes gathered for :data:`IDLE_FLUSH_SHARE` of the interval leave then, and the
        commits do not trail an idle stream by the whole interval.

        A partition's changes are encoded and written to its store here, once per
        flush (:meth:`PartitionState.take_changes`), its meta with them. A partition
        whose changed keys hold more than :data:`DIRTY_ENTRIES` entries, or are more
        than :data:`DIRTY_KEYS`, is flushed before its interval is over.
        """
        now = self._clock()
        flushes = []
        for tp, changelog in self._changelogs.items():
            part = self._partitions.get(tp)
            if not (
                changelog.due(now, self.interval_s)
                or (force and changelog.gathered)
                or (idle and changelog.due(now, self.interval_s * IDLE_FLUSH_SHARE))
                or (
                    part is not None
                    and (
                        part.state.dirty_entries > DIRTY_ENTRIES
                        or part.state.dirty_keys > DIRTY_KEYS
                    )
                )
            ):
                continue
            if part is not None:
                changelog.add(part.state.take_changes(), None, now)
            flush = changelog.take()
            if flush is not None:
                flushes.append((tp, flush))
        return flushes

    def flushed(self, tp: TP, flush_id: int) -> bool:
        """The broker acknowledged a flush; False for one of a partition revoked since."""
        changelog = self._changelogs.get(tp)
        return changelog is not None and changelog.acknowledged(flush_id)

    def unacknowledged(self) -> list[tuple[TP, Flush]]:
        """Every flush not yet acknowledged, each partition's oldest first (for a rewind)."""
        return [(tp, f) for tp, c in self._changelogs.items() for f in c.unacknowledged()]

    def durable_bounds(self) -> dict[TP, int | None]:
        """Per open partition, the first input offset whose changes are not all acknowledged."""
        return {tp: changelog.durable_from() for tp, changelog in self._changelogs.items()}

    @property
    def flushes_pending(self) -> int:
        """Flushes not yet acknowledged, and partitions with changes gathered (for the drain)."""
        return sum(len(c.unacknowledged()) + c.gathered for c in self._changelogs.values())

    def _changelog(self, tp: TP) -> CoalescedChangelog:
        changelog = self._changelogs.get(tp)
        if changelog is None:
            changelog = self._changelogs[tp] = CoalescedChangelog(lambda: next(_flush_ids))
        return changelog

    def _rebuilt(self, tp: TP, part: _Partition) -> tuple[_Partition, tuple[Change, ...]]:
        """The partition's store rebuilt from the changelog, with the changes it has not got.

        Those are the flushes not yet acknowledged and the live changes of the
        batches since the last flush (encoded now, and gathered for the next
        flush: they never were in the changelog). With ``changelog_interval_s``
        0, the changes made since the last batch (forgotten served runs, a
        sweep) come back too, for the next batch to carry.
        """
        unwritten = part.state.take_changes(write=False)
        carried: tuple[Change, ...] = ()
        if self.interval_s:
            self._changelog(tp).add(unwritten, None, self._clock())
            overlay = self._changelog(tp).everything()
        else:
            overlay = list(unwritten)
            carried = unwritten[:-1]  # the next batch's meta comes last
        self._close(tp, destroy=True)
        return self._ready(tp, overlay), carried

    # --- assignment ------------------------------------------------------------

    def revoke(self, tps: Iterable[TP]) -> None:
        """Close the stores of partitions that leave (their data stays on disk)."""
        for tp in tps:
            self._close(tp, destroy=False)

    def close(self) -> None:
        """Close every store and the changelog reader."""
        for tp in list(self._partitions):
            self._close(tp, destroy=False)
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    @property
    def state_keys(self) -> int:
        """Keys in the state of the open partitions."""
        return sum(part.store.keys for part in self._partitions.values())

    def progress(self) -> StateProgress:
        """Every open partition's keys, bytes and last restore; the records restored since."""
        restored, self._restored = self._restored.records, _Restored()
        parts = self._partitions
        restoring = self._restoring
        return StateProgress(
            keys={tp: p.store.keys for tp, p in parts.items()},
            nbytes={tp: _approximate_bytes(p.store.inner) for tp, p in parts.items()},
            restoring={tp: tp == restoring for tp in (*parts, *([restoring] if restoring else []))},
            restore_seconds={tp: p.restore_seconds for tp, p in parts.items()},
            restored=restored,
        )

    def _close(self, tp: TP, *, destroy: bool) -> None:
        if not destroy:
            # Not acknowledged, or not flushed (the live changes since the last flush): dropped.
            # The partition commits only up to its durable bound; its store holds what its
            # last flush held, and is used or rebuilt by its next assignment's plan.
            self._changelogs.pop(tp, None)
        part = self._partitions.pop(tp, None)
        if part is None:
            return
        store = part.store.inner
        if destroy and isinstance(store, RocksStore):
            store.destroy()
        else:
            store.close()

    # --- restore ---------------------------------------------------------------

    def _ready(self, tp: TP, overlay: Sequence[Change] = ()) -> _Partition:
        """The partition's state, restored first; ``overlay``: changes written after the restore.

        A store rebuilt while changes of its own are on their way to the changelog
        (gathered, or in flushes not yet acknowledged) gets them back from ``overlay``.
        """
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = self._restore(tp, overlay)
        return part

    def _open_store(self, tp: TP) -> Store:
        if not self._dir:
            return MemoryStore()
        # Under the group: two groups reading one topic on one machine never share a store.
        return open_rocks_store(
            Path(self._dir) / self._group / f"{tp[0]}-{tp[1]}",
            tp,
            "state",
            write_behind_bytes=WRITE_BEHIND_BYTES,
        )

    def _changelog_meta(self, tp: TP) -> tuple[Meta | None, int]:
        """The changelog partition's last meta record and its end offset."""
        reader = self._changelog_reader()
        if reader is None:
            return None, 0
        return changelog_tail(reader, tp[1])

    def _changelog_reader(self) -> ChangelogReader | None:
        if self._reader is None and self._open_reader is not None:
            self._reader = self._open_reader()
        return self._reader

    def _restore(self, tp: TP, overlay: Sequence[Change] = ()) -> _Partition:
        started = time.monotonic()
        store = self._open_store(tp)
        changelog, end = self._changelog_meta(tp)
        plan = plan_restore(
            local_meta(store),
            changelog,
            fingerprint=self.layout.fingerprint,
            topic=tp[0],
            partition=tp[1],
        )
        if plan.discard_local:
            store = emptied(store, lambda: self._open_store(tp))
        restored = 0
        if plan.action is Action.REBUILD:
            restored = self._rebuild(tp, store, end, plan)
        else:
            log_plan(log, "state", tp, plan)
        if overlay:
            store.write(overlay)
        counting = CountingStore(store, 0)
        state = PartitionState(self.layout, counting, tp[0], tp[1], deferred=True)
        part = _Partition(state, counting)
        counting.keys = part.state.key_count()
        part.restore_seconds = time.monotonic() - started
        self._restored.records[tp] = self._restored.records.get(tp, 0) + restored
        return part

    def _rebuild(self, tp: TP, store: Store, end: int, plan: RestorePlan) -> int:
        reader = self._changelog_reader()
        assert reader is not None
        where = {"topic": tp[0], "partition": tp[1]}
        log.info(
            "state of %s/%d: %s; restoring from %s (%d records)",
            *tp,
            plan.reason or "rebuild",
            self.changelog_topic,
            end,
            extra=where,
        )
        self._restoring = tp
        count = RestoreCount()
        logged = time.monotonic()
        counted = 0  # of the records written, those already in self._restored
        changes = itertools.chain.from_iterable(
            acknowledged_changes(reader.read(tp[1], 0, end), count)
        )
        try:
            for done in restore(store, changes):
                if time.monotonic() - logged >= RESTORE_LOG_EVERY_S:
                    logged = time.monotonic()
                    log.info("state of %s/%d: %d of %d restored", *tp, done, end, extra=where)
                    self._restored.records[tp] = self._restored.records.get(tp, 0) + done - counted
                    counted = done
                    if self._report is not None:
                        self._report(self.progress())
        finally:
            self._restoring = None
        log.info(
            "state of %s/%d restored: %d changelog records%s",
            *tp,
            count.kept,
            f" ({count.dropped} after the last meta record ignored)" if count.dropped else "",
            extra=where,
        )
        return count.kept - counted


def emptied(store: Store, reopen: Callable[[], Store]) -> Store:
    """An empty store in place of ``store``: a RocksDB directory deleted and opened anew."""
    if isinstance(store, RocksStore):
        store.destroy()
        return reopen()
    return MemoryStore()


def log_plan(logger: logging.Logger, what: str, tp: TP, plan: RestorePlan) -> None:
    """The plan of a store kept or started empty (a rebuild logs its own progress)."""
    logger.info(
        "%s of %s/%d: %s: %s",
        what,
        *tp,
        plan.reason,
        "using the local store" if plan.action is Action.USE_LOCAL else "starting empty",
        extra={"topic": tp[0], "partition": tp[1]},
    )


def open_rocks_store(
    path: Path,
    tp: TP,
    what: str,
    write_behind_bytes: int = 0,
    memtable_bytes: int = 0,
    *,
    wal: bool = True,
) -> Store:
    """The RocksDB store at ``path``, waiting for a member that hands it over to let it go.

    A store that does not open for another reason (corrupt, foreign) is
    discarded and rebuilt from the changelog. ``write_behind_bytes``, ``memtable_bytes``,
    ``wal``: see RocksStore.
    """
    opened = partial(
        RocksStore,
        path,
        write_behind_bytes=write_behind_bytes,
        memtable_bytes=memtable_bytes,
        wal=wal,
    )
    deadline = time.monotonic() + STORE_LOCK_WAIT_S
    while True:
        try:
            return opened()
        except Exception as exc:  # rocksdict raises plain Exceptions
            if "lock" not in str(exc).lower():
                problem = exc
                break
            # Another process (a member handing the partition over) has it open still.
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    log.warning(
        "the %s store %s does not open (%s): discarding it, rebuilt from the changelog",
        what,
        path,
        problem,
        extra={"topic": tp[0], "partition": tp[1]},
    )
    shutil.rmtree(path, ignore_errors=True)
    return opened()


def changelog_tail(reader: ChangelogReader, partition: int) -> tuple[Meta | None, int]:
    """A changelog partition's last meta record and its end offset (None, 0: empty)."""
    end = reader.high_watermark(partition, HIGH_WATERMARK_TIMEOUT_S)
    if end <= 0:
        return None, 0
    tail = [record for chunk in reader.read(partition, end - 1, end) for record in chunk]
    meta = meta_record(tail[-1][1], tail[-1][2]) if tail else None
    if meta is not None:
        return meta, end
    # The last batch's changelog was cut short (never acknowledged): find the meta before it.
    return last_meta(reader.read(partition, 0, end)), end


def _decoded(values: Sequence[bytes | None], max_bytes: int) -> list[dict[str, Any] | str]:
    """Each value as a JSON object, or the dead-letter reason it gets (``decoded_object``).

    A batch of values that all decode as objects within the cap (the usual one)
    is decoded at once, without a call and a try per record.
    """
    try:
        if values and min(map(len, values)) and max(map(len, values)) <= max_bytes:  # type: ignore[arg-type]
            docs = list(map(orjson.loads, values))  # type: ignore[arg-type]
            if all(type(doc) is dict for doc in docs):
                return docs
    except (TypeError, orjson.JSONDecodeError):  # a value without bytes, or not JSON
        pass
    return [decoded_object(value, max_bytes) for value in values]


def _approximate_bytes(store: Store) -> int:
    return store.approximate_bytes() if isinstance(store, RocksStore) else 0

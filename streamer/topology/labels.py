"""The prediction ledger of each input partition in the daemon: open, restore, record, join, close.

The producer actor holds one :class:`LedgerKeeper` (no pykka here): it is the
one place that knows each record's score as its output is sent.

- **When a partition is assigned** (:meth:`LedgerKeeper.prepare`), or at the
  latest before its first batch (scored or of labels), its ledger's
  store is opened (``state.dir/<group>/ledger-<input topic>-<partition>`` in
  RocksDB, or in memory when ``state.dir`` is empty) and planned against the
  ledger changelog (``labels.ledger_topic``) by the state's rule
  (:func:`~streamer.core.state.restore.plan_restore`): used as it is when
  exactly as far as the changelog's last meta record, else rebuilt from the
  changelog up to that record. The metrics then get the restored window
  (:meth:`LedgerKeeper.take_resets`).
- :meth:`LedgerKeeper.record` (a batch's champion outputs) and
  :meth:`LedgerKeeper.join` (a label batch) each write one step to the store
  (its changes, the marks and the meta record at once) and gather what goes to
  the changelog in the partition's
  :class:`~streamer.core.state.changelog.CoalescedChangelog`, the state's.
- **The flushes** (:meth:`LedgerKeeper.flushes`): a partition's gathered
  changes leave as one flush, its meta record last, when the partition has no
  flush in flight, else when that one is acknowledged, or at once past
  :data:`LEDGER_FLUSH_BYTES`. A batch's delivery carries only its answers: its
  in-flight slot is free once they are acknowledged. Its offsets are committed
  only once its ledger changes are in the changelog: the consumer holds the
  commit at each partition's *durable bounds* (:meth:`LedgerKeeper.moved`, told
  before the batch is sent), and keeps the batches above them for a rewind.
- :meth:`LedgerKeeper.record_challenger` writes a challenger's scores; they
  go with the partition's next flush (best effort).
- **Expiry** runs on the partition's clock (the newest prediction or label
  time seen), at most every :data:`EXPIRE_EVERY_S`.
- **On revoke**, the store is closed and the changes not acknowledged are
  dropped: the partition commits only up to its durable bounds, and the next
  owner rebuilds the store (ahead of the changelog) from the changelog.

A replay (a batch sent again after a rewind, a label below the last joined
offset) changes nothing: a replayed batch's records send their current values
again, which a compacted changelog keeps once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from streamer.clients.base import ChangelogReader
from streamer.core.labels.join import iso_time_us
from streamer.core.labels.ledger import (
    ENTRY_PREFIX,
    Joined,
    PredictionLedger,
    decode_prediction,
    labelled,
    time_key,
)
from streamer.core.labels.ledger_log import (
    batches_from,
    expiry_sent,
    is_plain,
    rebuild,
    sent_changes,
)
from streamer.core.labels.live import (
    LEDGER_FINGERPRINT,
    LEDGER_FINGERPRINTS_READ,
    MARKS_KEY,
    LedgerMarks,
    closing_changes,
    decode_marks,
    label_spec,
    ledger_topic_name,
    model_outputs,
    read_label_batch,
    read_label_columns,
    scored_identities,
)
from streamer.core.state.changelog import (
    CoalescedChangelog,
    RestoreCount,
    acknowledged_changes,
    safe_group,
)
from streamer.core.state.restore import Action, local_meta, plan_restore
from streamer.core.state.store import Change, MemoryStore, Store
from streamer.messages import LabelsJoined, LedgerHeld, Rejection, SourceBatch
from streamer.settings import Settings
from streamer.topology.state import changelog_tail, emptied, log_plan, open_rocks_store

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 60.0
"""A partition's ledger expires what the horizon passed at most this often (its own clock)."""


LEDGER_FLUSH_BYTES = 128 * 2**10
"""A partition's gathered changelog records leave past this many bytes, even with a flush in
flight: it bounds them, and the batches the consumer keeps above the durable bound (about
16,000 predictions of a partition, 8 bytes each in their batch records when their offsets
are consecutive, 16 with gaps)."""

_flush_ids = itertools.count()
"""Flush ids unique in the process: a restarted producer's keeper never reuses an old one."""

LEDGER_MEMTABLE_BYTES = 8 * 2**20
"""RocksDB's write buffer of each partition's ledger. Every prediction is a new key, so the
buffers fill at the input's rate: 5,000,000 predictions in 4 partitions peaked at 366 MB of
RSS with RocksDB's 64 MB, 227 MB with 8 MB, for 25% more CPU in RocksDB's flushes and
compactions (docs/performance.md, "Labels").

The ledger's stores write no write-ahead log (RocksDB's writes cost half): after a kill -9 a
store has lost its writes since its last memtable flush, its meta record is behind the
changelog's, and it is rebuilt from the changelog, as a store ahead of it (its writes run
ahead of the flushes' acknowledgements) was already."""


def ledger_topic(settings: Settings) -> str:
    """The ledger changelog topic of these settings."""
    k = settings.kafka
    return ledger_topic_name(settings.labels.ledger_topic, k.group_id, k.input_topic)


def older_format(reader: ChangelogReader, partitions: int) -> tuple[int, str] | None:
    """The first partition of a ledger changelog whose last meta record is a format not read.

    ``(partition, fingerprint)``, or None when every partition is empty or of
    :data:`LEDGER_FINGERPRINTS_READ`. The format of version 1 sent two records per
    prediction; this one cannot read it back without leaving its records in the
    compacted topic for ever (docs/labels.md, "The ledger changelog").
    """
    for partition in range(partitions):
        meta, _end = changelog_tail(reader, partition)
        if meta is not None and meta.fingerprint not in LEDGER_FINGERPRINTS_READ:
            return partition, meta.fingerprint
    return None


class _Deferred:
    """The ledger's store as the ledger sees it: reads go through, its one write per call waits.

    The keeper writes the ledger's changes with its marks and meta record in one
    store write, so that a kill -9 never leaves a store with changes and no meta.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.changes: list[Change] = []
        # The store's own method: a read per recorded prediction, no call in between.
        self.get: Callable[[bytes], bytes | None] = inner.get

    def write(self, changes: Sequence[Change]) -> None:
        self.changes.extend(changes)

    def keys_between(self, low: bytes, high: bytes) -> list[bytes]:
        return self.inner.keys_between(low, high)

    def items_from(self, prefix: bytes):  # type: ignore[no-untyped-def]
        return self.inner.items_from(prefix)

    def close(self) -> None:
        self.inner.close()

    def taken(self) -> list[Change]:
        changes, self.changes = self.changes, []
        return changes


@dataclass
class _Partition:
    ledger: PredictionLedger
    deferred: _Deferred
    marks: LedgerMarks
    held: int
    changelog: CoalescedChangelog
    """Changes written and not acknowledged in the changelog: gathered, or in flushes."""
    gathered_bytes: int = 0
    labels_from: int | None = None
    """The first label offset whose join is gathered (not in a flush yet)."""
    labels_in_flight: dict[int, int] = field(default_factory=dict)
    """Per flush in flight, the first label offset whose join it carries."""
    joined: list[Joined] = field(default_factory=list)
    """Labelled predictions that changed, for the metrics once their flush is acknowledged."""
    told: tuple[int | None, int | None] = (None, None)
    """The durable bounds (input, labels) last told to the consumer."""
    expired_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class LedgerFlush:
    """One partition's gathered ledger changes on their way to the changelog."""

    partition: int
    flush_id: int
    changes: tuple[Change, ...]
    """To send to the ledger changelog (partition = the input partition), meta record last."""
    report: LabelsJoined
    """For the metrics actor, once the broker acknowledged the flush."""


class LedgerKeeper:
    """The prediction ledger of every input partition of one producer (see the module docstring).

    ``reader`` opens a reader of the ledger changelog (None: no changelog, for
    the tests' fake clients: every partition starts from its local store).
    """

    def __init__(self, settings: Settings, reader: Callable[[], ChangelogReader] | None) -> None:
        self.spec = label_spec(settings.labels, [c.name for c in settings.challengers])
        self.topic = settings.kafka.input_topic
        self.labels_topic = settings.labels.topic
        self.changelog_topic = ledger_topic(settings)
        self._dir = settings.state.dir
        self._group = safe_group(settings.kafka.group_id)
        self._open_reader = reader
        self._reader: ChangelogReader | None = None
        self._partitions: dict[int, _Partition] = {}
        self._resets: list[LabelsJoined] = []

    # --- the batches ---------------------------------------------------------

    def record(
        self,
        source: SourceBatch,
        rows: Sequence[int] | np.ndarray,
        scores: Sequence[float] | np.ndarray,
        model: tuple[str, str],
        scored_at: str,
    ) -> None:
        """Record a batch's champion predictions; their changes are gathered for a flush.

        ``rows``: the rows scored, ascending; ``scores``: the champion's score of each.
        """
        part = self._ready(source.partition)
        self._maybe_expire(source.partition, part)
        time_us = iso_time_us(scored_at)
        marks = part.marks
        offsets = source.offsets
        # By source coordinates, a record above the last offset recorded is new to the
        # ledger unless a challenger recorded it first: without challengers, no read, no
        # identity (the batch holds the offsets), and no Python object per record.
        relabelled: list[Joined] = []
        replayed: list[int] = []
        if (
            not self.spec.id_field
            and not self.spec.challengers
            and _whole_run(rows, offsets, marks.input_offset)
        ):
            # The common batch: every row scored, consecutive offsets, all new. Its scores
            # go as they are unless one is not a number: no index or mask (about 10 µs a
            # batch of numpy calls, docs/performance.md).
            score_array = np.asarray(scores, dtype=np.float64)
            finite = np.isfinite(score_array)
            if finite.all():
                recorded = len(score_array)
                part.ledger.record_run(offsets[0], score_array, model, time_us)
            else:
                recorded = int(np.count_nonzero(finite))
                offset_array = _offset_column(offsets)[finite]
                part.ledger.record_columns(offset_array, score_array[finite], model, time_us)
        elif not self.spec.id_field and not self.spec.challengers:
            row_array = np.asarray(rows, dtype=np.int64)
            offset_array = _offset_column(offsets)[row_array]
            score_array = np.asarray(scores, dtype=np.float64)
            fresh = offset_array > marks.input_offset
            replayed = row_array[~fresh].tolist()
            kept = fresh & np.isfinite(score_array)
            recorded = int(np.count_nonzero(kept))
            part.ledger.record_columns(offset_array[kept], score_array[kept], model, time_us)
        else:
            rows = rows.tolist() if isinstance(rows, np.ndarray) else rows
            scores = scores.tolist() if isinstance(scores, np.ndarray) else scores
            if offsets[rows[0] if rows else 0] > marks.input_offset:  # offset order: all fresh
                fresh_rows, fresh_scores, replayed = rows, scores, []
            else:
                ahead = [i for i, row in enumerate(rows) if offsets[row] > marks.input_offset]
                replayed = [row for row in rows if offsets[row] <= marks.input_offset]
                fresh_rows, fresh_scores = [rows[i] for i in ahead], [scores[i] for i in ahead]
            identities, kept_scores, kept_offsets = scored_identities(
                self.spec, source, fresh_rows, fresh_scores
            )
            recorded = len(kept_offsets)
            relabelled, _ = part.ledger.record_batch(
                identities, kept_offsets, kept_scores, model, time_us
            )
        changes = part.deferred.taken()
        # The batch's predictions go to the changelog as one record (ledger_log).
        sent = sent_changes(changes)
        if replayed:  # sent again after a rewind: its current values go again
            sent += self._current(part, source, replayed, model, time_us)
        marks = msgspec.structs.replace(
            marks,
            input_offset=max(marks.input_offset, source.last_offset),
            clock_us=_newest(marks.clock_us, time_us if recorded else None),
        )
        self._step(source.partition, part, changes, marks, relabelled, sent, source.first_offset)

    def _current(
        self,
        part: _Partition,
        source: SourceBatch,
        replayed: Sequence[int],
        model: tuple[str, str],
        time_us: int,
    ) -> list[Change]:
        """The changelog records of a replayed batch's rows as they are: sent again.

        A compacted changelog keeps one of each: sending them again is how a replay,
        whose first delivery may not have come back, changes nothing.
        """
        store = part.deferred.inner
        again = model_outputs(
            self.spec, source, replayed, [0.0] * len(replayed), (*model, False), time_us
        )
        changes: list[Change] = []
        for identity in dict.fromkeys(output.identity for output in again):
            raw = store.get(ENTRY_PREFIX + identity)
            if raw is not None and not is_plain(prediction := decode_prediction(raw)):
                by_time = time_key(prediction.time_us, identity)
                if store.get(by_time) is not None:  # an entry no batch holds
                    changes.append((by_time, b""))
                changes.append((ENTRY_PREFIX + identity, raw))
        offsets = [source.offsets[row] for row in replayed]
        return [*batches_from(store, min(offsets), max(offsets)), *changes]

    def record_challenger(
        self,
        source: SourceBatch,
        rows: Sequence[int],
        scores: Sequence[float],
        model: tuple[str, str],
        scored_at: str,
    ) -> None:
        """Record a challenger's scores; the changes go with the partition's next flush.

        A partition this keeper does not hold (revoked, or not restored yet) is
        skipped: a challenger is best effort.
        """
        part = self._partitions.get(source.partition)
        if part is None:
            return
        outputs = model_outputs(
            self.spec, source, rows, scores, (*model, True), iso_time_us(scored_at)
        )
        relabelled, _ = part.ledger.record(outputs)
        changes = part.deferred.taken()
        self._step(source.partition, part, changes, part.marks, relabelled, sent_changes(changes))

    def join(self, source: SourceBatch) -> tuple[Rejection, ...]:
        """Join a label batch (``source.partition``: the input partition's ledger).

        The joins are gathered for a flush; returns the batch's dead letters
        (malformed labels), by row.
        """
        part = self._ready(source.partition)
        self._maybe_expire(source.partition, part)
        marks = part.marks
        replay = bool(source.offsets) and source.offsets[0] <= marks.label_offset
        # A batch of labels all in the common form is read and joined in columns: no
        # Label, identity or dead letter per label (read_label_columns).
        columns = (
            None
            if replay
            else read_label_columns(source.values, source.partition, self.spec, self.topic)
        )
        rejections: Sequence[Rejection] = ()
        if columns is not None:
            joined, _reasons, _ = part.ledger.join_columns(
                columns.records, columns.values, columns.times, source.last_offset
            )
            times: Sequence[int] = columns.times or ()
        else:
            read = read_label_batch(
                source.offsets, source.keys, source.values, source.partition, self.spec, self.topic
            )
            labels = read.labels
            records = read.record_offsets
            if replay:  # joined already up to label_offset
                fresh = [i for i, offset in enumerate(read.offsets) if offset > marks.label_offset]
                labels = [labels[i] for i in fresh]
                records = None if records is None else [records[i] for i in fresh]
            joined, _reasons, _ = part.ledger.join(labels, records, source.last_offset)
            times = [label.time_us for label in labels if label.time_us is not None]
            rejections = read.rejections
        marks = msgspec.structs.replace(
            marks,
            label_offset=max(marks.label_offset, source.last_offset),
            clock_us=_newest(marks.clock_us, max(times, default=None)),
        )
        changes = part.deferred.taken()
        # A join writes labelled entries, a joins record per batch held (its labelled
        # entries in one record) and the counts: the changelog gets the ledger's `sent`,
        # without the entries the joins records carry (sent_changes would decode every
        # entry to find none plain).
        self._step(source.partition, part, changes, marks, joined, part.ledger.sent)
        if part.labels_from is None:
            part.labels_from = source.first_offset
        return tuple(rejections)

    # --- the flushes -----------------------------------------------------------

    def flushes(self, partition: int | None = None) -> list[LedgerFlush]:
        """The flushes due now (of ``partition`` only, or of every one), each partition's in order.

        A partition's gathered changes are due when it has no flush in flight,
        or past :data:`LEDGER_FLUSH_BYTES`.
        """
        if partition is not None:
            part = self._partitions.get(partition)
            due = [] if part is None else [(partition, part)]
        else:
            due = list(self._partitions.items())
        flushes = []
        for number, part in due:
            changelog = part.changelog
            if not changelog.gathered or (
                part.gathered_bytes < LEDGER_FLUSH_BYTES and changelog.unacknowledged()
            ):
                continue
            flush = changelog.take()
            assert flush is not None
            if part.labels_from is not None:
                part.labels_in_flight[flush.flush_id] = part.labels_from
            report = LabelsJoined(number, tuple(part.joined), part.ledger.counts, part.held)
            part.labels_from, part.joined, part.gathered_bytes = None, [], 0
            flushes.append(LedgerFlush(number, flush.flush_id, flush.changes, report))
        return flushes

    def flushed(self, partition: int, flush_id: int) -> bool:
        """The broker acknowledged a flush; False for one of a partition revoked since."""
        part = self._partitions.get(partition)
        if part is None or not part.changelog.acknowledged(flush_id):
            return False
        part.labels_in_flight.pop(flush_id, None)
        return True

    def moved(self, partition: int | None = None) -> list[LedgerHeld]:
        """The durable bounds that moved since last told (of ``partition``, or of every one).

        Per partition, the first input offset and the first label offset whose
        ledger changes are not all acknowledged (None: every one is).
        """
        numbers = list(self._partitions) if partition is None else [partition]
        moved = []
        for number in numbers:
            part = self._partitions.get(number)
            if part is None:
                continue
            labels = list(part.labels_in_flight.values())
            if part.labels_from is not None:
                labels.append(part.labels_from)
            bounds = (part.changelog.durable_from(), min(labels, default=None))
            if bounds != part.told:
                part.told = bounds
                moved.append(LedgerHeld(number, *bounds))
        return moved

    def take_resets(self) -> list[LabelsJoined]:
        """The windows of the partitions restored since the last call (``reset=True``)."""
        resets, self._resets = self._resets, []
        return resets

    # --- assignment ------------------------------------------------------------

    def prepare(self, partitions: Iterable[int]) -> None:
        """Open and restore the ledgers of assigned partitions now (each once, in order).

        Called when the partitions are assigned: the restore then overlaps the
        consumer's first fetch and the first batches' scoring instead of holding
        up the first delivery. A partition not prepared is restored at its first
        batch, as before.
        """
        for partition in partitions:
            self._ready(partition)

    def revoke(self, partitions: Iterable[int]) -> list[int]:
        """Close the ledgers of partitions that leave; returns those that were open."""
        closed = []
        for partition in partitions:
            part = self._partitions.pop(partition, None)
            if part is not None:
                part.deferred.close()
                closed.append(partition)
        return closed

    def close(self) -> None:
        """Close every store and the changelog reader."""
        self.revoke(list(self._partitions))
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    @property
    def partitions(self) -> list[int]:
        """The input partitions whose ledger is open."""
        return sorted(self._partitions)

    # --- steps -------------------------------------------------------------------

    def _step(
        self,
        partition: int,
        part: _Partition,
        changes: list[Change],
        marks: LedgerMarks,
        joined: Iterable[Joined],
        sent: Sequence[Change],
        input_from: int | None = None,
    ) -> None:
        """Write the ledger's changes, the marks and the meta record at once; gather ``sent``.

        ``sent``: the changelog's form of ``changes`` (ledger_log): no time keys, the
        predictions of a scored batch in one record. ``input_from``: the first input
        offset of the scored batch whose predictions these are.
        """
        marks = msgspec.structs.replace(marks, writes=marks.writes + 1)
        closing = closing_changes(self.topic, partition, marks)
        part.deferred.inner.write([*changes, *closing])
        part.marks = marks
        part.held = part.ledger.held
        part.changelog.add([*sent, *closing], input_from, 0.0)
        part.gathered_bytes += sum(len(key) + len(value or b"") for key, value in sent)
        part.joined.extend(joined)

    def _maybe_expire(self, partition: int, part: _Partition) -> None:
        now = time.monotonic()
        if now - part.expired_at < EXPIRE_EVERY_S or part.marks.clock_us is None:
            return
        part.expired_at = now
        part.ledger.expire(part.marks.clock_us)
        changes = part.deferred.taken()
        if changes:
            sent = expiry_sent(part.deferred.inner, changes)
            self._step(partition, part, changes, part.marks, (), sent)

    # --- restore ---------------------------------------------------------------

    def _ready(self, partition: int) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = self._restore(partition)
        return part

    def _open_store(self, partition: int) -> Store:
        if not self._dir:
            return MemoryStore()
        name = f"ledger-{self.topic}-{partition}"
        return open_rocks_store(
            Path(self._dir) / self._group / name,
            (self.topic, partition),
            "ledger",
            memtable_bytes=LEDGER_MEMTABLE_BYTES,
            wal=False,
        )

    def _restore(self, partition: int) -> _Partition:
        where = {"topic": self.topic, "partition": partition}
        store = self._open_store(partition)
        reader = self._changelog_reader()
        changelog, end = changelog_tail(reader, partition) if reader is not None else (None, 0)
        # A changelog of format 2 (no joins records) restores as it is: planned by its own
        # fingerprint, the store then writes format 3's meta records.
        fingerprint = LEDGER_FINGERPRINT
        if changelog is not None and changelog.fingerprint in LEDGER_FINGERPRINTS_READ:
            fingerprint = changelog.fingerprint
        plan = plan_restore(
            local_meta(store),
            changelog,
            fingerprint=fingerprint,
            topic=self.topic,
            partition=partition,
        )
        if plan.discard_local:
            store = emptied(store, lambda: self._open_store(partition))
        if plan.action is Action.REBUILD:
            assert reader is not None
            count = RestoreCount()
            changes = itertools.chain.from_iterable(
                acknowledged_changes(reader.read(partition, 0, end), count)
            )
            for _done in rebuild(store, changes, (self.topic, partition)):
                pass
            log.info(
                "prediction ledger of %s/%d restored from %s: %d records%s",
                self.topic,
                partition,
                self.changelog_topic,
                count.kept,
                f" ({count.dropped} after the last meta record ignored)" if count.dropped else "",
                extra=where,
            )
        else:
            log_plan(log, "prediction ledger", (self.topic, partition), plan)
        deferred = _Deferred(store)
        ledger = PredictionLedger(
            deferred, self.spec.horizon_us, None if self.spec.id_field else (self.topic, partition)
        )
        joined = labelled(store)
        part = _Partition(
            ledger,
            deferred,
            decode_marks(store.get(MARKS_KEY)),
            ledger.held,
            CoalescedChangelog(lambda: next(_flush_ids)),
        )
        self._resets.append(
            LabelsJoined(partition, tuple(joined), ledger.counts, ledger.held, reset=True)
        )
        return part

    def _changelog_reader(self) -> ChangelogReader | None:
        if self._reader is None and self._open_reader is not None:
            self._reader = self._open_reader()
        return self._reader


def _offset_column(offsets: Sequence[int]) -> np.ndarray:
    """A batch's offsets as int64, without reading each when they have no gap.

    A partition's offsets have gaps only where a topic was compacted or held
    transaction markers: a batch of consecutive ones (first + n - 1 == last) is
    ``arange`` (a conversion from the list read every int: about 40 µs a batch
    of 1,000). Offsets ascend strictly in a batch, so the ends decide.
    """
    if not offsets:
        return np.empty(0, dtype=np.int64)
    first, last = offsets[0], offsets[-1]
    if last - first == len(offsets) - 1:
        return np.arange(first, last + 1, dtype=np.int64)
    return np.asarray(offsets, dtype=np.int64)


def _whole_run(rows: Sequence[int] | np.ndarray, offsets: Sequence[int], recorded: int) -> bool:
    """True for the common batch: every row scored, consecutive offsets, all new.

    ``rows``: ascending and distinct (of the batch ``offsets``); ``recorded``: the last
    offset recorded.
    """
    count = len(offsets)
    return (
        count > 0
        and len(rows) == count
        and offsets[0] > recorded
        and offsets[-1] - offsets[0] == count - 1
    )


def _newest(clock_us: int | None, time_us: int | None) -> int | None:
    if time_us is None:
        return clock_us
    return time_us if clock_us is None else max(clock_us, time_us)

"""The consumer's books: what it fetched, buffered, dispatched and had acknowledged.

Pure code, like the :class:`WatermarkTracker` it holds: the consumer actor makes
the client calls, holds the lock and sends the messages; the ledger says what
they are. It answers four questions:

- **Credits.** How much may the next poll take (:meth:`Ledger.plan`), and may a
  paused consumer poll again (:meth:`Ledger.has_credit`)?
- **Dispatch.** Which batches leave now, numbered how (:meth:`Ledger.take`,
  :meth:`Ledger.drain`)? Each gets a global ``batch_id``, a per-partition
  ``seq`` and the current ``epoch``.
- **Rewind.** What goes again after a stage restarted (:meth:`Ledger.rewind`):
  every batch not yet below the watermark, in partition order, and of a partly
  delivered batch only its unanswered tail.
- **Rebalance.** Where does a partition that one rebalance revokes and gives
  back resume (:meth:`Ledger.revoke`, :meth:`Ledger.assign`)? At its first
  offset that was fetched but not delivered.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamer.core.batching import Budget, MicroBatcher, columns_bytes
from streamer.core.offsets import LEDGER_HOLDER, WatermarkTracker
from streamer.core.records import TP
from streamer.messages import (
    BatchAcked,
    BatchPartlyDelivered,
    ConsumerProgress,
    ConsumerStatus,
    InFlight,
    SourceBatch,
)

if TYPE_CHECKING:
    from streamer.core.records import RecordColumns
    from streamer.settings import BatchSettings

# The longest a poll waits, so that acknowledgements are handled between polls.
MAX_POLL_WAIT_S = 0.5
# The longest a poll waits while the eager rule holds partial batches back: the news
# that frees them (a batch produced or acknowledged) is read only between polls, and a
# poll otherwise returns at the next fetch response or at the batch's max_wait_s.
HELD_POLL_WAIT_S = 0.001

KEPT_BATCHES_PER_SLOT = 4
"""The batches kept for a rewind (in flight, or delivered above a watermark gap or a
prediction ledger's durable bound) stay under this many per ``batch.max_in_flight`` slot:
past it the consumer takes no new batch, so a ledger changelog that stops acknowledging
(its partition's leader lost while the outputs' is not) cannot hold memory without bound."""


@dataclass(slots=True)
class PollPlan:
    """What the next poll may take, decided before the client call.

    ``ready`` holds the full batches that an earlier poll's credits held back and
    this one's release. ``budget`` is what the credits leave for the records the
    poll returns. With ``max_records`` 0 the consumer takes nothing: it pauses,
    and polls only to stay in the group.
    """

    ready: list[tuple[TP, RecordColumns]]
    budget: Budget
    max_records: int
    timeout_s: float


def tail_of(source: SourceBatch, cut: int) -> SourceBatch:
    """The batch from its record ``cut`` on; its state changes all stay (sent again, in order)."""
    return dataclasses.replace(
        source,
        offsets=source.offsets[cut:],
        keys=source.keys[cut:],
        values=source.values[cut:],
        timestamps_ms=source.timestamps_ms[cut:],
        headers=None if source.headers is None else source.headers[cut:],
        state_rejections=tuple(
            dataclasses.replace(r, index=r.index - cut)
            for r in source.state_rejections
            if r.index >= cut
        ),
        state_values=None if source.state_values is None else source.state_values.tail(cut),
    )


class Unacknowledged:
    """The batches of each partition that are not yet below the watermark, in dispatch order.

    They are kept for a rewind, which sends them again; there are at most
    ``batch.max_in_flight`` of them (and a few partial batches), and, with
    delayed labels, the delivered ones above the prediction ledger's durable
    bound (usually a flush's round trip of them; never more than
    :data:`KEPT_BATCHES_PER_SLOT` per slot in all: the consumer then takes none).
    """

    def __init__(self, tracker: WatermarkTracker) -> None:
        self._tracker = tracker
        self._queues: dict[TP, deque[SourceBatch]] = {}

    def add(self, tp: TP, source: SourceBatch) -> None:
        """Keep a dispatched batch (batches of one partition come in offset order)."""
        queue = self._queues.get(tp)
        if queue is None:
            queue = self._queues[tp] = deque()
        queue.append(source)

    def kept(self) -> int:
        """How many batches are kept, over every partition."""
        return sum(map(len, self._queues.values()))

    def first_offset(self, tp: TP) -> int | None:
        """The first offset of the partition's oldest unacknowledged batch, or None."""
        self.prune(tp)
        pending = self._tracker.is_pending
        queue = self._queues.get(tp, ())
        return next((b.first_offset for b in queue if pending(tp, b.batch_id)), None)

    def answered_below(self, tp: TP, batch_id: int, offset: int) -> None:
        """Keep only the unanswered tail of a batch, from ``offset`` on, for the next rewind.

        The answers below ``offset`` were acknowledged, in order, so sending
        them again would only write duplicates. The batch keeps its id, so its
        acknowledgement still moves the watermark to its end.
        """
        queue = self._queues.get(tp)
        if not queue:
            return
        for position, source in enumerate(queue):
            if source.batch_id != batch_id:
                continue
            cut = bisect.bisect_left(source.offsets, offset)
            if 0 < cut < len(source):
                queue[position] = tail_of(source, cut)
            return

    def renew(self, epoch: int, now: float) -> dict[TP, list[SourceBatch]]:
        """Every batch again in ``epoch``, each partition's numbered from ``seq`` 0."""
        renewed: dict[TP, list[SourceBatch]] = {}
        for tp, queue in self._queues.items():
            self.prune(tp)
            # A batch kept only for the ledger was delivered: its state changes are in.
            batches = [
                dataclasses.replace(
                    old,
                    seq=seq,
                    epoch=epoch,
                    dispatched_at=now,
                    changelog=old.changelog if self._tracker.is_pending(tp, old.batch_id) else (),
                )
                for seq, old in enumerate(queue)
            ]
            self._queues[tp] = deque(batches)
            renewed[tp] = batches
        return renewed

    def prune(self, tp: TP) -> None:
        """Drop the partition's batches that are below the watermark now.

        A batch above the prediction ledger's durable bound stays, acknowledged or
        not: its predictions (a label batch's joins) are not in the ledger's
        changelog yet, and a producer that dies loses them with its ledger, which
        a rewind then records again from these batches (docs/labels.md).
        """
        queue = self._queues.get(tp)
        if not queue:
            return
        tracker = self._tracker
        ledger_from = tracker.held(tp, LEDGER_HOLDER)
        while queue and not tracker.is_pending(tp, queue[0].batch_id):
            if ledger_from is not None and queue[0].last_offset >= ledger_from:
                break
            queue.popleft()

    def forget(self, tp: TP) -> None:
        """Drop a revoked partition's batches: their work is abandoned."""
        self._queues.pop(tp, None)


class Ledger:
    """The state of every assigned partition between the poll and the commit.

    A batch holds credits (one batch, its bytes of keys and values) from its
    dispatch until it is below the watermark, not merely acknowledged; the
    unacknowledged ones are kept, so that a rewind can send them again.
    """

    def __init__(
        self,
        batch: BatchSettings,
        max_poll_records: int,
        epoch: int = 0,
        prepare: Callable[[SourceBatch], SourceBatch] | None = None,
    ) -> None:
        """``prepare`` (the state's step) turns each batch cut, before it is kept for rewinds."""
        self._prepare = prepare
        self._max_records = batch.max_records
        self._max_wait_s = batch.max_wait_s
        self._max_in_flight = batch.max_in_flight
        self._max_kept = KEPT_BATCHES_PER_SLOT * batch.max_in_flight
        self._max_in_flight_bytes = batch.max_in_flight_bytes
        self._max_poll_records = max_poll_records
        # Cut at an equal share of the byte cap, so that max_in_flight batches fit in it.
        self.batcher = MicroBatcher(
            batch.max_records,
            batch.max_wait_s,
            max(1, batch.max_in_flight_bytes // batch.max_in_flight),
        )
        # Partial batches leave at once while fewer batches than this wait in the
        # stages (dispatched, not yet handed to the producer's client), and the
        # credits in use stay under half of max_in_flight (see take()).
        self._eager_below = max(1, batch.max_in_flight // 4) if batch.eager_when_idle else 0
        self._eager_in_flight_below = max(1, batch.max_in_flight // 2)
        # Dispatched batches not yet produced: batch_id -> partition.
        self._unproduced: dict[int, TP] = {}
        self.tracker = WatermarkTracker()
        self.epoch = epoch
        self.assigned: list[TP] = []
        self.records_dispatched = 0
        self._batch_ids = itertools.count()
        self._seq: dict[TP, int] = {}
        self._unacked = Unacknowledged(self.tracker)
        # Where a revoked partition must resume if the same rebalance gives it back.
        self._resume_at: dict[TP, int] = {}
        self._fetched_until: dict[TP, int] = {}
        # Bytes per record of the last dispatch: bounds the next poll by the free bytes.
        self._record_bytes = 0.0

    # --- credits and dispatch ----------------------------------------------

    def plan(self, now: float, *, fetching: bool) -> PollPlan:
        """Release the held-back full batches the credits now allow; size the next poll."""
        tracker = self.tracker
        budget = Budget(
            min(
                self._max_in_flight - tracker.batches_in_flight,
                self._max_kept - self._unacked.kept(),
            ),
            self._max_in_flight_bytes - tracker.bytes_in_flight,
        )
        if not fetching:
            return PollPlan([], budget, 0, 0.0)
        # Full batches that an earlier poll's credits held back go first.
        ready = self.batcher.release(now, budget)
        if not budget.allows() or self.batcher.holds_full_batches:
            return PollPlan(ready, budget, 0, 0.0)
        deadline = self.batcher.time_to_next_deadline(now)
        timeout = self._max_wait_s if deadline is None else deadline
        if ready or (self.batcher.buffered and self._sends_partial(0, budget)):
            # Batches that may leave now do not wait for the poll: the news that freed
            # them came while the last poll waited (docs/performance.md). The consumer
            # sends them before its poll, then plans again (_dispatch_before_poll).
            timeout = 0.0
        elif self._eager_below and self.batcher.buffered:
            # Held back by the eager rule until a batch leaves the stages or is
            # acknowledged: look at the news again soon (docs/performance.md).
            timeout = min(timeout, HELD_POLL_WAIT_S)
        max_records = min(self._max_poll_records, budget.batches * self._max_records)
        if self._record_bytes:
            # Large records: take about what the free bytes hold (at least one).
            max_records = max(1, min(max_records, int(budget.nbytes / self._record_bytes)))
        return PollPlan(ready, budget, max_records, min(timeout, MAX_POLL_WAIT_S))

    def take(
        self, polled: Mapping[TP, RecordColumns], now: float, plan: PollPlan
    ) -> list[SourceBatch]:
        """Buffer what the poll of ``plan`` returned; dispatch every batch that is ready."""
        # A full batch held back before the poll, of a partition the poll revoked: abandoned
        # (its records come again to the partition's next owner), never dispatched.
        ready = [(tp, columns) for tp, columns in plan.ready if tp in self.assigned]
        batcher = self.batcher
        for tp, records in polled.items():
            if tp not in self.assigned or not len(records):
                continue  # revoked inside the poll: abandoned
            self._fetched_until[tp] = records.offsets[-1] + 1
            ready.extend(batcher.add(tp, records, now, plan.budget))
        ready.extend(batcher.expired(now))
        if self._sends_partial(len(ready), plan.budget):
            # Smart batching: waiting for max_wait_s only pays while the stages
            # have work queued (fewer, larger batches cost less CPU); a batch
            # whose answers wait for the broker's acknowledgement costs nothing
            # here, so it does not count (docs/performance.md: it held records
            # for max_wait_s at 10,000 records/s). Under load the batches grow
            # by themselves.
            ready.extend(batcher.drain())
        return self._dispatch(ready, now)

    def _sends_partial(self, ready: int, budget: Budget) -> bool:
        """True when partial batches leave now, beside ``ready`` others (the eager rule)."""
        return bool(
            self._eager_below
            and len(self._unproduced) + ready < self._eager_below
            and self.tracker.batches_in_flight + ready < self._eager_in_flight_below
            and budget.allows()
            and not self.batcher.holds_full_batches
        )

    def produced(self, batch_id: int) -> None:
        """The producer handed the batch's answers to its client: no stage holds it now."""
        self._unproduced.pop(batch_id, None)

    @property
    def batches_in_stages(self) -> int:
        """Batches dispatched and not yet produced (in the actors' inboxes or at work)."""
        return len(self._unproduced)

    def drain(self, now: float) -> list[SourceBatch]:
        """Dispatch every buffered record, whatever the credits (the shutdown's first step)."""
        return self._dispatch(self.batcher.drain(), now)

    def has_credit(self) -> bool:
        """True while the work in flight is under both caps: a paused consumer may poll."""
        return (
            self.tracker.batches_in_flight < self._max_in_flight
            and self.tracker.bytes_in_flight < self._max_in_flight_bytes
            and self._unacked.kept() < self._max_kept
        )

    def _dispatch(self, ready: list[tuple[TP, RecordColumns]], now: float) -> list[SourceBatch]:
        batches = []
        nbytes = records = 0
        for tp, columns in ready:
            source = SourceBatch(
                batch_id=next(self._batch_ids),
                topic=tp[0],
                partition=tp[1],
                seq=self._next_seq(tp),
                offsets=columns.offsets,
                keys=columns.keys,
                values=columns.values,
                timestamps_ms=columns.timestamps,
                dispatched_at=now,
                epoch=self.epoch,
                headers=columns.headers,
            )
            if self._prepare is not None:
                source = self._prepare(source)
            size = columns_bytes(columns)
            self.tracker.track(
                tp, source.batch_id, source.first_offset, source.last_offset, len(columns), size
            )
            self._unacked.add(tp, source)
            self._unproduced[source.batch_id] = tp
            batches.append(source)
            nbytes += size
            records += len(columns)
        if records:
            self._record_bytes = nbytes / records
            self.records_dispatched += records
        return batches

    def _next_seq(self, tp: TP) -> int:
        seq = self._seq.get(tp, 0)
        self._seq[tp] = seq + 1
        return seq

    # --- acknowledgements and rewinds ----------------------------------------

    def settle(self, delivery: BatchAcked | BatchPartlyDelivered) -> bool:
        """Book what the producer says of a batch; True when its partition's watermark stops.

        - ``BatchAcked`` without an error: every answer is in. An ack from an
          older epoch counts too: that copy was fully delivered.
        - ``BatchAcked`` with an error: the watermark stops before the batch for
          good, unless the copy is from an older epoch (the rewind already sent
          the batch again) or its partition was revoked since.
        - ``BatchPartlyDelivered``: the answers below ``answered_below`` are in,
          in order; a rewind sends only the rest.
        """
        tp = (delivery.topic, delivery.partition)
        self._unproduced.pop(delivery.batch_id, None)  # settled, so produced
        if isinstance(delivery, BatchPartlyDelivered):
            self._unacked.answered_below(tp, delivery.batch_id, delivery.answered_below)
        elif delivery.error is None:
            self.tracker.ack(tp, delivery.batch_id)
            self._unacked.prune(tp)
        elif delivery.epoch >= self.epoch and self.tracker.in_flight_for(tp):
            self.tracker.fail(tp, delivery.batch_id, delivery.error)
            return True
        return False

    def hold_ledger(self, tp: TP, durable_from: int | None) -> None:
        """The prediction ledger's durable bound on ``tp`` moved (None: nothing pending).

        The commit stops at it, and the batches above it are kept for a rewind.
        """
        self.tracker.hold(tp, durable_from, LEDGER_HOLDER)
        self._unacked.prune(tp)

    def rewind(self, epoch: int, now: float) -> list[SourceBatch]:
        """Every unacknowledged batch again, in partition order, renumbered in ``epoch``."""
        self.epoch = epoch
        renewed = self._unacked.renew(epoch, now)
        self._seq = {tp: len(batches) for tp, batches in renewed.items()}
        self._unproduced = {b.batch_id: tp for tp, batches in renewed.items() for b in batches}
        return [source for batches in renewed.values() for source in batches]

    # --- rebalances ----------------------------------------------------------

    def assign(self, tps: list[TP]) -> dict[TP, int]:
        """Partitions join; returns the seeks for those that this rebalance gave back.

        kafka-python keeps the fetch position of a partition that is revoked and
        assigned again in one rebalance. Records fetched before the revoke were
        discarded or abandoned, so the position must go back to the first of
        them; a partition that is new to us starts from the group's commit.
        """
        self.assigned = sorted(set(self.assigned) | set(tps))
        seeks = {tp: self._resume_at[tp] for tp in tps if tp in self._resume_at}
        self._resume_at.clear()
        return seeks

    def revoke(self, tps: list[TP]) -> dict[TP, int]:
        """Partitions leave; returns their acknowledged watermarks, to commit on the way out.

        Their in-flight work is abandoned: its late acks are ignored, so
        nothing past the last acknowledged offset is ever committed. Their
        buffered records are dropped.
        """
        revoked = set(tps)
        offsets = {tp: o for tp, o in self.tracker.committable().items() if tp in revoked}
        for tp in revoked:
            # Given back, the partition resumes at its first record not delivered, or not
            # durable: its store is rebuilt from the changelogs without the changes above
            # their bounds, which its records must make again.
            candidates = (self.first_undelivered(tp), *self.tracker.bounds(tp))
            resume = min((offset for offset in candidates if offset is not None), default=None)
            if resume is not None:
                self._resume_at[tp] = resume
        self.tracker.forget(list(revoked))
        self.batcher.discard(list(revoked))
        for tp in revoked:
            self._fetched_until.pop(tp, None)
            self._unacked.forget(tp)
        self._unproduced = {b: tp for b, tp in self._unproduced.items() if tp not in revoked}
        self.assigned = [tp for tp in self.assigned if tp not in revoked]
        return offsets

    def first_undelivered(self, tp: TP) -> int | None:
        """The lowest offset of this partition that was fetched but not delivered."""
        candidates = (
            self._unacked.first_offset(tp),
            self.batcher.first_offset(tp),
            self._fetched_until.get(tp),
        )
        return min((offset for offset in candidates if offset is not None), default=None)

    # --- reports --------------------------------------------------------------

    def in_flight(self) -> InFlight:
        """The work dispatched and not yet below the watermark (what the drain waits for)."""
        tracker = self.tracker
        return InFlight(
            tracker.batches_in_flight, tracker.records_in_flight, tracker.bytes_in_flight
        )

    def status(self, *, fetching: bool, paused: bool) -> ConsumerStatus:
        """The consumer's status, with the two flags that the actor keeps."""
        tracker = self.tracker
        return ConsumerStatus(
            fetching=fetching,
            paused=paused,
            assigned=list(self.assigned),
            batches_in_flight=tracker.batches_in_flight,
            records_in_flight=tracker.records_in_flight,
            bytes_in_flight=tracker.bytes_in_flight,
            records_dispatched=self.records_dispatched,
            records_buffered=self.batcher.buffered,
            epoch=self.epoch,
            watermarks=tracker.watermarks(),
            committed=tracker.committed(),
        )

    def progress(self, ends: Mapping[TP, int | None], *, paused: bool) -> ConsumerProgress:
        """In-flight work, commits and the lag behind each partition's end offset in ``ends``.

        The lag counts from the watermark, or before a partition's first
        acknowledgement from its fetch position; an unknown end is left out.
        """
        tracker = self.tracker
        watermarks = tracker.watermarks()
        lag: dict[TP, int] = {}
        for tp, end in ends.items():
            if end is not None:
                lag[tp] = max(0, end - watermarks.get(tp, self._fetched_until.get(tp, end)))
        return ConsumerProgress(
            in_flight_batches=tracker.batches_in_flight,
            in_flight_records=tracker.records_in_flight,
            committed=tracker.committed(),
            lag=lag,
            paused_partitions=len(self.assigned) if paused else 0,
            in_flight_bytes=tracker.bytes_in_flight,
        )

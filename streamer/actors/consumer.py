"""ConsumerActor: poll, micro-batch, cap in-flight work, and commit the watermark."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.client import TP, GroupConsumer, RecordColumns
from streamer.core.batching import Budget, MicroBatcher, columns_bytes
from streamer.core.offsets import WatermarkTracker
from streamer.errors import DeliveryError
from streamer.messages import (
    Attach,
    BatchAcked,
    BatchPartlyDelivered,
    CommitNow,
    ConsumerProgress,
    ConsumerStatus,
    GetStatus,
    RecordsConsumed,
    Rewind,
    Rewound,
    ScoreBatch,
    SourceBatch,
    StopFetching,
)
from streamer.settings import BatchSettings, KafkaSettings

log = logging.getLogger(__name__)

# How often the ticker wakes an idle or paused consumer: it keeps the group
# membership alive (poll) and flushes partial batches that reached max_wait_s.
TICK_S = 0.1
PROGRESS_EVERY_S = 0.5
# A paused partition is not fetched, so the client's end offsets (and the lag gauge)
# would freeze exactly while the pipeline is the bottleneck: ask the broker this often.
END_OFFSETS_EVERY_S = 5.0
END_OFFSETS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class _Poll:
    """Fetch the next records (a message to itself keeps the inbox responsive)."""


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _CommitResult:
    offsets: dict[TP, int]
    error: str | None


class ConsumerActor(PipelineActor):
    """The source of the pipeline.

    It polls in a loop driven by messages to itself, so that acknowledgements
    are handled between polls. Above ``batch.max_in_flight`` it pauses every
    assigned partition and keeps polling (with no records returned) so that it
    stays in the group; acknowledgements bring it back under the cap.
    """

    kind = "consumer"

    def __init__(
        self,
        settings: KafkaSettings,
        batch: BatchSettings,
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
        client_factory: Callable[[KafkaSettings, int], GroupConsumer] = GroupConsumer,
        on_ready: Callable[[], None] | None = None,
        epoch: int = 0,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._settings = settings
        self._batch = batch
        self._client_factory = client_factory
        self._client: GroupConsumer | None = None
        self._on_ready = on_ready
        self._preprocessors: itertools.cycle[pykka.ActorRef] | None = None
        # Cut at an equal share of the byte cap, so that max_in_flight batches fit in it.
        self._batcher = MicroBatcher(
            batch.max_records,
            batch.max_wait_s,
            max(1, batch.max_in_flight_bytes // batch.max_in_flight),
        )
        # Bytes per record of the last poll: bounds the next poll by the free bytes.
        self._record_bytes = 0.0
        # Partial batches leave at once while fewer batches than this are in flight.
        self._eager_below = max(1, batch.max_in_flight // 4) if batch.eager_when_idle else 0
        self._tracker = WatermarkTracker()
        self._batch_ids = itertools.count()
        self._seq: dict[TP, int] = {}
        self._epoch = epoch
        # Unacknowledged batches by partition, kept for a Rewind (bounded by max_in_flight).
        self._unacked: dict[TP, deque[SourceBatch]] = {}
        # Where a revoked partition must resume if the same rebalance gives it back.
        self._resume_at: dict[TP, int] = {}
        self._fetched_until: dict[TP, int] = {}
        self._assigned: list[TP] = []
        self._paused = False
        self._fetching = False
        self._poll_scheduled = False
        self._last_commit = time.monotonic()
        self._last_progress = 0.0
        self._end_offsets_at = 0.0
        self._records_dispatched = 0
        self._ticker_stop = threading.Event()
        self._ticker: threading.Thread | None = None
        # kafka-python 3.x runs rebalance callbacks on its I/O thread (while this
        # actor waits inside poll), so the state they touch is guarded. The lock
        # is never held across a client call that waits on the I/O thread.
        self._lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        """Open the client and subscribe; fetching waits for :class:`Attach`."""
        self._client = self._client_factory(self._settings, self._settings.max_poll_records)
        self._client.subscribe(self._settings.input_topic, self._on_assigned, self._on_revoked)
        ref = self.actor_ref

        def tick() -> None:
            while not self._ticker_stop.wait(TICK_S):
                try:
                    ref.tell(_Tick())
                except pykka.ActorDeadError:
                    return

        self._ticker = threading.Thread(target=tick, name="consumer-ticker", daemon=True)
        self._ticker.start()

    def release(self) -> None:
        """Stop the ticker and leave the group. Never commits: the topology decides that."""
        self._ticker_stop.set()
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    # --- messages ----------------------------------------------------------

    def receive(self, message: object) -> Any:
        """Handle polls, acknowledgements and control messages."""
        match message:
            case _Poll():
                self._poll_scheduled = False
                self._poll_once()
            case _Tick():
                if not self._poll_scheduled:
                    self._poll_once()
            case BatchAcked() | BatchPartlyDelivered() as delivery:
                with self._lock:
                    self._on_delivery(delivery)
            case _CommitResult(offsets=offsets, error=error):
                if error is None:
                    with self._lock:
                        self._tracker.mark_committed(offsets)
                else:
                    log.warning("offset commit failed, will retry with the next commit: %s", error)
            case Attach(preprocessors=preprocessors):
                self._preprocessors = itertools.cycle(preprocessors)
                self._fetching = True
                self._schedule_poll()
            case Rewind(epoch=epoch):
                with self._lock:
                    return self._rewind(epoch)
            case StopFetching():
                with self._lock:
                    return self._stop_fetching()
            case CommitNow():
                return self._commit_sync()
            case GetStatus():
                with self._lock:
                    return self._status()
        return None

    # --- the poll loop -------------------------------------------------------

    def _schedule_poll(self) -> None:
        if not self._poll_scheduled:
            self._poll_scheduled = True
            self.actor_ref.tell(_Poll())

    def _poll_once(self) -> None:
        client = self._client
        assert client is not None
        now = time.monotonic()
        with self._lock:
            budget = Budget(
                self._batch.max_in_flight - self._tracker.batches_in_flight,
                self._batch.max_in_flight_bytes - self._tracker.bytes_in_flight,
            )
            # Full batches that an earlier poll's credits held back go first.
            ready = self._batcher.release(now, budget) if self._fetching else []
            can_take = self._fetching and budget.allows() and not self._batcher.holds_full_batches
            self._set_paused(not can_take)
            deadline = self._batcher.time_to_next_deadline(now)
        if can_take:
            timeout = self._batch.max_wait_s if deadline is None else deadline
            max_records = min(
                self._settings.max_poll_records, budget.batches * self._batch.max_records
            )
            if self._record_bytes:
                # Large records: take about what the free bytes hold (at least one).
                max_records = max(1, min(max_records, int(budget.nbytes / self._record_bytes)))
            polled = client.poll(min(timeout, 0.5), max_records)
        else:
            polled = client.poll(0, 1)  # paused: returns nothing, keeps the membership
        now = time.monotonic()
        with self._lock:
            for tp, records in polled.items():
                if tp not in self._assigned or not len(records):
                    continue
                self._fetched_until[tp] = records.offsets[-1] + 1
                ready.extend(self._batcher.add(tp, records, now, budget))
            ready.extend(self._batcher.expired(now))
            if (
                self._eager_below
                and self._tracker.batches_in_flight + len(ready) < self._eager_below
                and budget.allows()
                and not self._batcher.holds_full_batches
            ):
                # Smart batching: a pipeline with little in flight would only wait
                # for max_wait_s; under load the batches grow by themselves.
                ready.extend(self._batcher.drain())
            self._dispatch_all(ready)
            offsets = self._due_commit(now)
            self._maybe_report(now)
        if offsets:
            self._commit_async(offsets)
        if self._paused and now - self._end_offsets_at >= END_OFFSETS_EVERY_S:
            self._refresh_end_offsets(now)
        if self._fetching and not self._paused:
            self._schedule_poll()

    def _refresh_end_offsets(self, now: float) -> None:
        # Outside the lock: with kafka-python the request waits on the I/O thread,
        # which may be running a rebalance callback that takes the lock.
        self._end_offsets_at = now
        assert self._client is not None
        with self._lock:
            assigned = list(self._assigned)
        try:
            self._client.refresh_end_offsets(assigned, END_OFFSETS_TIMEOUT_S)
        except Exception as exc:  # a stale lag figure is not worth a crash
            log.debug("could not refresh the end offsets for the lag gauge: %s", exc)

    def _dispatch_all(self, ready: list[tuple[TP, RecordColumns]]) -> None:
        nbytes = records = 0
        for tp, batch in ready:
            nbytes += self._dispatch(tp, batch)
            records += len(batch)
        if records:
            self._record_bytes = nbytes / records
        if ready:
            # One metrics message per poll, not per batch: each message costs the
            # metrics actor a wakeup, which small batches would pay many times.
            self._emit(RecordsConsumed(sum(len(records) for _, records in ready)))

    def _dispatch(self, tp: TP, records: RecordColumns) -> int:
        """Send one batch on; returns its bytes."""
        assert self._preprocessors is not None
        seq = self._next_seq(tp)
        source = SourceBatch(
            batch_id=next(self._batch_ids),
            topic=tp[0],
            partition=tp[1],
            seq=seq,
            offsets=records.offsets,
            keys=records.keys,
            values=records.values,
            timestamps_ms=records.timestamps,
            dispatched_at=time.monotonic(),
            epoch=self._epoch,
        )
        nbytes = columns_bytes(records)
        self._tracker.track(
            tp, source.batch_id, source.first_offset, source.last_offset, len(records), nbytes
        )
        self._unacked.setdefault(tp, deque()).append(source)
        self._records_dispatched += len(records)
        next(self._preprocessors).tell(ScoreBatch(source))
        return nbytes

    def _next_seq(self, tp: TP) -> int:
        seq = self._seq.get(tp, 0)
        self._seq[tp] = seq + 1
        return seq

    def _rewind(self, epoch: int) -> Rewound:
        """Send every unacknowledged batch again, in partition order, in a new epoch."""
        self._epoch = epoch
        self._seq.clear()
        resent = 0
        for tp, queue in self._unacked.items():
            self._prune(tp)
            renewed = deque(
                dataclasses.replace(
                    old, seq=self._next_seq(tp), epoch=epoch, dispatched_at=time.monotonic()
                )
                for old in queue
            )
            self._unacked[tp] = renewed
            if self._preprocessors is not None:
                for source in renewed:
                    next(self._preprocessors).tell(ScoreBatch(source))
            resent += len(renewed)
        log.warning("rewind to epoch %d: %d unacknowledged batches sent again", epoch, resent)
        return Rewound(epoch, resent)

    def _on_delivery(self, delivery: BatchAcked | BatchPartlyDelivered) -> None:
        if isinstance(delivery, BatchAcked):
            self._on_ack(delivery)
        else:
            self._answered_below(delivery)

    def _answered_below(self, partly: BatchPartlyDelivered) -> None:
        """Keep only the unanswered tail of a batch for the next Rewind.

        The answers below ``answered_below`` were acknowledged, in order, so
        sending them again would only write duplicates. The batch keeps its id,
        so its acknowledgement still moves the watermark to its end.
        """
        queue = self._unacked.get((partly.topic, partly.partition))
        if not queue:
            return
        for position, source in enumerate(queue):
            if source.batch_id != partly.batch_id:
                continue
            cut = bisect.bisect_left(source.offsets, partly.answered_below)
            if 0 < cut < len(source):
                queue[position] = dataclasses.replace(
                    source,
                    offsets=source.offsets[cut:],
                    keys=source.keys[cut:],
                    values=source.values[cut:],
                    timestamps_ms=source.timestamps_ms[cut:],
                )
            return

    def _first_undelivered(self, tp: TP) -> int | None:
        """The lowest offset of this partition that was fetched but not delivered."""
        self._prune(tp)
        candidates = []
        queue = self._unacked.get(tp)
        if queue:
            candidates.append(queue[0].first_offset)
        buffered = self._batcher.first_offset(tp)
        if buffered is not None:
            candidates.append(buffered)
        if tp in self._fetched_until:
            candidates.append(self._fetched_until[tp])
        return min(candidates) if candidates else None

    def _prune(self, tp: TP) -> None:
        queue = self._unacked.get(tp)
        while queue and not self._tracker.is_pending(tp, queue[0].batch_id):
            queue.popleft()

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused or self._client is None:
            return
        self._paused = paused
        if paused:
            self._client.pause(self._assigned)
        else:
            self._client.resume(self._assigned)

    def _on_ack(self, ack: BatchAcked) -> None:
        tp = (ack.topic, ack.partition)
        if ack.error is None:
            # An ack from an older epoch still counts: that copy was fully delivered.
            self._tracker.ack(tp, ack.batch_id)
            self._prune(tp)
        elif ack.epoch < self._epoch:
            pass  # the rewind already sent this batch again
        elif self._tracker.in_flight_for(tp):
            # The watermark of this partition now stops before the batch for good.
            # The consumer stays alive so that the shutdown can still commit the
            # acknowledged work of every partition; the topology stops the pipeline.
            self._tracker.fail(tp, ack.batch_id, ack.error)
            self._fetching = False
            msg = (
                f"outputs of batch {ack.batch_id} from {ack.topic}/{ack.partition} were not "
                f"delivered ({ack.error}); offsets stay uncommitted from that batch on"
            )
            log.error(
                "%s",
                msg,
                extra={"actor": self.kind, "topic": ack.topic, "partition": ack.partition},
            )
            if self._failure_handler is not None:
                self._failure_handler("producer", DeliveryError(msg))
        if (
            self._fetching
            and self._paused
            and self._tracker.batches_in_flight < self._batch.max_in_flight
            and self._tracker.bytes_in_flight < self._batch.max_in_flight_bytes
        ):
            self._schedule_poll()

    # --- commits -------------------------------------------------------------

    def _due_commit(self, now: float) -> dict[TP, int]:
        if now - self._last_commit < self._settings.commit_interval_s:
            return {}
        self._last_commit = now
        return self._tracker.committable()

    def _commit_async(self, offsets: dict[TP, int]) -> None:
        if self._client is None:
            return
        ref = self.actor_ref

        def on_done(committed: dict[TP, int], error: Exception | None) -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_CommitResult(committed, None if error is None else str(error)))

        self._client.commit_async(offsets, on_done)

    def _commit_sync(self) -> dict[TP, int]:
        """Commit every watermark now; returns what the broker accepted."""
        with self._lock:
            offsets = self._tracker.watermarks()
        if offsets and self._client is not None:
            self._client.commit(offsets)
        with self._lock:
            self._tracker.mark_committed(offsets)
            self._maybe_report(time.monotonic(), force=True)
        return offsets

    # --- rebalance (inside client.poll: kafka-python's I/O thread, confluent's caller) ---

    def _on_assigned(self, tps: list[TP]) -> None:
        with self._lock:
            self._assigned_locked(tps)

    def _assigned_locked(self, tps: list[TP]) -> None:
        if tps:
            named = [f"{t}/{p}" for t, p in sorted(tps)]
            log.info(
                "partitions assigned: %s",
                ", ".join(named),
                extra={"actor": self.kind, "partitions": named},
            )
        self._assigned = sorted(set(self._assigned) | set(tps))
        # kafka-python keeps the fetch position of a partition that is revoked and
        # assigned again in one rebalance. Records fetched before the revoke were
        # discarded or abandoned, so the position must go back to the first of
        # them; a partition that is new to us starts from the group's commit.
        if self._client is not None:
            for tp in tps:
                if tp in self._resume_at:
                    self._client.seek(tp, self._resume_at[tp])
        self._resume_at.clear()
        if self._client is not None:
            # A partition new to this member comes unpaused, but one given back in
            # the same rebalance keeps its paused flag: set every one explicitly.
            if self._paused:
                self._client.pause(tps)
            else:
                self._client.resume(tps)
        if self._on_ready is not None:
            self._on_ready()

    def _on_revoked(self, tps: list[TP]) -> None:
        with self._lock:
            self._revoked_locked(tps)

    def _revoked_locked(self, tps: list[TP]) -> None:
        if not tps:
            return
        named = [f"{t}/{p}" for t, p in sorted(tps)]
        log.info(
            "partitions revoked: %s",
            ", ".join(named),
            extra={"actor": self.kind, "partitions": named},
        )
        revoked = set(tps)
        offsets = {tp: o for tp, o in self._tracker.committable().items() if tp in revoked}
        if offsets and self._client is not None:
            # A blocking commit inside the rebalance callback is a kafka-python
            # 3.x bug ("Cannot block on net.run() from the IO thread"), so async.
            self._client.commit_async(offsets, lambda _o, _e: None)
        for tp in revoked:
            resume = self._first_undelivered(tp)
            if resume is not None:
                self._resume_at[tp] = resume
        # In-flight work of these partitions is abandoned: its late acks are
        # ignored, so nothing past the last acknowledged offset is ever committed.
        self._tracker.forget(list(revoked))
        self._batcher.discard(list(revoked))
        for tp in revoked:
            self._fetched_until.pop(tp, None)
            self._unacked.pop(tp, None)
        self._assigned = [tp for tp in self._assigned if tp not in revoked]

    # --- shutdown and status -------------------------------------------------

    def _stop_fetching(self) -> ConsumerStatus:
        """Dispatch what is buffered, then take no new records. Acks still count."""
        if self._fetching:
            self._dispatch_all(self._batcher.drain())
        self._fetching = False
        self._set_paused(True)
        return self._status()

    def _status(self) -> ConsumerStatus:
        return ConsumerStatus(
            fetching=self._fetching,
            paused=self._paused,
            assigned=list(self._assigned),
            batches_in_flight=self._tracker.batches_in_flight,
            records_in_flight=self._tracker.records_in_flight,
            bytes_in_flight=self._tracker.bytes_in_flight,
            records_dispatched=self._records_dispatched,
            records_buffered=self._batcher.buffered,
            epoch=self._epoch,
            watermarks=self._tracker.watermarks(),
            committed=self._tracker.committed(),
        )

    def _maybe_report(self, now: float, *, force: bool = False) -> None:
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        lag: dict[TP, int] = {}
        if self._client is not None:
            for tp in self._assigned:
                high = self._client.highwater(tp)
                if high is not None:
                    position = self._tracker.watermarks().get(tp, self._fetched_until.get(tp, high))
                    lag[tp] = max(0, high - position)
        self._emit(
            ConsumerProgress(
                in_flight_batches=self._tracker.batches_in_flight,
                in_flight_records=self._tracker.records_in_flight,
                committed=self._tracker.committed(),
                lag=lag,
                paused_partitions=len(self._assigned) if self._paused else 0,
                in_flight_bytes=self._tracker.bytes_in_flight,
            )
        )

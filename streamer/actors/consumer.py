"""ConsumerActor: poll, micro-batch, cap in-flight work, and commit the watermark."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.actors.routing import Route, Teller, ask_without_waiting, timed_out
from streamer.clients.base import ConsumerClient, ConsumerFactory
from streamer.core.ledger import Ledger, PollPlan
from streamer.core.offsets import LEDGER_HOLDER
from streamer.core.records import TP
from streamer.errors import DeliveryError
from streamer.messages import (
    Attach,
    BatchAcked,
    BatchPartlyDelivered,
    BatchProduced,
    CommitNow,
    ConsumerStatus,
    GetInFlight,
    GetStatus,
    InFlight,
    LabelBatch,
    LedgerHeld,
    PartitionsAssigned,
    PartitionsRevoked,
    RecordsConsumed,
    Rewind,
    Rewound,
    ScoreBatch,
    SourceBatch,
    StateFlush,
    StateFlushed,
    StopFetching,
)
from streamer.settings import BatchSettings, KafkaSettings

if TYPE_CHECKING:
    from streamer.core.state.changelog import Flush
    from streamer.topology.state import StateKeeper

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


class _Ticker:
    """Tells the consumer ``_Tick`` every ``TICK_S`` from its own thread (pykka has no timers)."""

    def __init__(self, ref: pykka.ActorRef) -> None:
        self._ref = ref
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="consumer-ticker", daemon=True).start()

    def _run(self) -> None:
        while not self._stopped.wait(TICK_S):
            try:
                self._ref.tell(_Tick())
            except pykka.ActorDeadError:
                return

    def stop(self) -> None:
        """End the thread at its next wake-up."""
        self._stopped.set()


def _partition_names(tps: list[TP]) -> list[str]:
    return [f"{t}/{p}" for t, p in sorted(tps)]


def _log_partitions(event: str, tps: list[TP]) -> None:
    named = _partition_names(tps)
    log.info(
        "partitions %s: %s",
        event,
        ", ".join(named),
        extra={"actor": ConsumerActor.kind, "partitions": named},
    )


class ConsumerActor(PipelineActor):
    """The source of the pipeline: client calls and messages around a :class:`Ledger`.

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
        client_factory: ConsumerFactory,
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
        on_ready: Callable[[], None] | None = None,
        epoch: int = 0,
        state: StateKeeper | None = None,
        producer: Route | pykka.ActorRef[Any] | None = None,
        labels_topic: str = "",
    ) -> None:
        super().__init__(metrics, on_failure)
        # Declared [[state.features]]: applied to each batch as the Ledger cuts it, in
        # offset order per partition, before the Ledger keeps it for rewinds.
        self._state = state
        self._producer = producer
        # Delayed labels (docs/labels.md): the labels topic is read in the same group; its
        # batches go straight to the producer, which joins them in its prediction ledger.
        self._labels_topic = labels_topic
        # Partitions revoked since the last poll, whose stores the actor's thread closes:
        # the keeper is only ever touched on this actor's thread.
        self._revoked_state: list[TP] = []
        self._settings = settings
        self._client_factory = client_factory
        self._client: ConsumerClient | None = None
        self._on_ready = on_ready
        self._preprocessors: itertools.cycle[Teller] | None = None
        self._ledger = Ledger(
            batch, settings.max_poll_records, epoch, None if state is None else self._apply_state
        )
        # state.changelog_interval_s > 0: each partition's flushes in the current epoch, numbered
        # from 0, so that the producer keeps the changelog's order (messages.StateFlush).
        self._flush_seq: dict[TP, int] = {}
        self._paused = False
        self._fetching = False
        self._poll_scheduled = False
        self._last_commit = time.monotonic()
        # The offsets of the commits sent (accepted or not): a quiet pipeline's commit goes once.
        self._commit_requested: dict[TP, int] = {}
        # What went below the watermark by the last commit (WatermarkTracker.released). A full
        # in-flight window more makes a commit due whatever the interval, so that a crash
        # scores again at most twice what the window holds. Counted in records and bytes, not
        # batches: under light load a batch holds a few records, and a commit every
        # max_in_flight batches was a request to the broker every few dozen records
        # (docs/performance.md, "The early commits, counted in records").
        self._released_at_commit = (0, 0)
        self._window_records = batch.max_in_flight * batch.max_records
        self._window_bytes = batch.max_in_flight_bytes
        # A pipeline with nothing in flight nor buffered is quiet once no record came for this
        # long (the wait of a partial batch): then its watermark is committed at once.
        self._quiet_after_s = batch.max_wait_s
        self._records_polled_at = time.monotonic()
        self._last_progress = 0.0
        self._end_offsets_at = 0.0
        self._ticker: _Ticker | None = None
        # Labels on: the producer's answers to PartitionsAssigned, once it restored the
        # prediction ledgers of partitions just assigned. No batch is cut before them.
        self._ledgers_restoring: list[pykka.Future[Any]] = []
        # kafka-python 3.x runs rebalance callbacks on its I/O thread (while this
        # actor waits inside poll), so the state they touch is guarded. The lock
        # is never held across a client call that waits on the I/O thread.
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open the client and subscribe; fetching waits for :class:`Attach`."""
        self._client = self._client_factory(self._settings, self._settings.max_poll_records)
        topics = (
            [self._settings.input_topic, self._labels_topic]
            if self._labels_topic
            else self._settings.input_topic
        )
        self._client.subscribe(topics, self._on_assigned, self._on_revoked)
        self._ticker = _Ticker(self.actor_ref)

    def release(self) -> None:
        """Stop the ticker and leave the group. Never commits: the topology decides that."""
        if self._ticker is not None:
            self._ticker.stop()
        if self._client is not None:
            client, self._client = self._client, None
            client.close()
        if self._state is not None:
            self._state.close()

    def receive(self, message: object) -> Any:
        """Handle polls, acknowledgements and control messages."""
        match message:
            case _Poll():
                self._poll_scheduled = False
                self._poll_once()
            case _Tick():
                if not self._poll_scheduled:
                    self._poll_once()
            case BatchAcked() | BatchProduced() | BatchPartlyDelivered() as news:
                with self._lock:
                    self._on_producer_news(news)
            case StateFlushed() | LedgerHeld() as durable:
                with self._lock:
                    self._on_durable(durable)
            case _CommitResult(offsets=offsets, error=error):
                self._commit_done(offsets, error)
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
            case GetStatus() | GetInFlight() as query:
                with self._lock:
                    if isinstance(query, GetInFlight):
                        return self._in_flight()
                    return self._status(fetching=self._fetching)
        return None

    def _schedule_poll(self) -> None:
        if not self._poll_scheduled:
            self._poll_scheduled = True
            self.actor_ref.tell(_Poll())

    def _poll_once(self) -> None:
        client = self._client
        assert client is not None
        plan = self._plan()
        if plan.timeout_s == 0 and not self._ledgers_restoring:
            self._dispatch_before_poll(plan)
            plan = self._plan()  # the credits now count the batches just sent
        if plan.max_records:
            polled = client.poll(plan.timeout_s, plan.max_records)
        else:
            polled = client.poll(0, 1)  # paused: returns nothing, keeps the membership
        if self._state is not None:
            self._prepare_state(self._state, polled)
        if self._ledgers_restoring:
            self._await_ledgers()
        now = time.monotonic()
        if polled:
            self._records_polled_at = now
        offsets: dict[TP, int] = {}
        with self._lock:
            self._send(self._ledger.take(polled, now, plan))
            if self._state is not None and self._state.interval_s:
                # Gathered changes leave once their interval is over, sooner when the poll
                # found nothing (StateKeeper.flushes), and at once while the shutdown drains.
                idle = bool(plan.max_records) and not polled
                self._send_flushes(self._state.flushes(force=not self._fetching, idle=idle))
            offsets = self._due_commit(now)
            self._maybe_report(now)
        if offsets:
            self._commit_async(offsets)
        if self._paused and now - self._end_offsets_at >= END_OFFSETS_EVERY_S:
            self._refresh_end_offsets(now)
        if self._fetching and not self._paused:
            self._schedule_poll()

    def _plan(self) -> PollPlan:
        with self._lock:
            plan = self._ledger.plan(time.monotonic(), fetching=self._fetching)
            self._set_paused(not plan.max_records)
        return plan

    def _dispatch_before_poll(self, plan: PollPlan) -> None:
        """Send the batches that may leave now before the client call, not after it.

        They are the batches that the news read since the last poll (acknowledgements
        that free credits or the eager rule) let go. A poll that may not wait still
        costs kafka-python three round trips to its I/O thread, 0.8-4.4 ms (median
        2.0) at 2,000 records/s against a few µs on confluent's; and once they are
        gone the poll may wait for records as any other (docs/performance.md,
        "kafka-python's poll").
        """
        if self._state is not None:
            self._prepare_state(self._state, {})  # the stores revoked since close first
        with self._lock:
            self._send(self._ledger.take({}, time.monotonic(), plan))

    def _due_commit(self, now: float) -> dict[TP, int]:
        """The offsets to commit after this poll, {} when no commit is due (under the lock).

        A commit is due every ``kafka.commit_interval_s``; with ``kafka.commit_early`` also
        once the watermark passed a full in-flight window since the last (``batch.max_in_flight``
        x ``batch.max_records`` records, or ``batch.max_in_flight_bytes``), and at once when
        the pipeline is quiet: nothing in flight or buffered, and no record for
        ``batch.max_wait_s`` (docs/delivery.md, "Watermark commits").
        """
        tracker = self._ledger.tracker
        early = self._settings.commit_early
        released = tracker.released
        (records, nbytes), (records_then, nbytes_then) = released, self._released_at_commit
        window = early and (
            records - records_then >= self._window_records
            or nbytes - nbytes_then >= self._window_bytes
        )
        if now - self._last_commit >= self._settings.commit_interval_s or window:
            offsets = tracker.committable()
        elif (
            early
            and not tracker.batches_in_flight
            and not self._ledger.batcher.buffered
            and now - self._records_polled_at >= self._quiet_after_s
        ):
            # The stream went quiet: what advanced is committed now, not an interval later,
            # and once (the result comes back as a message, polls later).
            offsets = {
                tp: offset
                for tp, offset in tracker.committable().items()
                if self._commit_requested.get(tp, -1) < offset
            }
        else:
            return {}
        if offsets:
            self._last_commit = now
            self._released_at_commit = released
            self._commit_requested.update(offsets)
        return offsets

    def _apply_state(self, source: SourceBatch) -> SourceBatch:
        """The Ledger's step on each batch cut: its state applied; the commit's bound moved."""
        assert self._state is not None
        applied = self._state.apply(source)
        if self._state.interval_s:
            tp = (source.topic, source.partition)
            self._ledger.tracker.hold(tp, self._state.durable_bounds().get(tp))
        return applied

    def _send_flushes(self, flushes: list[tuple[TP, Flush]]) -> None:
        """Tell the producer each partition's gathered changes, numbered in the current epoch."""
        if not flushes:
            return
        assert self._producer is not None
        made_at = time.monotonic()
        for tp, flush in flushes:
            seq = self._flush_seq.get(tp, 0)
            self._flush_seq[tp] = seq + 1
            self._producer.tell(
                StateFlush(
                    tp[0], tp[1], flush.flush_id, flush.changes, made_at, self._ledger.epoch, seq
                )
            )

    def _on_durable(self, news: StateFlushed | LedgerHeld) -> None:
        """A state flush is in the changelog, or a prediction ledger's bounds moved."""
        if isinstance(news, StateFlushed):
            # The commit may pass the batches the flush carried.
            assert self._state is not None
            tp = (news.topic, news.partition)
            if self._state.flushed(tp, news.flush_id) and tp in self._ledger.assigned:
                self._ledger.tracker.hold(tp, self._state.durable_bounds().get(tp))
            return
        for topic, durable_from in (
            (self._settings.input_topic, news.input_from),
            (self._labels_topic, news.labels_from),
        ):
            tp = (topic, news.partition)
            if tp in self._ledger.assigned:  # else revoked since: its bounds went with it
                self._ledger.hold_ledger(tp, durable_from)
        if self._fetching and self._paused and self._ledger.has_credit():
            self._schedule_poll()  # the batches kept for the ledger may have held it

    def _in_flight(self) -> InFlight:
        """The ledger's work in flight; unacknowledged flushes count as batches (the drain).

        So does each partition whose prediction ledger changes are not all in the
        ledger's changelog: the producer flushes them on its own.
        """
        in_flight = self._ledger.in_flight()
        pending = self._ledger.tracker.holding(LEDGER_HOLDER) if self._labels_topic else 0
        if self._state is not None and self._state.interval_s:
            pending += self._state.flushes_pending
        if not pending:
            return in_flight
        return dataclasses.replace(
            in_flight, batches_in_flight=in_flight.batches_in_flight + pending
        )

    def _prepare_state(self, state: StateKeeper, polled: Mapping[TP, object]) -> None:
        """Close the revoked partitions' stores; restore the polled ones, outside the lock.

        A restore may take seconds: outside the lock, kafka-python's I/O thread (which
        heartbeats and runs the rebalance callbacks, which take the lock) is never held
        up by it. Whatever is not ready by then is restored inside ``take``.
        """
        with self._lock:
            revoked, self._revoked_state = self._revoked_state, []
            assigned = set(self._ledger.assigned)
        if revoked:
            state.revoke(revoked)
        for tp in polled:
            if tp in assigned:
                state.prepare(tp)  # the input's: a labels partition has no state

    def _await_ledgers(self) -> None:
        """Wait, outside the lock, until the producer restored the ledgers just assigned.

        Their restore (RocksDB stores opened, the changelog probed, at worst a
        rebuild) holds the GIL on the producer's thread: a batch cut before it
        ends would wait behind it in the producer's inbox, in flight, while the
        member already says it is ready. The client fetches meanwhile; the poll's
        records are cut, and the member is ready, once the ledgers are restored,
        or once ``kafka.session_timeout_s`` passed (the batches then wait behind
        the restore, as they did before this wait).
        """
        with self._lock:
            restoring, self._ledgers_restoring = self._ledgers_restoring, []
        for future in restoring:
            if timed_out(future, self._settings.session_timeout_s):
                log.warning(
                    "the producer did not restore the assigned partitions' prediction ledgers "
                    "within kafka.session_timeout_s (%.0f s): their batches go on and wait "
                    "for it in its inbox",
                    self._settings.session_timeout_s,
                    extra={"actor": self.kind},
                )
        if self._on_ready is not None:
            self._on_ready()

    def _refresh_end_offsets(self, now: float) -> None:
        # Outside the lock: with kafka-python the request waits on the I/O thread,
        # which may be running a rebalance callback that takes the lock.
        self._end_offsets_at = now
        assert self._client is not None
        with self._lock:
            assigned = list(self._ledger.assigned)
        try:
            self._client.refresh_end_offsets(assigned, END_OFFSETS_TIMEOUT_S)
        except Exception as exc:  # a stale lag figure is not worth a crash
            log.debug("could not refresh the end offsets for the lag gauge: %s", exc)

    def _send(self, batches: list[SourceBatch], *, consumed: bool = True) -> None:
        if not batches:
            return
        assert self._preprocessors is not None
        for source in batches:
            if source.topic == self._labels_topic:
                assert self._producer is not None
                self._producer.tell(LabelBatch(source))
            else:
                next(self._preprocessors).tell(ScoreBatch(source))
        if consumed:
            # One metrics message per poll, not per batch: each message costs the
            # metrics actor a wakeup, which small batches would pay many times. Labels
            # are not records to answer: the producer counts them in the ledger.
            count = sum(len(b) for b in batches if b.topic != self._labels_topic)
            if count:
                self._emit(RecordsConsumed(count))

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused or self._client is None:
            return
        self._paused = paused
        if paused:
            self._client.pause(self._ledger.assigned)
        else:
            self._client.resume(self._ledger.assigned)

    def _stop_fetching(self) -> ConsumerStatus:
        """Dispatch what is buffered, then take no new records. Acks still count."""
        if self._fetching:
            self._send(self._ledger.drain(time.monotonic()))
            if self._state is not None and self._state.interval_s:
                # Every change is applied by now: gathered changes leave at once (the drain
                # waits for them as for batches).
                self._send_flushes(self._state.flushes(force=True))
        self._fetching = False
        self._set_paused(True)
        return self._status(fetching=False)

    def _status(self, *, fetching: bool) -> ConsumerStatus:
        status = self._ledger.status(fetching=fetching, paused=self._paused)
        if self._state is None:
            return status
        return dataclasses.replace(status, state_keys=self._state.state_keys)

    def _maybe_report(self, now: float, *, force: bool = False) -> None:
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        client, assigned = self._client, self._ledger.assigned
        ends = {tp: client.highwater(tp) for tp in assigned} if client is not None else {}
        self._emit(self._ledger.progress(ends, paused=self._paused))
        if self._state is not None:
            self._emit(self._state.progress())

    def _on_producer_news(self, news: BatchAcked | BatchProduced | BatchPartlyDelivered) -> None:
        if isinstance(news, BatchAcked):
            self._on_ack(news)
        elif isinstance(news, BatchProduced):
            self._ledger.produced(news.batch_id)
        else:
            self._ledger.settle(news)

    def _on_ack(self, ack: BatchAcked) -> None:
        if self._ledger.settle(ack):
            # The consumer stays alive so that the shutdown can still commit the
            # acknowledged work of every partition; the topology stops the pipeline.
            self._fetching = False
            msg = (
                f"outputs of batch {ack.batch_id} from {ack.topic}/{ack.partition} were not "
                f"delivered ({ack.error}); offsets stay uncommitted from that batch on"
            )
            where = {"actor": self.kind, "topic": ack.topic, "partition": ack.partition}
            log.error("%s", msg, extra=where)
            if self._failure_handler is not None:
                self._failure_handler("producer", DeliveryError(msg))
        if self._fetching and self._paused and self._ledger.has_credit():
            self._schedule_poll()

    def _rewind(self, epoch: int) -> Rewound:
        """Send every unacknowledged batch again, in partition order, in a new epoch."""
        resent = self._ledger.rewind(epoch, time.monotonic())
        if self._state is not None and self._state.interval_s:
            # Before the batches, renumbered from 0 in the new epoch: the producer sends them
            # in order again (it drops an older epoch's, and any after a gap).
            self._flush_seq = {}
            self._send_flushes(self._state.unacknowledged())
        if self._preprocessors is not None:
            self._send(resent, consumed=False)
        log.warning("rewind to epoch %d: %d unacknowledged batches sent again", epoch, len(resent))
        return Rewound(epoch, len(resent))

    def _commit_async(self, offsets: dict[TP, int]) -> None:
        if self._client is None:
            return
        ref = self.actor_ref

        def on_done(committed: dict[TP, int], error: Exception | None) -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_CommitResult(committed, None if error is None else str(error)))

        self._client.commit_async(offsets, on_done)

    def _commit_done(self, offsets: dict[TP, int], error: str | None) -> None:
        if error is None:
            with self._lock:
                self._ledger.tracker.mark_committed(offsets)
                if self._state is not None:
                    self._state.committed(offsets)
        else:
            log.warning("offset commit failed, will retry with the next commit: %s", error)

    def _commit_sync(self) -> dict[TP, int]:
        """Commit every watermark now; returns what the broker accepted."""
        with self._lock:
            offsets = self._ledger.tracker.watermarks()
        if offsets and self._client is not None:
            self._client.commit(offsets)
        with self._lock:
            self._ledger.tracker.mark_committed(offsets)
            if self._state is not None:
                self._state.committed(offsets)
            self._maybe_report(time.monotonic(), force=True)
        return offsets

    def _on_assigned(self, tps: list[TP]) -> None:
        """Inside ``client.poll``: on kafka-python's I/O thread, or confluent's caller's."""
        with self._lock:
            if tps:
                _log_partitions("assigned", tps)
            seeks = self._ledger.assign(tps)
            if self._client is not None:
                for tp, offset in seeks.items():
                    self._client.seek(tp, offset)
                # A partition new to this member comes unpaused, but one given back in
                # the same rebalance keeps its paused flag: set every one explicitly.
                if self._paused:
                    self._client.pause(tps)
                else:
                    self._client.resume(tps)
            if tps and self._labels_topic and self._producer is not None:
                # The producer restores their prediction ledgers now, while the client
                # fetches their first records; this poll's records are cut (and the
                # daemon is ready) once it is done (_await_ledgers).
                restored = ask_without_waiting(self._producer, PartitionsAssigned(tuple(tps)))
                if restored is not None:
                    self._ledgers_restoring.append(restored)
            if self._on_ready is not None and not self._ledgers_restoring:
                self._on_ready()

    def _on_revoked(self, tps: list[TP]) -> None:
        """Inside ``client.poll``, like :meth:`_on_assigned`.

        With state or labels, it returns (and so the member hands the partitions
        over) only once the producer has the broker's acknowledgement of every
        changelog record it already sent, up to ``kafka.session_timeout_s``: such
        a record landing after the next owner's restore would be in the changelog
        after that owner's own changes, and a later restore would read it last.
        """
        if not tps:
            return
        handed_over: pykka.Future[Any] | None = None
        with self._lock:
            _log_partitions("revoked", tps)
            offsets = self._ledger.revoke(tps)
            for tp in tps:
                self._commit_requested.pop(tp, None)
            if self._state is not None:
                # Their batches in the stages are abandoned (the Ledger ignores their acks):
                # their changes are in the local store only, which the next assignment,
                # here or elsewhere, replans against the changelog. The actor's thread
                # closes the stores (this may be kafka-python's I/O thread).
                self._revoked_state.extend(tps)
            if self._producer is not None:
                # The producer sends no state changes of their abandoned batches, closes
                # their prediction ledgers and waits for what it had sent.
                revoked = PartitionsRevoked(
                    tuple(tps), time.monotonic(), self._settings.session_timeout_s
                )
                handed_over = ask_without_waiting(self._producer, revoked)
            if offsets and self._client is not None:
                # A blocking commit inside the rebalance callback is a kafka-python
                # 3.x bug ("Cannot block on net.run() from the IO thread"), so async.
                self._client.commit_async(offsets, lambda _o, _e: None)
        if handed_over is not None and timed_out(handed_over, self._settings.session_timeout_s + 1):
            log.warning(
                "revoked %s: the producer did not confirm its changelog records within "
                "kafka.session_timeout_s (%.0f s); one may land after the next owner restored "
                "the partition (see docs/state.md, Flushes)",
                ", ".join(_partition_names(tps)),
                self._settings.session_timeout_s,
                extra={"actor": ConsumerActor.kind},
            )

"""The terminator: Broadway's ordered shutdown, within one budget (``shutdown.timeout_s``).

    1. Consumer <- StopFetching   dispatch the buffered records, take no new ones;
                                  it stays alive to receive the acks
    2. wait until no batch is in flight (GetInFlight every 20 ms; returns early
                                  on a failure, or when only the close reserve is left)
    3. drained: Producer <- Flush block until every send settled
    4. Consumer <- CommitNow      the final watermark (also when not drained)
    5. stop the stages in STOP_ORDER: preprocessors, models, producer, consumer;
                                  their queued messages are discarded first
                                  (batches past the commit are re-read after a
                                  restart); a preprocessor or model still busy
                                  halfway through the close reserve is left
                                  behind, so that the producer and the consumer
                                  close by the deadline
    6. stop the challengers       the model actors, which send to them, are stopped;
                                  their queued shadow batches are discarded too
    7. stop metrics               its HTTP server answers the probes to the end

Pykka's ``stop()`` is a message behind everything already queued, so a model
actor with 16 slow batches in its inbox would work them all off first (81 s
after a 30 s budget, docs/delivery.md). Steps 5 and 6 empty the inboxes instead;
an actor still busy with the one message it is handling at the deadline is left
behind: its thread is a daemon thread, so it does not keep the process alive.

The report's exit code is 0 only when the drain finished and nothing failed.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pykka

from streamer.core.records import TP
from streamer.errors import StreamerError
from streamer.messages import CommitNow, Flush, GetInFlight, InFlight, StopFetching
from streamer.topology.control import ASK_TIMEOUT_S, ask, left
from streamer.topology.specs import Routes, Stage

log = logging.getLogger(__name__)

STOP_ORDER = (Stage.PREPROCESSOR, Stage.MODEL, Stage.PRODUCER, Stage.CONSUMER)
"""Flow order: nothing upstream sends to a stopped actor, and the consumer takes the last acks."""

COMPUTE_STAGES = (Stage.PREPROCESSOR, Stage.MODEL)
"""Stages without clients: one busy at the deadline is left behind (see stop_stages)."""

DRAIN_POLL_S = 0.02
IDLE_STOP_S = 0.05
"""Past the deadline, what an idle actor still gets to stop (and keep the flow order)."""
CLOSE_RESERVE_S = 3.0
"""Of the budget, kept for steps 4 to 6: the commit and closing the clients (a third of
small budgets). Half of it is the producer's and the consumer's own."""


def close_reserve(budget_s: float) -> float:
    """The part of the budget that the drain wait (step 2) leaves to the commit and the stops."""
    return min(CLOSE_RESERVE_S, budget_s / 3)


@dataclass(frozen=True)
class ShutdownReport:
    """What the shutdown did; ``exit_code`` is 0 only for a clean drain."""

    exit_code: int
    drained: bool
    committed: dict[TP, int] = field(default_factory=dict)
    failure: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Drain:
    """What steps 1-4 did; ``error`` says which step failed, if one did."""

    drained: bool = False
    committed: dict[TP, int] = field(default_factory=dict)
    error: str | None = None


class Terminator:
    """Runs the shutdown steps against the stages' Routes.

    Args:
        routes: The stages' Routes (read at each step: a stage may be restarted
            while the drain waits).
        failure: Why the pipeline fails, if it does; a failure ends the drain wait.
        before_stop: Called once before step 5 (the pipeline closes its
            supervisor there, so that nothing is restarted any more).
        challengers: The challenger actors (read at step 6: they start after the terminator).
    """

    def __init__(
        self,
        routes: Routes,
        failure: Callable[[], str | None],
        before_stop: Callable[[], None],
        challengers: Callable[[], list[pykka.ActorRef]] = list,
    ) -> None:
        self._routes = routes
        self._challengers = challengers
        self._failure = failure
        self._before_stop = before_stop
        self._stopped = False

    def shutdown(
        self, budget_s: float, metrics: pykka.ActorRef | None, started: float | None = None
    ) -> ShutdownReport:
        """Steps 1 to 7; ``started`` is when the budget began (``time.monotonic()``)."""
        started = time.monotonic() if started is None else started
        deadline = started + budget_s
        failure = self._failure()
        reserve = close_reserve(budget_s)
        drain = self.drain(deadline - reserve, commit_deadline=deadline)
        self.stop_stages(metrics, deadline, compute_deadline=deadline - reserve / 2)
        failure = failure or drain.error or self._failure()
        if not drain.drained and failure is None:
            failure = f"in-flight batches did not drain within shutdown.timeout_s={budget_s}"
        report = ShutdownReport(
            exit_code=0 if failure is None and drain.drained else 1,
            drained=drain.drained,
            committed=drain.committed,
            failure=failure,
            seconds=time.monotonic() - started,
        )
        _log(report)
        return report

    def drain(self, deadline: float, commit_deadline: float | None = None) -> Drain:
        """Steps 1 to 4; a step that fails or times out is reported, never raised.

        Steps 1 to 3 end by ``deadline``, the final commit by ``commit_deadline``
        (by default one second later).
        """
        commit_deadline = deadline + 1.0 if commit_deadline is None else commit_deadline
        consumer = self._first(Stage.CONSUMER)
        if consumer is None or not consumer.is_alive():
            return Drain()
        drained = False
        committed: dict[TP, int] = {}
        try:
            ask(consumer, StopFetching(), timeout=left(deadline))
            drained = self._wait_drained(deadline)
            producer = self._first(Stage.PRODUCER)
            if drained and producer is not None and producer.is_alive():
                ask(producer, Flush(left(deadline)), timeout=left(deadline) + 1)
            committed = ask(consumer, CommitNow(), timeout=max(1.0, left(commit_deadline)))
        except (pykka.ActorDeadError, pykka.Timeout, StreamerError) as exc:
            error = f"shutdown step failed: {type(exc).__name__}: {exc}"
            return Drain(drained, committed, error)
        except Exception as exc:  # the commit itself can fail; report, never hang
            return Drain(drained, committed, f"final commit failed: {type(exc).__name__}: {exc}")
        return Drain(drained, committed)

    def stop_stages(
        self,
        metrics: pykka.ActorRef | None,
        deadline: float | None = None,
        compute_deadline: float | None = None,
    ) -> None:
        """Steps 5 to 7, once: empty the inboxes; stop stages, challengers, metrics.

        The stages stop in flow order. Each stage is waited for until ``deadline``
        (by default ``ASK_TIMEOUT_S`` from now), the preprocessors, models and
        challengers only until
        ``compute_deadline`` (by default ``deadline``), so that a model busy with
        a long batch leaves the producer and the consumer their time to close.
        Metrics gets at least one more second to close its server.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + ASK_TIMEOUT_S if deadline is None else deadline
        compute_deadline = deadline if compute_deadline is None else min(compute_deadline, deadline)
        self._before_stop()
        discarded = sum(
            discard_queued(ref) for stage in STOP_ORDER for ref in self._routes[stage].refs()
        )
        if discarded:
            log.info("shutdown: discarded %d queued messages; a restart re-reads them", discarded)
        for stage in STOP_ORDER:
            until = compute_deadline if stage in COMPUTE_STAGES else deadline
            for ref in self._routes[stage].refs():
                discard_queued(ref)  # what arrived since: the stage upstream was still busy
                _wait_stopped(ref, ref.stop(block=False), max(IDLE_STOP_S, left(until)))
        for ref in self._challengers():
            discard_queued(ref)
            _wait_stopped(ref, ref.stop(block=False), max(IDLE_STOP_S, left(compute_deadline)))
        if metrics is not None:
            _wait_stopped(metrics, metrics.stop(block=False), max(1.0, left(deadline)))

    def _wait_drained(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._failure() is not None:
                return False
            consumer = self._first(Stage.CONSUMER)
            assert consumer is not None
            status: InFlight = ask(consumer, GetInFlight(), timeout=max(0.1, left(deadline)))
            if status.batches_in_flight == 0:
                return True
            time.sleep(DRAIN_POLL_S)
        return False

    def _first(self, stage: Stage) -> pykka.ActorRef | None:
        refs = self._routes[stage].refs()
        return refs[0] if refs else None


def discard_queued(ref: pykka.ActorRef) -> int:
    """Empty ``ref``'s inbox; a queued ask gets ActorDeadError, as pykka does for a dead actor.

    Returns how many messages were dropped. The message being handled is not
    touched: that one ends on its own.
    """
    inbox = cast("queue.Queue[Any]", ref.actor_inbox)  # a ThreadingActor's inbox
    dropped = 0
    while True:
        try:
            envelope = inbox.get_nowait()
        except queue.Empty:
            return dropped
        dropped += 1
        if envelope.reply_to is not None:
            error = pykka.ActorDeadError(f"{ref} stopped before handling the message")
            envelope.reply_to.set_exception(exc_info=(type(error), error, None))


def _wait_stopped(ref: pykka.ActorRef, future: pykka.Future[bool], timeout_s: float) -> None:
    try:
        future.get(timeout=timeout_s)
    except pykka.ActorDeadError:
        pass
    except pykka.Timeout:
        log.warning(
            "actor %s is still busy with one message at the shutdown deadline; left behind "
            "(its work is past the commit and is re-read after a restart)",
            ref,
        )


def _log(report: ShutdownReport) -> None:
    committed = _fmt_offsets(report.committed)
    if report.exit_code == 0:
        log.info("stopped cleanly in %.2fs; committed %s", report.seconds, committed)
    else:
        log.error(
            "stopped after a failure in %.2fs: %s; committed %s",
            report.seconds,
            report.failure,
            committed,
        )


def _fmt_offsets(offsets: dict[TP, int]) -> str:
    if not offsets:
        return "nothing"
    return ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(offsets.items()))

"""The terminator: Broadway's ordered shutdown, within one budget (``shutdown.timeout_s``).

    1. Consumer <- StopFetching   dispatch the buffered records, take no new ones;
                                  it stays alive to receive the acks
    2. wait until no batch is in flight (GetInFlight every 20 ms; returns early
                                  on a failure or at the deadline)
    3. drained: Producer <- Flush block until every send settled
    4. Consumer <- CommitNow      the final watermark (also when not drained)
    5. stop the stages in STOP_ORDER: preprocessors, models, producer, consumer
    6. stop the challengers       the model actors, which send to them, are stopped
    7. stop metrics               its HTTP server answers the probes to the end

The report's exit code is 0 only when the drain finished and nothing failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pykka

from streamer.core.records import TP
from streamer.errors import StreamerError
from streamer.messages import CommitNow, Flush, GetInFlight, InFlight, StopFetching
from streamer.topology.control import ASK_TIMEOUT_S, ask, left
from streamer.topology.specs import Routes, Stage

log = logging.getLogger(__name__)

STOP_ORDER = (Stage.PREPROCESSOR, Stage.MODEL, Stage.PRODUCER, Stage.CONSUMER)
"""Flow order: nothing upstream sends to a stopped actor, and the consumer takes the last acks."""

DRAIN_POLL_S = 0.02


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
        failure = self._failure()
        drain = self.drain(started + budget_s)
        self.stop_stages(metrics)
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

    def drain(self, deadline: float) -> Drain:
        """Steps 1 to 4; a step that fails or times out is reported, never raised."""
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
            committed = ask(consumer, CommitNow(), timeout=left(deadline) + 5)
        except (pykka.ActorDeadError, pykka.Timeout, StreamerError) as exc:
            error = f"shutdown step failed: {type(exc).__name__}: {exc}"
            return Drain(drained, committed, error)
        except Exception as exc:  # the commit itself can fail; report, never hang
            return Drain(drained, committed, f"final commit failed: {type(exc).__name__}: {exc}")
        return Drain(drained, committed)

    def stop_stages(self, metrics: pykka.ActorRef | None) -> None:
        """Steps 5 to 7, once: stop every stage in flow order, the challengers, then metrics."""
        if self._stopped:
            return
        self._stopped = True
        self._before_stop()
        stages = [ref for stage in STOP_ORDER for ref in self._routes[stage].refs()]
        for ref in [*stages, *self._challengers(), metrics]:
            if ref is None:
                continue
            try:
                ref.stop(block=True, timeout=ASK_TIMEOUT_S)
            except pykka.ActorDeadError:
                pass
            except pykka.Timeout:
                log.error("actor %s did not stop within %.0fs", ref, ASK_TIMEOUT_S)  # noqa: TRY400 - no traceback wanted

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

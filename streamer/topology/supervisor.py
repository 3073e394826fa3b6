"""The supervisor: restarts a failed stage on its own, within OTP's restart intensity.

A dying actor queues ``(stage, index, error)`` from its own thread (through the
handler it was started with). The supervisor's thread takes them one by one::

    failure of a consumer, producer, model or preprocessor
       |
       |  not restartable (the dead-letter breaker)      -> give up
       |  more than max_restarts within restart_window_s -> give up
       v
    sleep the backoff (backoff_initial_s, doubling, at most backoff_max_s)
    epoch += 1; start a new actor from the stage's spec; swap it into its Route
    spec.resume: a new consumer is attached; any other stage: Consumer <- Rewind(epoch)

Giving up keeps the first reason and calls ``on_give_up``: the pipeline then
runs its terminator. At start nothing is restarted: the first failure fails the
start (:meth:`Supervisor.fail_queued`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping

import pykka

from streamer.actors.base import FailureHandler
from streamer.core.supervision import RestartPolicy
from streamer.errors import StreamerError
from streamer.messages import ActorRestarted
from streamer.settings import SupervisionSettings
from streamer.topology.control import ASK_TIMEOUT_S
from streamer.topology.heap import thaw
from streamer.topology.specs import SPECS, Stage, StageSpec, Wiring

log = logging.getLogger(__name__)


class Supervisor:
    """Starts the stages from their specs, in the table's order, and restarts them.

    Args:
        settings: The restart intensity and backoff.
        on_give_up: Called (once per failure) when the pipeline must stop.
        specs: The stage specs (:data:`~streamer.topology.specs.SPECS`).
        clock: The restart policy's clock.
    """

    def __init__(
        self,
        settings: SupervisionSettings,
        on_give_up: Callable[[], None],
        *,
        specs: Mapping[Stage, StageSpec] = SPECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = RestartPolicy(
            settings.max_restarts,
            settings.restart_window_s,
            settings.backoff_initial_s,
            settings.backoff_max_s,
        )
        self._on_give_up = on_give_up
        self._specs = specs
        self._clock = clock
        self._failures: queue.Queue[tuple[Stage, int, BaseException]] = queue.Queue()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._wiring: Wiring | None = None
        self.epoch = 0
        self.restarts: dict[str, int] = {}
        self.failure: str | None = None
        """Why the pipeline must stop: the first failure given up on."""
        self.error: BaseException | None = None

    def start_children(self, wiring: Wiring) -> None:
        """Start every stage in the table's order, each into its Route."""
        self._wiring = wiring
        for stage, spec in self._specs.items():
            refs = [self._start(stage, i) for i in range(spec.count(wiring.settings))]
            wiring.routes[stage].set(refs)

    def handler(self, stage: Stage, index: int) -> FailureHandler:
        """The ``on_failure`` of one actor: queue its failure for the supervisor's thread."""

        def on_failure(_kind: str, error: BaseException) -> None:
            self._failures.put((stage, index, error))

        return on_failure

    def fail_queued(self) -> None:
        """Give up on every failure queued so far (at start, where nothing is restarted)."""
        while True:
            try:
                stage, _index, error = self._failures.get_nowait()
            except queue.Empty:
                return
            self.give_up(f"{stage} actor died: {type(error).__name__}: {error}", error)

    def give_up(self, reason: str, error: BaseException | None = None) -> None:
        """Keep the first reason and ask the pipeline to stop."""
        if self.failure is None:
            self.failure = reason
            self.error = error
            log.error("stopping the pipeline: %s", reason)
        self._on_give_up()

    def run(self) -> None:
        """Handle failures on a thread of its own until :meth:`close`."""
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop restarting (a restart in its backoff is dropped) and wait for the thread."""
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=ASK_TIMEOUT_S)

    def _supervise(self) -> None:
        while not self._closing.is_set():
            try:
                stage, index, error = self._failures.get(timeout=0.1)
            except queue.Empty:
                continue
            if self._closing.is_set() or self.failure is not None:
                continue
            self._on_failure(stage, index, error)

    def _on_failure(self, stage: Stage, index: int, error: BaseException) -> None:
        what = f"{stage} actor died: {type(error).__name__}: {error}"
        if isinstance(error, StreamerError) and not error.restartable:
            self.give_up(what, error)
            return
        decision = self._policy.on_failure(self._clock())
        if not decision.restart:
            self.give_up(f"{what}; {decision.reason}", error)
            return
        log.warning("%s; restarting it in %.1fs", what, decision.delay_s)
        if self._closing.wait(decision.delay_s):
            return
        try:
            self._restart(stage, index)
        except Exception as exc:  # a restart that fails is fatal, never a hang
            self.give_up(f"could not restart the {stage} actor: {type(exc).__name__}: {exc}", exc)

    def _restart(self, stage: Stage, index: int) -> None:
        assert self._wiring is not None
        self.epoch += 1
        self._wiring.routes[stage].replace(index, self._start(stage, index))
        self.restarts[stage.value] = self.restarts.get(stage.value, 0) + 1
        if self._wiring.metrics is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._wiring.metrics.tell(ActorRestarted(actor=stage.value))
        thaw()  # the dead actor may be garbage in cycles
        self._specs[stage].resume(self._wiring.routes, self.epoch)
        log.info("%s actor restarted (epoch %d)", stage, self.epoch)

    def _start(self, stage: Stage, index: int) -> pykka.ActorRef:
        assert self._wiring is not None
        return self._specs[stage].start(self._wiring, index, self.epoch, self.handler(stage, index))

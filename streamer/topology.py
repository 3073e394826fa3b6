"""The only place that starts, wires and stops actors.

Start order is the reverse of the data flow, so that every actor gets its
downstream refs in ``__init__``::

    metrics -> consumer (idle) -> producer -> models -> preprocessors -> Attach

Shutdown follows Broadway's terminator:

    1. the consumer stops fetching (it stays alive to receive acks)
    2. wait until every in-flight batch is acked, then flush the producer
    3. the consumer commits the final watermark
    4. stop preprocessors, models, producer (flow order), then the consumer
    5. metrics stop last
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pykka
from prometheus_client import CollectorRegistry

from streamer.actors.consumer import Attach, ConsumerActor
from streamer.actors.metrics import MetricsActor, PipelineMetrics
from streamer.actors.model import ModelActor
from streamer.actors.preprocess import PreprocessorActor
from streamer.actors.producer import ProducerActor
from streamer.actors.routing import Route
from streamer.clients import ConsumerFactory, ProducerFactory, backend
from streamer.core.batching import fetch_max_bytes
from streamer.core.model import Model, load_configured
from streamer.core.supervision import DeadLetterBreaker, RestartPolicy
from streamer.errors import BrokerError, ConfigError, PipelineStartError, StreamerError
from streamer.messages import (
    ActorRestarted,
    CommitNow,
    Flush,
    GetStatus,
    ModelReloaded,
    Rewind,
    StopFetching,
    SwapModel,
)
from streamer.reload import ModelReloader
from streamer.settings import Settings

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 10.0


@dataclass
class ShutdownReport:
    """What the shutdown did; ``exit_code`` is 0 only for a clean drain."""

    exit_code: int
    drained: bool
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    failure: str | None = None
    seconds: float = 0.0


class Pipeline:
    """Builds the actor topology from Settings, supervises it, and stops it in order."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        model: Model | None = None,
        consumer_factory: ConsumerFactory | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model = model if model is not None else load_configured(settings)
        self._reloader: ModelReloader | None = None
        # No factory given: the backend that kafka.client names (kafka-python by default).
        if consumer_factory is None or producer_factory is None:
            chosen = backend(settings.kafka.client)
            # The client's fetches are a share of the byte cap, so that what it
            # buffers stays small next to the cap (see fetch_max_bytes).
            consumer_factory = consumer_factory or functools.partial(
                chosen.consumer,
                fetch_max_bytes=fetch_max_bytes(settings.batch.max_in_flight_bytes),
            )
            producer_factory = producer_factory or chosen.producer
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._stop_requested = threading.Event()
        self._closing = threading.Event()
        self._failure: str | None = None
        self._failure_error: BaseException | None = None
        self._assigned = threading.Event()
        sup = settings.supervision
        self._policy = RestartPolicy(
            sup.max_restarts, sup.restart_window_s, sup.backoff_initial_s, sup.backoff_max_s
        )
        self._failures: queue.Queue[tuple[str, int, BaseException]] = queue.Queue()
        self._supervisor: threading.Thread | None = None
        self._epoch = 0
        self.restarts: dict[str, int] = {}
        # Senders hold these routes, so that a restarted actor needs no rewiring.
        self._consumer_route = Route("consumer")
        self._producer_route = Route("producer")
        self._model_route = Route("models")
        self._preprocessor_route = Route("preprocessors")
        self.metrics_ref: pykka.ActorRef | None = None
        self._starting = True
        self._stopped = False

    # --- the current refs ----------------------------------------------------

    @property
    def consumer_ref(self) -> pykka.ActorRef | None:
        """The consumer actor (changes when it is restarted)."""
        refs = self._consumer_route.refs()
        return refs[0] if refs else None

    @property
    def producer_ref(self) -> pykka.ActorRef | None:
        """The producer actor (changes when it is restarted)."""
        refs = self._producer_route.refs()
        return refs[0] if refs else None

    @property
    def model_refs(self) -> list[pykka.ActorRef]:
        """The model actors."""
        return self._model_route.refs()

    @property
    def preprocessor_refs(self) -> list[pykka.ActorRef]:
        """The preprocessor actors."""
        return self._preprocessor_route.refs()

    # --- start ---------------------------------------------------------------

    def start(self) -> None:
        """Wait for the broker, check the topics, start every actor, and begin fetching.

        Raises:
            ConfigError: A configured topic does not exist on the broker.
            BrokerError: The broker cannot be reached (and retrying is off).
        """
        s = self.settings
        self._check_features()
        self.metrics_ref = MetricsActor.start(
            s.metrics,
            self.registry,
            self.model.name,
            self.model.version,
            health=self.health,
            readiness=self.readiness,
        )
        try:
            self._wait_for_broker()
            self._consumer_route.set([self._start_actor("consumer", 0)])
            self._producer_route.set([self._start_actor("producer", 0)])
            self._model_route.set([self._start_actor("model", i) for i in range(s.model.workers)])
            self._preprocessor_route.set(
                [self._start_actor("preprocessor", i) for i in range(s.preprocess.workers)]
            )
            # on_start runs on each actor's thread: wait until the clients are open.
            for ref in (self.consumer_ref, self.producer_ref):
                assert ref is not None
                _ask(ref, GetStatus(), timeout=s.kafka.bootstrap_timeout_s + ASK_TIMEOUT_S)
            self._attach_consumer()
        except Exception:
            self._drain_start_failures()
            self._stop_all()
            self._raise_start_failure()
            raise
        self._drain_start_failures()
        if self._failure is not None:  # an actor died while opening its client
            self._stop_all()
            self._raise_start_failure()
        self._starting = False
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        self._start_reloader()
        log.info(
            "pipeline started: %s -> %s (dead letters: %s), "
            "%d preprocessors, %d models, model %s %s",
            s.kafka.input_topic,
            s.kafka.output_topic,
            s.kafka.dead_letter_topic_name,
            s.preprocess.workers,
            s.model.workers,
            self.model.name,
            self.model.version,
        )

    def _start_actor(self, kind: str, index: int) -> pykka.ActorRef:
        """Start one actor of a kind; used at start and by the supervisor."""
        s = self.settings
        on_failure = self._failure_handler(kind, index)
        # Routes stand in for refs: they have the same tell().
        consumer = cast(pykka.ActorRef, self._consumer_route)
        producer = cast(pykka.ActorRef, self._producer_route)
        models = cast(pykka.ActorRef, self._model_route)
        if kind == "consumer":
            return ConsumerActor.start(
                s.kafka,
                s.batch,
                metrics=self.metrics_ref,
                on_failure=on_failure,
                client_factory=self._consumer_factory,
                on_ready=self._assigned.set,
                epoch=self._epoch,
            )
        if kind == "producer":
            sup = s.supervision
            breaker = (
                DeadLetterBreaker(sup.dead_letter_max_ratio, sup.dead_letter_window_records)
                if sup.dead_letter_max_ratio < 1
                else None
            )
            return ProducerActor.start(
                s.kafka,
                consumer,
                metrics=self.metrics_ref,
                on_failure=on_failure,
                client_factory=self._producer_factory,
                breaker=breaker,
                on_unanswerable=sup.on_unanswerable,
            )
        if kind == "model":
            return ModelActor.start(
                self.model,
                producer,
                metrics=self.metrics_ref,
                on_failure=on_failure,
                preprocess=s.preprocess,
                batch=s.batch,
            )
        if kind == "preprocessor":
            return PreprocessorActor.start(
                s.preprocess,
                s.batch,
                self.model.spec,
                [models],
                metrics=self.metrics_ref,
                on_failure=on_failure,
            )
        msg = f"unknown actor kind {kind!r}"
        raise ValueError(msg)

    def _attach_consumer(self) -> None:
        consumer = self.consumer_ref
        assert consumer is not None
        consumer.tell(Attach([cast(pykka.ActorRef, self._preprocessor_route)]))

    def _check_features(self) -> None:
        if not self.model.spec.names:
            msg = f"model error: model {self.model.name} declares no features"
            raise ConfigError(msg)

    def _wait_for_broker(self) -> None:
        """Check the topics; while the broker is unreachable, retry and log (not ready)."""
        retry_s = self.settings.supervision.broker_retry_s
        attempt = 0
        while True:
            attempt += 1
            try:
                self._check_topics(retry_s)
            except BrokerError as exc:
                if retry_s <= 0 or self._stop_requested.is_set():
                    raise
                log.warning(
                    "broker not reachable (attempt %d), retrying in %.0fs: %s",
                    attempt,
                    retry_s,
                    exc,
                )
                if self._stop_requested.wait(retry_s):
                    raise
            else:
                return

    def _check_topics(self, timeout_s: float) -> None:
        k = self.settings.kafka
        if timeout_s > 0:
            k = dataclasses.replace(
                k, bootstrap_timeout_s=min(k.bootstrap_timeout_s, max(1.0, timeout_s))
            )
        probe = self._consumer_factory(k, 1)
        try:
            existing = probe.existing_topics()
        finally:
            probe.close()
        wanted = {
            "kafka.input_topic": k.input_topic,
            "kafka.output_topic": k.output_topic,
            "kafka.dead_letter_topic": k.dead_letter_topic_name,
        }
        for key, topic in wanted.items():
            if topic not in existing:
                msg = (
                    f"config error: {key}: topic {topic!r} does not exist on "
                    f"{k.bootstrap_servers}; create it first "
                    f"(e.g. kafka-topics.sh --create --topic {topic})"
                )
                raise ConfigError(msg)

    # --- supervision ---------------------------------------------------------

    def _failure_handler(self, kind: str, index: int) -> Callable[[str, BaseException], None]:
        def handler(_kind: str, error: BaseException) -> None:
            self._failures.put((kind, index, error))

        return handler

    def _drain_start_failures(self) -> None:
        """At start nothing is restarted: the first failure fails the start."""
        while True:
            try:
                kind, _index, error = self._failures.get_nowait()
            except queue.Empty:
                return
            self._fail(f"{kind} actor died: {type(error).__name__}: {error}", error)

    def _fail(self, reason: str, error: BaseException | None = None) -> None:
        if self._failure is None:
            self._failure = reason
            self._failure_error = error
            log.error("stopping the pipeline: %s", reason)
        self._stop_requested.set()

    def _supervise(self) -> None:
        """Restart failed actors with backoff; give up beyond the restart intensity."""
        while not self._closing.is_set():
            try:
                kind, index, error = self._failures.get(timeout=0.1)
            except queue.Empty:
                continue
            if self._closing.is_set() or self._failure is not None:
                continue
            what = f"{kind} actor died: {type(error).__name__}: {error}"
            if kind == "metrics":
                log.error("%s; /healthz now fails so that the orchestrator restarts us", what)
                continue
            if not getattr(error, "restartable", True):
                self._fail(what, error)
                continue
            decision = self._policy.on_failure(time.monotonic())
            if not decision.restart:
                self._fail(f"{what}; {decision.reason}", error)
                continue
            log.warning("%s; restarting it in %.1fs", what, decision.delay_s)
            if self._closing.wait(decision.delay_s):
                return
            try:
                self._restart(kind, index)
            except Exception as exc:  # a restart that fails is fatal, never a hang
                self._fail(f"could not restart the {kind} actor: {type(exc).__name__}: {exc}", exc)

    def _restart(self, kind: str, index: int) -> None:
        self._epoch += 1
        ref = self._start_actor(kind, index)
        route = {
            "consumer": self._consumer_route,
            "producer": self._producer_route,
            "model": self._model_route,
            "preprocessor": self._preprocessor_route,
        }[kind]
        route.replace(index, ref)
        self.restarts[kind] = self.restarts.get(kind, 0) + 1
        if self.metrics_ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.metrics_ref.tell(ActorRestarted(actor=kind))
        if kind == "consumer":
            # A new consumer resumes from the committed offsets in a new epoch.
            self._attach_consumer()
        else:
            consumer = self.consumer_ref
            if consumer is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    consumer.tell(Rewind(self._epoch))
        log.info("%s actor restarted (epoch %d)", kind, self._epoch)

    def _raise_start_failure(self) -> None:
        error = self._failure_error
        if isinstance(error, StreamerError):
            raise error
        if self._failure is not None:
            msg = f"the pipeline failed to start: {self._failure}"
            raise PipelineStartError(msg) from error

    def request_stop(self) -> None:
        """Ask :meth:`run_until_stopped` to return (safe from a signal handler)."""
        self._stop_requested.set()

    # --- hot reload (streamer/reload.py) -------------------------------------

    def _start_reloader(self) -> None:
        self._reloader = ModelReloader(
            load=lambda: load_configured(self.settings),
            current=lambda: self.model,
            install=self._install_model,
            notify=self._notify_reload,
            interval_s=self.settings.model.watch_interval_s,
            paths=lambda: tuple(getattr(self.model, "watch_paths", ())),
        )
        self._reloader.start()

    def request_reload(self) -> None:
        """Reload the model in the background (safe from a signal handler: SIGHUP)."""
        if self._reloader is not None:
            self._reloader.request()

    def reload_model(self, reason: str = "request") -> str:
        """Load the configured model again and swap it in; 'success', 'unchanged' or 'failure'."""
        if self._reloader is None:
            msg = "the pipeline is not running"
            raise RuntimeError(msg)
        return self._reloader.reload_now(reason)

    def _install_model(self, model: Model) -> None:
        # Restarted actors get self.model; running ones switch between two batches.
        # A batch prepared for the other model's spec is prepared again by the
        # model actor, so the order of these tells does not matter.
        self.model = model
        for ref in [*self.model_refs, *self.preprocessor_refs]:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(SwapModel(model))

    def _notify_reload(self, event: ModelReloaded) -> None:
        if self.metrics_ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.metrics_ref.tell(event)

    def wait_until_assigned(self, timeout_s: float) -> bool:
        """Block until the consumer got its first partitions (for tests and the demo)."""
        return self._assigned.wait(timeout_s)

    def run_until_stopped(self, poll_s: float = 0.2) -> None:
        """Block until :meth:`request_stop` or a failure the supervisor gives up on."""
        while not self._stop_requested.wait(poll_s):
            pass

    @property
    def failure(self) -> str | None:
        """Why the pipeline failed, if the supervisor gave up."""
        return self._failure

    # --- health (called from the metrics HTTP threads) ------------------------

    def _actor_refs(self) -> dict[str, pykka.ActorRef | None]:
        refs: dict[str, pykka.ActorRef | None] = {
            "consumer": self.consumer_ref,
            "producer": self.producer_ref,
            "metrics": self.metrics_ref,
        }
        refs.update({f"model-{i}": ref for i, ref in enumerate(self.model_refs)})
        refs.update({f"preprocessor-{i}": ref for i, ref in enumerate(self.preprocessor_refs)})
        return refs

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: is every actor alive? Details name the dead ones.

        An actor that died and is being restarted counts as dead until its
        replacement runs; a failure the supervisor gave up on fails for good.
        """
        dead = sorted(
            name for name, ref in self._actor_refs().items() if ref is None or not ref.is_alive()
        )
        details: dict[str, Any] = {
            "status": "ok" if not dead and self._failure is None else "failing",
            "dead_actors": dead,
            "restarts": dict(self.restarts),
        }
        if self._failure is not None:
            details["failure"] = self._failure
        return (not dead and self._failure is None, details)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: broker reached, actors alive, group joined, model loaded, not stopping."""
        alive, _ = self.health()
        consumer, producer = self.consumer_ref, self.producer_ref
        checks = {
            "actors_alive": alive,
            "broker_connected": bool(
                consumer and consumer.is_alive() and producer and producer.is_alive()
            ),
            "group_joined": self._assigned.is_set(),
            "model_loaded": self.model is not None,
            "not_stopping": not self._stop_requested.is_set(),
        }
        failing = sorted(name for name, ok in checks.items() if not ok)
        return (
            not failing,
            {
                "status": "ready" if not failing else "not ready",
                "failing": failing,
                "checks": checks,
            },
        )

    # --- status --------------------------------------------------------------

    def consumer_status(self) -> dict[str, Any]:
        """The consumer's in-flight counts, watermarks and commits."""
        assert self.consumer_ref is not None
        status: dict[str, Any] = _ask(self.consumer_ref, GetStatus(), timeout=ASK_TIMEOUT_S)
        return status

    @property
    def metrics(self) -> PipelineMetrics:
        """The pipeline's metrics (read them with ``registry.get_sample_value``)."""
        assert self.metrics_ref is not None
        metrics: PipelineMetrics = self.metrics_ref.proxy().metrics.get(timeout=ASK_TIMEOUT_S)
        return metrics

    def metrics_port(self) -> int | None:
        """The bound /metrics port (useful with metrics.port = 0)."""
        assert self.metrics_ref is not None
        port: int | None = _ask(self.metrics_ref, GetStatus(), timeout=ASK_TIMEOUT_S)["port"]
        return port

    # --- stop ----------------------------------------------------------------

    def stop(self, timeout_s: float | None = None) -> ShutdownReport:
        """Drain, flush, commit and stop every actor within the budget."""
        budget = self.settings.shutdown.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        self._stop_requested.set()
        if self._reloader is not None:
            self._reloader.stop()
        deadline = started + budget
        drained = False
        committed: dict[tuple[str, int], int] = {}
        failure = self._failure
        consumer = self.consumer_ref
        if consumer is not None and consumer.is_alive():
            try:
                _ask(consumer, StopFetching(), timeout=_left(deadline))
                drained = self._wait_for_drain(deadline)
                if drained and self.producer_ref is not None and self.producer_ref.is_alive():
                    _ask(self.producer_ref, Flush(_left(deadline)), timeout=_left(deadline) + 1)
                committed = _ask(consumer, CommitNow(), timeout=_left(deadline) + 5)
            except (pykka.ActorDeadError, pykka.Timeout, StreamerError) as exc:
                failure = failure or f"shutdown step failed: {type(exc).__name__}: {exc}"
            except Exception as exc:  # the commit itself can fail; report, never hang
                failure = failure or f"final commit failed: {type(exc).__name__}: {exc}"
        self._stop_all()
        failure = failure or self._failure
        if not drained and failure is None:
            failure = f"in-flight batches did not drain within shutdown.timeout_s={budget}"
        report = ShutdownReport(
            exit_code=0 if failure is None and drained else 1,
            drained=drained,
            committed=committed,
            failure=failure,
            seconds=time.monotonic() - started,
        )
        if report.exit_code == 0:
            log.info(
                "stopped cleanly in %.2fs; committed %s", report.seconds, _fmt_offsets(committed)
            )
        else:
            log.error(
                "stopped after a failure in %.2fs: %s; committed %s",
                report.seconds,
                failure,
                _fmt_offsets(committed),
            )
        return report

    def _wait_for_drain(self, deadline: float) -> bool:
        assert self.consumer_ref is not None
        while time.monotonic() < deadline:
            if self._failure is not None:
                return False
            status = _ask(self.consumer_ref, GetStatus(), timeout=max(0.1, _left(deadline)))
            if status["batches_in_flight"] == 0:
                return True
            time.sleep(0.02)
        return False

    def _stop_all(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._closing.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=ASK_TIMEOUT_S)
        # Flow order: nothing upstream can send to a stopped actor any more.
        for ref in [
            *self.preprocessor_refs,
            *self.model_refs,
            self.producer_ref,
            self.consumer_ref,
            self.metrics_ref,
        ]:
            if ref is None:
                continue
            try:
                ref.stop(block=True, timeout=ASK_TIMEOUT_S)
            except pykka.ActorDeadError:
                pass
            except pykka.Timeout:
                log.error("actor %s did not stop within %.0fs", ref, ASK_TIMEOUT_S)  # noqa: TRY400 - no traceback wanted


def _ask(ref: pykka.ActorRef, message: object, timeout: float) -> Any:
    """A blocking ask from the topology's own thread (never from inside an actor)."""
    return ref.ask(message, block=True, timeout=timeout)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _fmt_offsets(offsets: dict[tuple[str, int], int]) -> str:
    if not offsets:
        return "nothing"
    return ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(offsets.items()))


__all__ = ["Pipeline", "ShutdownReport"]

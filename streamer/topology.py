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

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
from prometheus_client import CollectorRegistry

from streamer.actors.consumer import Attach, ConsumerActor
from streamer.actors.metrics import MetricsActor, PipelineMetrics
from streamer.actors.model import ModelActor
from streamer.actors.preprocess import PreprocessorActor
from streamer.actors.producer import ProducerActor
from streamer.client import GroupConsumer, Producer
from streamer.core.model import Model, load_model
from streamer.errors import ConfigError, PipelineStartError, StreamerError
from streamer.messages import CommitNow, Flush, GetStatus, StopFetching
from streamer.settings import KafkaSettings, Settings

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
    """Builds the actor topology from Settings and runs it until stopped or failed."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        model: Model | None = None,
        consumer_factory: Callable[[KafkaSettings, int], GroupConsumer] = GroupConsumer,
        producer_factory: Callable[[KafkaSettings], Producer] = Producer,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model = (
            model if model is not None else load_model(settings.model.kind, settings.model.path)
        )
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._stop_requested = threading.Event()
        self._failure: str | None = None
        self._failure_error: BaseException | None = None
        self._failure_is_knock_on = False
        self._assigned = threading.Event()
        self.metrics_ref: pykka.ActorRef | None = None
        self.consumer_ref: pykka.ActorRef | None = None
        self.producer_ref: pykka.ActorRef | None = None
        self.model_refs: list[pykka.ActorRef] = []
        self.preprocessor_refs: list[pykka.ActorRef] = []
        self._stopped = False

    # --- start ---------------------------------------------------------------

    def start(self) -> None:
        """Check the topics, start every actor, and begin fetching.

        Raises:
            ConfigError: A configured topic does not exist on the broker.
            BrokerError: The broker cannot be reached.
        """
        s = self.settings
        self._check_features()
        self._check_topics()
        self.metrics_ref = MetricsActor.start(
            s.metrics,
            self.registry,
            self.model.name,
            self.model.version,
            health=self.health,
            readiness=self.readiness,
        )
        try:
            self.consumer_ref = ConsumerActor.start(
                s.kafka,
                s.batch,
                metrics=self.metrics_ref,
                on_failure=self._on_actor_failure,
                client_factory=self._consumer_factory,
                on_ready=self._assigned.set,
            )
            self.producer_ref = ProducerActor.start(
                s.kafka,
                self.consumer_ref,
                metrics=self.metrics_ref,
                on_failure=self._on_actor_failure,
                client_factory=self._producer_factory,
            )
            self.model_refs = [
                ModelActor.start(
                    self.model,
                    self.producer_ref,
                    metrics=self.metrics_ref,
                    on_failure=self._on_actor_failure,
                )
                for _ in range(s.model.workers)
            ]
            self.preprocessor_refs = [
                PreprocessorActor.start(
                    s.preprocess,
                    s.batch,
                    self.model.spec,
                    self.model_refs,
                    metrics=self.metrics_ref,
                    on_failure=self._on_actor_failure,
                )
                for _ in range(s.preprocess.workers)
            ]
            # on_start runs on each actor's thread: wait until the clients are open.
            for ref in (self.consumer_ref, self.producer_ref):
                _ask(
                    ref,
                    GetStatus(),
                    timeout=self.settings.kafka.bootstrap_timeout_s + ASK_TIMEOUT_S,
                )
            self.consumer_ref.tell(Attach(self.preprocessor_refs))
        except Exception:
            self._stop_all()
            self._raise_start_failure()
            raise
        if self._failure is not None:  # an actor died while opening its client
            self._stop_all()
            self._raise_start_failure()

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

    def _check_features(self) -> None:
        if not self.model.spec.names:
            msg = f"model error: model {self.model.name} declares no features"
            raise ConfigError(msg)

    def _check_topics(self) -> None:
        k = self.settings.kafka
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

    # --- run -----------------------------------------------------------------

    def _on_actor_failure(self, kind: str, error: BaseException) -> None:
        # A dead actor makes its upstream neighbours die on their next tell
        # (ActorDeadError): keep the root cause, not the knock-on death.
        knock_on = isinstance(error, pykka.ActorDeadError)
        if self._failure is None or (self._failure_is_knock_on and not knock_on):
            self._failure = f"{kind} actor died: {type(error).__name__}: {error}"
            self._failure_error = error
            self._failure_is_knock_on = knock_on
        self._stop_requested.set()

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

    def wait_until_assigned(self, timeout_s: float) -> bool:
        """Block until the consumer got its first partitions (for tests and the demo)."""
        return self._assigned.wait(timeout_s)

    def run_until_stopped(self, poll_s: float = 0.2) -> None:
        """Block until :meth:`request_stop` or an actor failure."""
        while not self._stop_requested.wait(poll_s):
            pass

    @property
    def failure(self) -> str | None:
        """Why the pipeline failed, if an actor died."""
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
        """Liveness: is every actor alive? Details name the dead ones."""
        dead = sorted(
            name for name, ref in self._actor_refs().items() if ref is None or not ref.is_alive()
        )
        details: dict[str, Any] = {"status": "ok" if not dead else "failing", "dead_actors": dead}
        if self._failure is not None:
            details["failure"] = self._failure
        return (not dead and self._failure is None, details)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: clients open, group joined, model loaded, not stopping."""
        alive, _ = self.health()
        checks = {
            "actors_alive": alive,
            "broker_connected": bool(
                self.consumer_ref
                and self.consumer_ref.is_alive()
                and self.producer_ref
                and self.producer_ref.is_alive()
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

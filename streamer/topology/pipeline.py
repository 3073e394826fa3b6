"""Pipeline: the one object the commands use to start, run and stop a topology."""

from __future__ import annotations

import functools
import logging
import threading
import time

import pykka
from prometheus_client import CollectorRegistry

from streamer import clients
from streamer.actors.metrics import PipelineMetrics
from streamer.actors.routing import ChallengerLink
from streamer.clients import Backend, ConsumerFactory, ProducerFactory
from streamer.core.batching import fetch_max_bytes
from streamer.core.models import Model, load_configured
from streamer.errors import ModelServerDownError, PipelineStartError, StreamerError
from streamer.messages import ConsumerStatus, GetStatus, MetricsStatus
from streamer.settings import Settings
from streamer.topology import health as probes
from streamer.topology.control import ASK_TIMEOUT_S, ask
from streamer.topology.hot_reload import HotReload, swap_into_stages, tell_quietly
from streamer.topology.monitoring import Challengers, drift_monitor
from streamer.topology.preflight import (
    changelogs,
    check_features,
    load_or_stand_in,
    register_remote_metrics,
    start_metrics,
    wait_for_broker,
    wait_for_model_server,
    wait_for_registry,
    wait_until_open,
)
from streamer.topology.specs import ChangelogReaders, Stage, Wiring, attach, new_routes
from streamer.topology.supervisor import Supervisor
from streamer.topology.terminator import ShutdownReport, Terminator

log = logging.getLogger(__name__)


class Pipeline:
    """Builds the actor topology from Settings, supervises it, and stops it in order.

    The work is done by the package's modules: what each stage is
    (:mod:`~streamer.topology.specs`), the restarts (:mod:`~streamer.topology.supervisor`),
    the shutdown (:mod:`~streamer.topology.terminator`), the probes
    (:mod:`~streamer.topology.health`), the model's hot reload
    (:mod:`~streamer.topology.hot_reload`) and model health: the drift monitor
    and the challengers (:mod:`~streamer.topology.monitoring`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        model: Model | None = None,
        backend: Backend | None = None,
        consumer_factory: ConsumerFactory | None = None,
        producer_factory: ProducerFactory | None = None,
        metrics_port_wait_s: float = 0.0,
    ) -> None:
        """Load the model (unless given) and choose the clients; nothing starts yet.

        The clients come from ``backend`` (by default the one ``kafka.client``
        names); ``consumer_factory`` and ``producer_factory`` replace its two
        halves (the tests' fakes). ``metrics_port_wait_s``: see :func:`start_metrics`.
        """
        self.settings = settings
        self._metrics_port_wait_s = metrics_port_wait_s
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server_down: ModelServerDownError | None = None
        if model is None:  # a stand-in while a remote model's server is down (see start)
            model, self._server_down = load_or_stand_in(settings)
        # A profile that does not match the model is refused here, before anything starts.
        self.monitor = None if self._server_down else drift_monitor(settings, model, self.registry)
        self._backend = backend  # None with both factories given: the tests' fakes
        if consumer_factory is None or producer_factory is None:
            chosen = self._backend = backend or clients.backend(settings.kafka.client)
            # The client's fetches are a share of the byte cap, so that what it
            # buffers stays small next to the cap (see fetch_max_bytes).
            consumer_factory = consumer_factory or functools.partial(
                chosen.consumer,
                fetch_max_bytes=fetch_max_bytes(settings.batch.max_in_flight_bytes),
            )
            producer_factory = producer_factory or chosen.producer
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._challengers = Challengers(settings, producer_factory, self.registry)
        self._stop_requested = threading.Event()
        self._assigned = threading.Event()
        # Senders hold these routes, so that a restarted actor needs no rewiring.
        self._routes = new_routes()
        self.metrics_ref: pykka.ActorRef | None = None
        self._supervisor = Supervisor(settings.supervision, on_give_up=self._stop_requested.set)
        self._terminator = Terminator(
            self._routes,
            lambda: self._supervisor.failure,
            before_stop=self._supervisor.close,
            challengers=self._challengers.refs,
        )
        self._reload = HotReload(
            model,
            load=functools.partial(load_configured, settings),
            swap=functools.partial(swap_into_stages, self._routes),
            interval_s=settings.model.watch_interval_s,
        )
        register_remote_metrics(settings, self.registry)

    @property
    def challengers(self) -> tuple[ChallengerLink, ...]:
        """The running challengers (none before :meth:`start`)."""
        return self._challengers.links

    @property
    def model(self) -> Model:
        """The model in use (a hot reload replaces it)."""
        return self._reload.model

    @property
    def consumer_ref(self) -> pykka.ActorRef | None:
        """The consumer actor (changes when it is restarted)."""
        return next(iter(self.stage_refs(Stage.CONSUMER)), None)

    @property
    def producer_ref(self) -> pykka.ActorRef | None:
        """The producer actor (changes when it is restarted)."""
        return next(iter(self.stage_refs(Stage.PRODUCER)), None)

    def stage_refs(self, stage: Stage) -> list[pykka.ActorRef]:
        """The running actors of one stage (a restart swaps them in their Route)."""
        return self._routes[stage].refs()

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts so far, by stage."""
        return self._supervisor.restarts

    @property
    def failure(self) -> str | None:
        """Why the pipeline failed, if the supervisor gave up."""
        return self._supervisor.failure

    def start(self) -> None:
        """Wait for the broker, check the topics, start every stage, and begin fetching.

        Raises:
            ConfigError: A configured topic does not exist on the broker.
            BrokerError: The broker cannot be reached (and retrying is off).
        """
        s = self.settings
        if self._server_down is None:
            check_features(self.model)
        self.metrics_ref = start_metrics(
            s,
            self.registry,
            self.model,
            probes={"/healthz": self.health, "/readyz": self.readiness},
            port_wait_s=self._metrics_port_wait_s,
        )
        try:
            if self._server_down is not None:
                self._wait_for_model_server(self._server_down)
            wait_for_broker(s, self._consumer_factory, self._stop_requested)
            wait_for_registry(s, self._stop_requested)
            readers = changelogs(s, self._backend, self.model)  # checked or created here
            self._challengers.start(self.monitor, self._routes[Stage.PRODUCER])
            self._supervisor.start_children(self._wiring(readers))
            wait_until_open((self.consumer_ref, self.producer_ref), s.kafka.bootstrap_timeout_s)
            attach(self._routes)
        except Exception:
            self._supervisor.fail_queued()
            self._abort_start()
            raise
        self._supervisor.fail_queued()
        if self.failure is not None:  # an actor died while opening its client
            self._abort_start()
        self._supervisor.run()
        self._reload.start(functools.partial(tell_quietly, self.metrics_ref))
        _log_started(s, self.model)

    def _wait_for_model_server(self, down: ModelServerDownError) -> None:
        """Load the remote model whose server was down in ``__init__``, once it answers."""
        model = wait_for_model_server(down, self.settings, self._stop_requested)
        self.monitor = drift_monitor(self.settings, model, self.registry)
        self._reload.model = model
        self._server_down = None
        self.metrics.model_info.info({"name": model.name, "version": model.version})

    def _wiring(self, readers: ChangelogReaders) -> Wiring:
        return Wiring(
            settings=self.settings,
            routes=self._routes,
            metrics=self.metrics_ref,
            model=lambda: self.model,
            consumer_factory=self._consumer_factory,
            producer_factory=self._producer_factory,
            on_assigned=self._assigned.set,
            monitor=self.monitor,
            challengers=self._challengers.links,
            changelogs=readers,
        )

    def _abort_start(self) -> None:
        """Stop what started; raise the failure of the stage that died, if one did."""
        self._challengers.stop_reloading()
        self._terminator.stop_stages(self.metrics_ref)
        error = self._supervisor.error
        if isinstance(error, StreamerError):
            raise error
        if self.failure is not None:
            msg = f"the pipeline failed to start: {self.failure}"
            raise PipelineStartError(msg) from error

    def request_stop(self) -> None:
        """Ask :meth:`run_until_stopped` to return (safe from a signal handler)."""
        self._stop_requested.set()

    def run_until_stopped(self, poll_s: float = 0.2) -> None:
        """Block until :meth:`request_stop` or a failure the supervisor gives up on."""
        while not self._stop_requested.wait(poll_s):
            pass

    def request_reload(self) -> None:
        """Reload the model and the challengers in the background (safe from a signal handler)."""
        self._reload.request()
        self._challengers.request_reload()

    def reload_model(self, reason: str = "request") -> str:
        """Load the configured model again and swap it in; 'success', 'unchanged' or 'failure'."""
        return self._reload.reload_now(reason)

    def wait_until_assigned(self, timeout_s: float) -> bool:
        """Block until the consumer got its first partitions (for tests and the demo)."""
        return self._assigned.wait(timeout_s)

    def health(self) -> probes.Probe:
        """Liveness (``/healthz``); see :func:`streamer.topology.health.liveness`."""
        return probes.liveness(self._snapshot())

    def readiness(self) -> probes.Probe:
        """Readiness (``/readyz``); see :func:`streamer.topology.health.readiness`."""
        return probes.readiness(self._snapshot())

    def _snapshot(self) -> probes.TopologySnapshot:
        refs: dict[str, pykka.ActorRef | None] = {
            "consumer": self.consumer_ref,
            "producer": self.producer_ref,
            "metrics": self.metrics_ref,
        }
        for stage in (Stage.MODEL, Stage.PREPROCESSOR):  # named model-0, preprocessor-0...
            refs |= {f"{stage}-{i}": ref for i, ref in enumerate(self.stage_refs(stage))}
        return probes.TopologySnapshot(
            alive={name: ref is not None and ref.is_alive() for name, ref in refs.items()},
            restarts=dict(self.restarts),
            failure=self.failure,
            assigned=self._assigned.is_set(),
            model_loaded=self.model.loaded,
            stopping=self._stop_requested.is_set(),
            # A remote model's server is down: the pipeline waits for it (nothing is lost).
            model_reachable=self.model.reachable,
        )

    def consumer_status(self) -> ConsumerStatus:
        """The consumer's in-flight counts, watermarks and commits."""
        assert self.consumer_ref is not None
        status: ConsumerStatus = ask(self.consumer_ref, GetStatus(), timeout=ASK_TIMEOUT_S)
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
        status: MetricsStatus = ask(self.metrics_ref, GetStatus(), timeout=ASK_TIMEOUT_S)
        return status.port

    def stop(self, timeout_s: float | None = None) -> ShutdownReport:
        """Drain, flush, commit and stop every actor within the budget (see the terminator)."""
        budget = self.settings.shutdown.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        self._stop_requested.set()
        self._reload.stop()
        self._challengers.stop_reloading()
        return self._terminator.shutdown(budget, self.metrics_ref, started)


def _log_started(s: Settings, model: Model) -> None:
    log.info(
        "pipeline started: %s -> %s (dead letters: %s), %d preprocessors, %d models, model %s %s",
        s.kafka.input_topic,
        s.kafka.output_topic,
        s.kafka.dead_letter_topic_name,
        s.preprocess.workers,
        s.model.workers,
        model.name,
        model.version,
    )

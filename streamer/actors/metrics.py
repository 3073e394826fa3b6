"""MetricsActor: owns the Prometheus registry and serves /metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from streamer.actors.base import PipelineActor
from streamer.core.features import REASONS
from streamer.messages import (
    ActorFailed,
    BatchDelivered,
    ConsumerProgress,
    GetStatus,
    RecordsConsumed,
)
from streamer.settings import MetricsSettings

log = logging.getLogger(__name__)

# () -> (ok, details): details is a JSON-ready dict that says what is wrong.
HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]

ACTOR_KINDS = ("consumer", "preprocessor", "model", "producer", "metrics")
STAGES = ("preprocess", "model", "produce")
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class PipelineMetrics:
    """Every metric of the pipeline, registered on an injected registry.

    Labelled series are created up front so that each one exists at 0.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records_consumed = Counter(
            "streamer_records_consumed",
            "Records taken from the input topic and dispatched.",
            registry=registry,
        )
        self.records_produced = Counter(
            "streamer_records_produced",
            "Predictions acknowledged by the broker.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "streamer_dead_letters",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.records_dropped = Counter(
            "streamer_records_dropped",
            "Records skipped by preprocess.missing='drop'.",
            registry=registry,
        )
        self.batches = Counter(
            "streamer_batches", "Micro-batches fully delivered.", registry=registry
        )
        self.actor_failures = Counter(
            "streamer_actor_failures",
            "Actors that died with an exception, by kind.",
            ["actor"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "streamer_batch_size_records",
            "Records per delivered micro-batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_latency = Histogram(
            "streamer_batch_latency_seconds",
            "From dispatch by the consumer to the last broker ack.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "streamer_stage_duration_seconds",
            "Time spent on one batch in each stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end = Histogram(
            "streamer_end_to_end_latency_seconds",
            "From the oldest record's Kafka timestamp in a batch to its output's broker ack.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight_batches = Gauge(
            "streamer_in_flight_batches",
            "Batches between dispatch and commit watermark.",
            registry=registry,
        )
        self.in_flight_records = Gauge(
            "streamer_in_flight_records",
            "Records between dispatch and commit watermark.",
            registry=registry,
        )
        self.committed_offset = Gauge(
            "streamer_committed_offset",
            "Last committed offset, per partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "streamer_consumer_lag",
            "Records in the partition not yet delivered.",
            ["topic", "partition"],
            registry=registry,
        )
        self.paused_partitions = Gauge(
            "streamer_paused_partitions", "Partitions paused by backpressure.", registry=registry
        )
        self.model_info = Info("streamer_model", "The model in use.", registry=registry)
        for reason in REASONS:
            self.dead_letters.labels(reason=reason)
        for actor in ACTOR_KINDS:
            self.actor_failures.labels(actor=actor)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)

    def apply(self, event: object) -> None:
        """Update the metrics from one pipeline event."""
        match event:
            case RecordsConsumed(count=count):
                self.records_consumed.inc(count)
            case BatchDelivered() as d:
                self.records_produced.inc(d.produced)
                for reason, count in d.dead_letters.items():
                    self.dead_letters.labels(reason=reason).inc(count)
                if d.dropped:
                    self.records_dropped.inc(d.dropped)
                self.batches.inc()
                self.batch_size.observe(d.size)
                self.batch_latency.observe(d.batch_seconds)
                self.stage_duration.labels(stage="preprocess").observe(d.preprocess_seconds)
                self.stage_duration.labels(stage="model").observe(d.model_seconds)
                self.stage_duration.labels(stage="produce").observe(d.produce_seconds)
                for seconds in d.end_to_end_seconds:
                    self.end_to_end.observe(seconds)
            case ConsumerProgress() as p:
                self.in_flight_batches.set(p.in_flight_batches)
                self.in_flight_records.set(p.in_flight_records)
                self.paused_partitions.set(p.paused_partitions)
                for (topic, partition), offset in p.committed.items():
                    self.committed_offset.labels(topic=topic, partition=str(partition)).set(offset)
                for (topic, partition), lag in p.lag.items():
                    self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
            case ActorFailed(actor=actor):
                self.actor_failures.labels(actor=actor).inc()


class MetricsActor(PipelineActor):
    """Applies pipeline events to :class:`PipelineMetrics` and serves them over HTTP."""

    kind = "metrics"

    def __init__(
        self,
        settings: MetricsSettings,
        registry: CollectorRegistry,
        model_name: str = "",
        model_version: str = "",
        health: HealthProbe | None = None,
        readiness: HealthProbe | None = None,
    ) -> None:
        super().__init__(None, None)
        self._settings = settings
        # Called from the HTTP server's threads, never from this actor's thread.
        self.health = health
        self.readiness = readiness
        self.metrics = PipelineMetrics(registry)
        self.metrics.model_info.info({"name": model_name, "version": model_version})
        self._server: Any = None
        self.port: int | None = None

    def open(self) -> None:
        """Start the HTTP exposition server, if enabled."""
        if self._settings.enabled:
            self._server, _thread = start_http_server(
                self._settings.port, addr=self._settings.host, registry=self.metrics.registry
            )
            self.port = self._server.server_address[1]
            log.info("metrics at http://%s:%d/metrics", self._settings.host, self.port)

    def release(self) -> None:
        """Stop the HTTP server."""
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()

    def receive(self, message: object) -> Any:
        """Apply events; answer GetStatus with the bound port."""
        if isinstance(message, GetStatus):
            return {"port": self.port}
        self.metrics.apply(message)
        return None

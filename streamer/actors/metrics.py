"""MetricsActor: owns the Prometheus registry and serves /metrics, /healthz and /readyz."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from streamer.actors.base import PipelineActor
from streamer.actors.routing import ChallengerLink
from streamer.core.dead_letters import REASONS
from streamer.core.labels.export import Family, LiveQuality
from streamer.core.monitoring.agreement import DELTA_BUCKETS
from streamer.core.monitoring.agreement import LATENCY_BUCKETS as CHALLENGER_LATENCY_BUCKETS
from streamer.core.monitoring.drift import DriftMonitor
from streamer.core.records import TP
from streamer.httpserver import EndpointServer, HealthProbe, bind_endpoints
from streamer.messages import (
    ActorFailed,
    ActorRestarted,
    BatchDelivered,
    BreakerTripped,
    ConsumerProgress,
    GetStatus,
    LabelsJoined,
    LabelsRevoked,
    MetricsStatus,
    ModelReloaded,
    RecordsConsumed,
    StateProgress,
)
from streamer.settings import LabelsSettings, MetricsSettings

log = logging.getLogger(__name__)

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
# A replayed backlog is minutes or hours old when it is scored: keep those apart from +Inf.
END_TO_END_BUCKETS = (*LATENCY_BUCKETS, 120.0, 300.0, 600.0, 1800.0, 3600.0)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class BulkHistogram:
    """A histogram collector that bins its observations in bulk, with numpy.

    ``prometheus_client.Histogram`` has no bulk observe, and one ``observe`` per
    record costs about 2 us: 2 ms per 1000-record batch, on the metrics actor's
    thread. Here ``observe_many`` bins a batch in about 0.1 ms, and ``observe``
    keeps single values (one per micro-batch: its size, its latency) until a scrape
    reads the histogram or ``bin_every`` wait: at a few thousand records/s, micro-
    batches of tens of records, a ``Histogram.observe`` per batch and histogram was a
    measurable share of the daemon's CPU (docs/performance.md). The exposition is a
    ``Histogram``'s (``_bucket``, ``_count``, ``_sum``; no ``_created``), with one
    series per value of ``label`` if it has one (a fixed set, ``series``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        *,
        label: str = "",
        series: Sequence[str] = ("",),
        bin_every: int = 10_000,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        if np.any(np.diff(self._bounds) <= 0):
            msg = f"{name}: buckets must be strictly increasing, got {list(buckets)}"
            raise ValueError(msg)
        self._labels = [floatToGoString(b) for b in buckets] + ["+Inf"]
        self._label = label
        # One slot per finite bucket, plus +Inf; not cumulative until collect().
        self._counts = {s: np.zeros(len(buckets) + 1, dtype=np.int64) for s in series}
        self._sums = dict.fromkeys(series, 0.0)
        self._lock = threading.Lock()
        self._waiting: dict[str, list[float]] = {s: [] for s in series}
        self._waiting_count = 0
        self._bin_every = bin_every
        registry.register(self)

    def observe_many(self, values: np.ndarray, series: str = "") -> None:
        """Add every value of a 1-D array (seconds, records, ...) to the histogram."""
        if values.size == 0:
            return
        # side="left": a value equal to a bound counts in that bucket (le is <=).
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=len(self._bounds) + 1)
        total = float(values.sum())
        with self._lock:
            self._counts[series] += counts
            self._sums[series] += total

    def observe(self, value: float, series: str = "") -> None:
        """Add one value; it is binned at the next scrape, or with ``bin_every`` others."""
        with self._lock:
            self._waiting[series].append(value)
            due = self._kept(1)
        if due:
            self.bin_waiting()

    def _kept(self, values: int) -> bool:
        """Count ``values`` more waiting (under the lock); True when they are to be binned."""
        self._waiting_count += values
        return self._waiting_count >= self._bin_every

    def bin_waiting(self) -> None:
        """Bin every value kept."""
        with self._lock:
            taken = self._take_waiting()
            self._waiting_count = 0
        self._bin(taken)

    def _take_waiting(self) -> Any:
        """What waits, taken away (under the lock)."""
        waiting = self._waiting
        self._waiting = {s: [] for s in waiting}
        return waiting

    def _bin(self, taken: Any) -> None:
        """Bin what :meth:`_take_waiting` took."""
        for series, values in taken.items():
            if values:
                self.observe_many(np.asarray(values, dtype=np.float64), series)

    def collect(self) -> Iterator[Metric]:
        """Yield the histogram family (called by the registry at each scrape)."""
        self.bin_waiting()
        with self._lock:
            cumulative = {s: np.cumsum(c).tolist() for s, c in self._counts.items()}
            sums = dict(self._sums)
        if not self._label:
            yield HistogramMetricFamily(
                self.name,
                self.documentation,
                buckets=list(zip(self._labels, cumulative[""], strict=True)),
                sum_value=sums[""],
            )
            return
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self._label])
        for series, counts in cumulative.items():
            family.add_metric(
                [series], list(zip(self._labels, counts, strict=True)), sum_value=sums[series]
            )
        yield family

    def describe(self) -> Iterator[Metric]:
        """The family without samples, so the registry can check names at registration."""
        yield HistogramMetricFamily(self.name, self.documentation)


class RecordAges(BulkHistogram):
    """Each record's age when its batch was acknowledged, binned at a scrape.

    A batch's Kafka timestamps are kept as they came (the source batch's own list)
    until a scrape reads the histogram or ``bin_every`` records wait: numpy's cost
    per call (about 25 us a batch for the ten calls of a binning) is then paid once
    per thousands of records, not per micro-batch, which at a few thousand records/s
    is tens of records. Measured at 2,000 records/s on confluent: this histogram was
    17% of the daemon's GIL samples, binned per batch (docs/performance.md).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        bin_every: int = 50_000,
    ) -> None:
        super().__init__(name, documentation, buckets, registry, bin_every=bin_every)
        self._batches: list[tuple[float, Sequence[int]]] = []

    def add_batch(self, acked_at: float, timestamps_ms: Sequence[int]) -> None:
        """Keep a batch's timestamps (ms, -1: none) acknowledged at ``acked_at`` (s)."""
        if not timestamps_ms:
            return
        with self._lock:
            self._batches.append((acked_at, timestamps_ms))
            due = self._kept(len(timestamps_ms))
        if due:
            self.bin_waiting()

    def _take_waiting(self) -> Any:
        batches, self._batches = self._batches, []
        return super()._take_waiting(), batches

    def _bin(self, taken: Any) -> None:
        observed, waiting = taken
        super()._bin(observed)
        if not waiting:
            return
        lengths = [len(t) for _, t in waiting]
        stamps = np.fromiter(
            itertools.chain.from_iterable(t for _, t in waiting),
            dtype=np.float64,
            count=sum(lengths),
        )
        acked = np.repeat(
            np.fromiter((a for a, _ in waiting), dtype=np.float64, count=len(waiting)), lengths
        )
        stamped = stamps > 0  # -1: the record carries no timestamp
        ages = acked[stamped] - stamps[stamped] / 1000.0
        self.observe_many(np.maximum(ages, 0.0))


class PipelineMetrics:
    """Every metric of the pipeline, registered on an injected registry.

    Labelled series are created up front so that each one exists at 0. The
    per-partition gauges follow the consumer's assignment: a partition that is
    revoked loses its series, so that two replicas never report one partition.
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
        self.dead_letters_truncated = Counter(
            "streamer_dead_letters_truncated",
            "Dead letters whose value (or key) was cut to fit kafka.max_request_bytes.",
            registry=registry,
        )
        self.records_unanswerable = Counter(
            "streamer_records_unanswerable",
            "Records committed past with no answer: even their headers-only dead letter was "
            "refused (supervision.on_unanswerable = 'skip').",
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
        self.breaker_trips = Counter(
            "streamer_dead_letter_breaker_trips",
            "Stops by the dead-letter breaker, by the dominant reason and field of the window.",
            ["reason", "feature"],
            registry=registry,
        )
        self.actor_restarts = Counter(
            "streamer_actor_restarts",
            "Dead actors replaced by the supervisor, by kind.",
            ["actor"],
            registry=registry,
        )
        # One value per micro-batch each: binned in bulk (BulkHistogram.observe).
        self.batch_size = BulkHistogram(
            "streamer_batch_size_records",
            "Records per delivered micro-batch.",
            BATCH_SIZE_BUCKETS,
            registry,
        )
        self.batch_latency = BulkHistogram(
            "streamer_batch_latency_seconds",
            "From dispatch by the consumer to the last broker ack.",
            LATENCY_BUCKETS,
            registry,
        )
        self.stage_duration = BulkHistogram(
            "streamer_stage_duration_seconds",
            "Time spent on one batch in each stage.",
            LATENCY_BUCKETS,
            registry,
            label="stage",
            series=STAGES,
        )
        self.end_to_end = RecordAges(
            "streamer_end_to_end_latency_seconds",
            "From each record's Kafka timestamp to the broker ack of its batch's outputs.",
            END_TO_END_BUCKETS,
            registry,
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
        self.in_flight_bytes = Gauge(
            "streamer_in_flight_bytes",
            "Bytes of record keys and values between dispatch and commit watermark.",
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
        self.model_reloads = Counter(
            "streamer_model_reloads",
            "Hot reloads of the model, by result (success, unchanged, failure).",
            ["result"],
            registry=registry,
        )
        for result in ("success", "unchanged", "failure"):
            self.model_reloads.labels(result=result)
        self.process = ProcessCollector(registry=registry)
        for actor in ACTOR_KINDS:
            self.actor_failures.labels(actor=actor)
            self.actor_restarts.labels(actor=actor)
        # The labelled children, looked up once: labels() costs a lock and a dict
        # lookup, several times per delivered batch.
        self._dead_letter_child = {
            reason: self.dead_letters.labels(reason=reason) for reason in REASONS
        }
        self._lag_series: set[tuple[str, str]] = set()
        self._committed_series: set[tuple[str, str]] = set()
        self.state = StateMetrics(registry)
        self.quality: LiveQuality | None = None
        self._unexpected_labels = False

    def watch_labels(self, quality: LiveQuality) -> None:
        """Export the live quality metrics of ``quality``, which the label messages feed."""
        self.quality = quality
        self.registry.register(QualityCollector(quality))

    def apply(self, event: object) -> None:
        """Update the metrics from one pipeline event."""
        match event:
            case RecordsConsumed(count=count):
                self.records_consumed.inc(count)
            case BatchDelivered() as d:
                self._delivered(d)
            case StateProgress() as p:
                self.state.apply(p)
            case ConsumerProgress() as p:
                self.in_flight_batches.set(p.in_flight_batches)
                self.in_flight_records.set(p.in_flight_records)
                self.in_flight_bytes.set(p.in_flight_bytes)
                self.paused_partitions.set(p.paused_partitions)
                self._committed_series = _set_per_partition(
                    self.committed_offset, self._committed_series, p.committed
                )
                self._lag_series = _set_per_partition(self.consumer_lag, self._lag_series, p.lag)
            case ActorFailed(actor=actor):
                self.actor_failures.labels(actor=actor).inc()
            case BreakerTripped(reason=reason, feature=feature):
                self.breaker_trips.labels(reason=reason, feature=feature).inc()
            case ActorRestarted(actor=actor):
                self.actor_restarts.labels(actor=actor).inc()
            case ModelReloaded(result=result, name=name, version=version):
                self.model_reloads.labels(result=result).inc()
                if result == "success":
                    self.model_info.info({"name": name, "version": version})
            case LabelsJoined() | LabelsRevoked():
                self._apply_labels(event)

    def _apply_labels(self, event: LabelsJoined | LabelsRevoked) -> None:
        if self.quality is None:
            if not self._unexpected_labels:
                self._unexpected_labels = True
                log.warning(
                    "label messages arrive but the metrics actor was started without "
                    "[labels] settings: no quality metric is exported"
                )
        elif isinstance(event, LabelsJoined):
            self.quality.joined(
                event.partition, event.joined, event.counts, event.held, reset=event.reset
            )
        else:
            self.quality.revoked(event.partitions)

    def _delivered(self, d: BatchDelivered) -> None:
        self.records_produced.inc(d.produced)
        for reason, count in d.dead_letters.items():
            child = self._dead_letter_child.get(reason)
            (child or self.dead_letters.labels(reason=reason)).inc(count)
        if d.dropped:
            self.records_dropped.inc(d.dropped)
        if d.truncated:
            self.dead_letters_truncated.inc(d.truncated)
        if d.unanswerable:
            self.records_unanswerable.inc(d.unanswerable)
        if d.changelog_records:
            self.state.changelog_records.inc(d.changelog_records)
        if not d.scored:  # a batch of labels: not a batch of the input
            return
        self.batches.inc()
        self.batch_size.observe(d.size)
        self.batch_latency.observe(d.batch_seconds)
        stages = self.stage_duration
        stages.observe(d.preprocess_seconds, "preprocess")
        stages.observe(d.model_seconds, "model")
        stages.observe(d.produce_seconds, "produce")
        self.end_to_end.add_batch(d.acked_at, d.timestamps_ms)


class StateMetrics:
    """The declared [[state.features]]: keys, bytes, restores and changelog writes.

    The per-partition series follow the state's open partitions (label
    ``partition``), like the consumer's per-partition gauges.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.keys = Gauge(
            "streamer_state_keys",
            "Keys in the partition's state.",
            ["partition"],
            registry=registry,
        )
        self.nbytes = Gauge(
            "streamer_state_bytes",
            "The partition's state store, approximate bytes on disk (0 in memory).",
            ["partition"],
            registry=registry,
        )
        self.restore_records = Counter(
            "streamer_state_restore_records",
            "Changelog records restored into the partition's state.",
            ["partition"],
            registry=registry,
        )
        self.restore_seconds = Gauge(
            "streamer_state_restore_seconds",
            "Duration of the partition's last restore (planning and reading its changelog).",
            ["partition"],
            registry=registry,
        )
        self.restoring = Gauge(
            "streamer_state_restoring",
            "1 while the partition's state restores from its changelog, else 0.",
            ["partition"],
            registry=registry,
        )
        self.changelog_records = Counter(
            "streamer_state_changelog_records",
            "State changelog records acknowledged by the broker.",
            registry=registry,
        )
        self._series: set[str] = set()

    def apply(self, p: StateProgress) -> None:
        """Set every open partition's series; remove those of partitions that left."""
        now: set[str] = set()
        for (_topic, partition), restoring in p.restoring.items():
            label = str(partition)
            now.add(label)
            self.restoring.labels(label).set(1 if restoring else 0)
        for (_topic, partition), keys in p.keys.items():
            label = str(partition)
            now.add(label)
            self.keys.labels(label).set(keys)
            self.nbytes.labels(label).set(p.nbytes.get((_topic, partition), 0))
            self.restore_seconds.labels(label).set(p.restore_seconds.get((_topic, partition), 0))
        for (_topic, partition), count in p.restored.items():
            self.restore_records.labels(str(partition)).inc(count)
        for label in self._series - now:
            for gauge in (self.keys, self.nbytes, self.restore_seconds, self.restoring):
                with contextlib.suppress(KeyError):
                    gauge.remove(label)
        self._series = now


def _set_per_partition(
    gauge: Gauge, before: set[tuple[str, str]], values: dict[TP, int]
) -> set[tuple[str, str]]:
    """Set one series per partition and remove the series of partitions no longer listed."""
    now = set()
    for (topic, partition), value in values.items():
        labels = (topic, str(partition))
        gauge.labels(*labels).set(value)
        now.add(labels)
    for labels in before - now:
        gauge.remove(*labels)
    return now


class MetricsActor(PipelineActor):
    """Applies pipeline events to :class:`PipelineMetrics` and serves them over HTTP.

    The HTTP server runs on its own threads: ``/metrics`` reads the registry
    (whose metrics are thread-safe), and ``/healthz`` and ``/readyz`` call the
    ``health`` and ``readiness`` probes, which answer ``(ok, details)``: 200 when
    ok, 503 otherwise, with ``details`` as the JSON body.
    """

    kind = "metrics"

    def __init__(
        self,
        settings: MetricsSettings,
        registry: CollectorRegistry,
        model_name: str = "",
        model_version: str = "",
        health: HealthProbe | None = None,
        readiness: HealthProbe | None = None,
        server: EndpointServer | None = None,
        labels: LabelsSettings | None = None,
        threshold: float = 0.5,
    ) -> None:
        """Keep the settings; ``server`` is the endpoints' socket, if already bound.

        The pipeline binds it in its preflight, so that a port in use stops the
        start with exit 2; without it, ``open`` binds. With ``labels`` naming a
        topic, the actor keeps the label windows of :class:`LabelsJoined` and
        exports the quality metrics (decided at ``threshold``, ``monitoring.threshold``).
        """
        super().__init__(None, None)
        self._settings = settings
        self._bound = server
        # Called from the HTTP server's threads, never from this actor's thread.
        self.health = health
        self.readiness = readiness
        self.metrics = PipelineMetrics(registry)
        self.metrics.model_info.info({"name": model_name, "version": model_version})
        if labels is not None and labels.topic:
            self.metrics.watch_labels(live_quality(labels, threshold))
        self._server: EndpointServer | None = None
        self.port: int | None = None

    def open(self) -> None:
        """Start the HTTP server, if enabled."""
        if not self._settings.enabled:
            return
        server = self._bound or bind_endpoints(
            self._settings.host,
            self._settings.port,
            self.metrics.registry,
            {"/healthz": self.health, "/readyz": self.readiness},
        )
        self._server = server.start("metrics-http")
        self.port = server.port
        log.info(
            "metrics at http://%s:%d/metrics (also /healthz and /readyz)",
            self._settings.host,
            self.port,
        )

    def release(self) -> None:
        """Stop the HTTP server and wait for its thread."""
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()

    def receive(self, message: object) -> Any:
        """Apply events; answer GetStatus with the bound port."""
        if isinstance(message, GetStatus):
            return MetricsStatus(self.port)
        self.metrics.apply(message)
        return None


def live_quality(labels: LabelsSettings, threshold: float) -> LiveQuality:
    """The label windows ``[labels]`` describes, decided at ``threshold``."""
    return LiveQuality(
        task=labels.task,
        threshold=threshold,
        buckets=labels.calibration_buckets,
        window_records=labels.window_records,
        window_s=labels.window_s,
    )


class QualityCollector(Collector):
    """The live quality families of a :class:`LiveQuality`, read at each scrape.

    The report behind them is computed only when a label message changed a
    window since the last scrape. Label sets are bounded: partitions of this
    member, model versions of the window, a fixed set of metrics and buckets.
    """

    def __init__(self, quality: LiveQuality) -> None:
        self._quality = quality

    def collect(self) -> Iterator[Metric]:
        """Yield every quality family."""
        for family in self._quality.families():
            yield _prometheus_family(family)

    def describe(self) -> Iterator[Metric]:
        """No up-front description: the families are built at each scrape."""
        return iter(())


def _prometheus_family(family: Family) -> Metric:
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.documentation, labels=family.labels)
    else:
        metric = GaugeMetricFamily(family.name, family.documentation, labels=family.labels)
    for values, value in family.samples:
        metric.add_metric(list(values), value)
    return metric


class DriftCollector(Collector):
    """The drift gauges of a :class:`~streamer.core.monitoring.DriftMonitor`, read at a scrape.

    The label sets are bounded by construction: one series per feature of the
    profile (the model's features) and per reference score bin, each with the
    ``model_version`` of the model that scored the window's last batch. A value
    that cannot be judged yet (an empty window) is left out, not exposed as NaN.
    """

    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """Yield the model-health families."""
        snap = self._monitor.snapshot(time.monotonic())
        version = snap.model_version
        per_feature = (
            (
                "streamer_feature_psi",
                "PSI of each feature over the window, against the profile.",
                snap.feature_psi,
            ),
            (
                "streamer_feature_missing_ratio",
                "Share of the window's records dead-lettered for a missing or invalid feature.",
                snap.missing_ratio,
            ),
            (
                "streamer_feature_out_of_range_ratio",
                "Share of each feature's window values outside the profile's min and max.",
                snap.out_of_range_ratio,
            ),
        )
        for name, doc, values in per_feature:
            family = GaugeMetricFamily(name, doc, labels=["feature", "model_version"])
            for feature, value in zip(snap.features, values.tolist(), strict=True):
                if not math.isnan(value):
                    family.add_metric([feature, version], value)
            yield family
        score_psi = GaugeMetricFamily(
            "streamer_score_psi",
            "PSI of the score over the window, against the profile.",
            labels=["model_version"],
        )
        if not math.isnan(snap.score_psi):
            score_psi.add_metric([version], snap.score_psi)
        yield score_psi
        bounds = [floatToGoString(b) for b in snap.score_edges[1:-1]] + ["+Inf"]
        live = GaugeMetricFamily(
            "streamer_score_bucket",
            "Scores in the window at or below each reference bin edge (cumulative, like le).",
            labels=["le", "model_version"],
        )
        reference = GaugeMetricFamily(
            "streamer_score_reference_ratio",
            "Share of the profile's scores at or below each reference bin edge (cumulative).",
            labels=["le"],
        )
        cumulative = np.cumsum(snap.score_counts).tolist()
        expected = np.cumsum(snap.score_reference).tolist()
        for bound, count, share in zip(bounds, cumulative, expected, strict=True):
            live.add_metric([bound, version], count)
            reference.add_metric([bound], share)
        yield live
        yield reference
        window = GaugeMetricFamily(
            "streamer_drift_window_records",
            "Records in the drift window.",
            labels=["model_version"],
        )
        window.add_metric([version], snap.records)
        yield window

    def describe(self) -> Iterator[Metric]:
        """No up-front description: the families are built at each scrape."""
        return iter(())


class ChallengerCollector(Collector):
    """Each challenger's batches, agreement with the champion and latency, read at each scrape.

    Labels: ``challenger`` (the configured names, a fixed set) and ``version``.
    """

    def __init__(self, links: Sequence[ChallengerLink]) -> None:
        self._links = tuple(links)

    def collect(self) -> Iterator[Metric]:
        """Yield the challenger families."""
        labels = ["challenger", "version"]
        batches = CounterMetricFamily(
            "streamer_challenger_batches",
            "Batches offered to each challenger, by result: scored, skipped (too many were "
            "waiting for it) or failed (it raised).",
            labels=[*labels, "result"],
        )
        compared = CounterMetricFamily(
            "streamer_challenger_compared_records",
            "Records both the champion and the challenger scored.",
            labels=labels,
        )
        flipped = CounterMetricFamily(
            "streamer_challenger_flips",
            "Records whose decision (score >= monitoring.threshold) differs between the champion "
            "and the challenger.",
            labels=labels,
        )
        delta = HistogramMetricFamily(
            "streamer_challenger_score_delta",
            "Challenger score minus champion score, per record.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "streamer_challenger_latency_seconds",
            "Time the challenger took to score one batch.",
            labels=labels,
        )
        score_psi = GaugeMetricFamily(
            "streamer_challenger_score_psi",
            "PSI of the challenger's scores against the champion's, over the window.",
            labels=labels,
        )
        for link in self._links:
            snap = link.agreement.snapshot()
            values = [link.name, link.version]
            for result, count in (
                ("scored", snap.scored),
                ("skipped", snap.skipped),
                ("failed", snap.failed),
            ):
                batches.add_metric([*values, result], count)
            compared.add_metric(values, snap.compared)
            flipped.add_metric(values, snap.flips)
            _add_signed_histogram(
                delta, labels, values, _buckets(DELTA_BUCKETS, snap.delta_counts), snap.delta_sum
            )
            latency.add_metric(
                values,
                _buckets(CHALLENGER_LATENCY_BUCKETS, snap.latency_counts),
                sum_value=snap.latency_sum,
            )
            if not math.isnan(snap.score_psi):
                score_psi.add_metric(values, snap.score_psi)
        yield from (batches, compared, flipped, delta, latency, score_psi)

    def describe(self) -> Iterator[Metric]:
        """No up-front description: the families are built at each scrape."""
        return iter(())


def _add_signed_histogram(
    family: HistogramMetricFamily,
    names: Sequence[str],
    values: Sequence[str],
    buckets: list[tuple[str, float]],
    sum_value: float,
) -> None:
    """Add a histogram whose buckets go below 0, with its ``_count`` and ``_sum``.

    ``HistogramMetricFamily.add_metric`` leaves both out when a bucket bound is
    negative (OpenMetrics reads ``_sum`` as a counter, and a sum of negative
    deltas can fall). The mean delta, ``rate(_sum) / rate(_count)``, needs them.
    /metrics is served in text format 0.0.4 (:mod:`streamer.httpserver`), whose
    parsers take a negative ``_sum`` as it is.
    """
    family.add_metric(values, buckets, sum_value=None)
    labels = dict(zip(names, values, strict=True))
    family.samples.append(Sample(f"{family.name}_count", labels, buckets[-1][1]))
    family.samples.append(Sample(f"{family.name}_sum", labels, sum_value))


def _buckets(bounds: Sequence[float], counts: np.ndarray) -> list[tuple[str, float]]:
    labels = [floatToGoString(b) for b in bounds] + ["+Inf"]
    return list(zip(labels, np.cumsum(counts).tolist(), strict=True))

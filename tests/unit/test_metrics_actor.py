"""The metrics actor: an injected registry, pre-created series, and its HTTP endpoints."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pykka
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from streamer.actors.metrics import (
    ACTOR_KINDS,
    END_TO_END_BUCKETS,
    LATENCY_BUCKETS,
    STAGES,
    BulkHistogram,
    HealthProbe,
    MetricsActor,
    PipelineMetrics,
    RecordAges,
)
from streamer.core.dead_letters import REASONS
from streamer.messages import (
    ActorFailed,
    ActorRestarted,
    BatchDelivered,
    ConsumerProgress,
    GetStatus,
    MetricsStatus,
    RecordsConsumed,
)
from streamer.settings import MetricsSettings

ASK_S = 5.0
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def delivered(**overrides: Any) -> BatchDelivered:
    fields: dict[str, Any] = {
        "produced": 95,
        "dead_letters": {"invalid_json": 3, "model_error": 1},
        "dropped": 1,
        "size": 100,
        "batch_seconds": 0.02,
        "preprocess_seconds": 0.001,
        "model_seconds": 0.002,
        "produce_seconds": 0.003,
    }
    fields.update(overrides)
    return BatchDelivered(**fields)


def progress(
    committed: dict[tuple[str, int], int], lag: dict[tuple[str, int], int]
) -> ConsumerProgress:
    return ConsumerProgress(
        in_flight_batches=3,
        in_flight_records=250,
        committed=committed,
        lag=lag,
        paused_partitions=2,
    )


class TestPipelineMetrics:
    def test_every_labelled_series_exists_at_zero_on_a_fresh_registry(self) -> None:
        registry = CollectorRegistry()
        PipelineMetrics(registry)
        value = registry.get_sample_value
        for reason in REASONS:
            assert value("streamer_dead_letters_total", {"reason": reason}) == 0.0
        for actor in ACTOR_KINDS:
            assert value("streamer_actor_failures_total", {"actor": actor}) == 0.0
            assert value("streamer_actor_restarts_total", {"actor": actor}) == 0.0
        for stage in STAGES:
            assert value("streamer_stage_duration_seconds_count", {"stage": stage}) == 0.0
        assert value("streamer_records_consumed_total") == 0.0
        assert value("streamer_batches_total") == 0.0
        assert value("streamer_end_to_end_latency_seconds_count") == 0.0
        assert value("streamer_end_to_end_latency_seconds_bucket", {"le": "+Inf"}) == 0.0

    def test_restarts_are_precreated_for_every_actor_kind(self) -> None:
        assert set(ACTOR_KINDS) == {"consumer", "preprocessor", "model", "producer", "metrics"}

    def test_the_process_collector_is_on_the_injected_registry_and_not_the_global_one(
        self,
    ) -> None:
        registry = CollectorRegistry()
        PipelineMetrics(registry)
        assert registry.get_sample_value("process_start_time_seconds") is not None
        assert registry.get_sample_value("process_resident_memory_bytes") is not None
        assert REGISTRY.get_sample_value("streamer_records_consumed_total") is None

    def test_events_update_the_metrics_exactly(self) -> None:
        registry = CollectorRegistry()
        metrics = PipelineMetrics(registry)
        metrics.apply(RecordsConsumed(100))
        metrics.apply(RecordsConsumed(50))
        metrics.apply(delivered(timestamps_ms=[1_000_000, 1_000_500], acked_at=1_001.0))
        metrics.apply(progress({("events", 1): 1200}, {("events", 1): 42}))
        metrics.apply(ActorFailed(actor="model", error="RuntimeError: x"))
        metrics.apply(ActorRestarted(actor="model"))
        value = registry.get_sample_value
        assert value("streamer_records_consumed_total") == 150.0
        assert value("streamer_records_produced_total") == 95.0
        assert value("streamer_dead_letters_total", {"reason": "invalid_json"}) == 3.0
        assert value("streamer_dead_letters_total", {"reason": "model_error"}) == 1.0
        assert value("streamer_records_dropped_total") == 1.0
        assert value("streamer_batches_total") == 1.0
        assert value("streamer_batch_size_records_bucket", {"le": "100.0"}) == 1.0
        assert value("streamer_batch_size_records_bucket", {"le": "50.0"}) == 0.0
        assert value("streamer_batch_latency_seconds_sum") == 0.02
        assert value("streamer_stage_duration_seconds_sum", {"stage": "model"}) == 0.002
        assert value("streamer_in_flight_batches") == 3.0
        assert value("streamer_in_flight_records") == 250.0
        assert value("streamer_committed_offset", {"topic": "events", "partition": "1"}) == 1200.0
        assert value("streamer_consumer_lag", {"topic": "events", "partition": "1"}) == 42.0
        assert value("streamer_paused_partitions") == 2.0
        assert value("streamer_actor_failures_total", {"actor": "model"}) == 1.0
        assert value("streamer_actor_restarts_total", {"actor": "model"}) == 1.0
        assert value("streamer_actor_restarts_total", {"actor": "producer"}) == 0.0

    def test_end_to_end_latency_is_observed_once_per_record(self) -> None:
        registry = CollectorRegistry()
        metrics = PipelineMetrics(registry)
        acked_at = 2_000.0
        # 0.5 s, 1.5 s and 3 s old at the ack; -1 is a record without a timestamp.
        stamps = [1_999_500, 1_998_500, 1_997_000, -1]
        metrics.apply(delivered(timestamps_ms=stamps, acked_at=acked_at))
        value = registry.get_sample_value
        assert value("streamer_end_to_end_latency_seconds_count") == 3.0
        assert value("streamer_end_to_end_latency_seconds_sum") == pytest.approx(5.0)
        bucket = "streamer_end_to_end_latency_seconds_bucket"
        assert value(bucket, {"le": "0.25"}) == 0.0
        assert value(bucket, {"le": "0.5"}) == 1.0  # a value on a bound counts in it
        assert value(bucket, {"le": "2.5"}) == 2.0
        assert value(bucket, {"le": "5.0"}) == 3.0
        assert value(bucket, {"le": "+Inf"}) == 3.0

    def test_a_clock_behind_the_record_timestamp_counts_as_zero_latency(self) -> None:
        registry = CollectorRegistry()
        metrics = PipelineMetrics(registry)
        metrics.apply(delivered(timestamps_ms=[5_000], acked_at=4.0))
        assert registry.get_sample_value("streamer_end_to_end_latency_seconds_sum") == 0.0
        assert (
            registry.get_sample_value("streamer_end_to_end_latency_seconds_bucket", {"le": "0.001"})
            == 1.0
        )

    def test_a_revoked_partition_loses_its_lag_and_offset_series(self) -> None:
        registry = CollectorRegistry()
        metrics = PipelineMetrics(registry)
        metrics.apply(progress({("t", 0): 10, ("t", 1): 20}, {("t", 0): 1, ("t", 1): 2}))
        metrics.apply(progress({("t", 1): 25}, {("t", 1): 0}))
        value = registry.get_sample_value
        assert value("streamer_consumer_lag", {"topic": "t", "partition": "0"}) is None
        assert value("streamer_committed_offset", {"topic": "t", "partition": "0"}) is None
        assert value("streamer_consumer_lag", {"topic": "t", "partition": "1"}) == 0.0
        assert value("streamer_committed_offset", {"topic": "t", "partition": "1"}) == 25.0


class TestRecordAges:
    """The end-to-end histogram keeps batches' timestamps and bins them at a scrape."""

    @staticmethod
    def _batches(seed: int) -> list[tuple[float, list[int]]]:
        rng = np.random.default_rng(seed)
        batches = []
        for _ in range(40):
            acked_at = 1_700_000_000.0 + float(rng.uniform(0, 100))
            ages_ms = rng.exponential(300.0, int(rng.integers(1, 30)))
            stamps = [int(acked_at * 1000 - a) for a in ages_ms]
            stamps[0] = -1 if rng.random() < 0.3 else stamps[0]  # no timestamp
            stamps[-1] = int(acked_at * 1000) + 5 if rng.random() < 0.3 else stamps[-1]  # ahead
            batches.append((acked_at, stamps))
        return batches

    @pytest.mark.parametrize("bin_every", [1, 7, 50_000])
    def test_it_equals_binning_each_batch_at_once(self, bin_every: int) -> None:
        lazy_registry, eager_registry = CollectorRegistry(), CollectorRegistry()
        lazy = RecordAges("age_seconds", "Age.", END_TO_END_BUCKETS, lazy_registry, bin_every)
        eager = BulkHistogram("age_seconds", "Age.", END_TO_END_BUCKETS, eager_registry)
        for acked_at, stamps in self._batches(bin_every):
            lazy.add_batch(acked_at, stamps)
            kept = np.asarray(stamps, dtype=np.float64)
            kept = kept[kept > 0]
            eager.observe_many(np.maximum(acked_at - kept / 1000.0, 0.0))
        for le in [*(str(float(b)) for b in END_TO_END_BUCKETS), "+Inf"]:
            labels = {"le": le}
            want = eager_registry.get_sample_value("age_seconds_bucket", labels)
            assert want is not None, le
            assert lazy_registry.get_sample_value("age_seconds_bucket", labels) == want, le
        assert lazy_registry.get_sample_value("age_seconds_sum") == pytest.approx(
            eager_registry.get_sample_value("age_seconds_sum")
        )

    def test_what_waits_stays_below_bin_every(self) -> None:
        ages = RecordAges("age_seconds", "Age.", (1.0,), CollectorRegistry(), bin_every=10)
        for _ in range(7):
            ages.add_batch(100.0, [99_500, 99_900, -1])
            assert ages._waiting_count < 10
        # The fourth batch made 12 records wait: those four were binned (8 with a timestamp).
        assert ages._waiting_count == 9
        assert int(ages._counts[""].sum()) == 8
        ages.bin_waiting()
        assert ages._waiting_count == 0
        assert int(ages._counts[""].sum()) == 14

    def test_single_values_are_binned_beside_the_batches(self) -> None:
        registry = CollectorRegistry()
        ages = RecordAges("age_seconds", "Age.", (1.0,), registry)
        ages.observe(0.5)
        ages.add_batch(100.0, [98_000])  # 2 s old
        assert registry.get_sample_value("age_seconds_bucket", {"le": "1.0"}) == 1.0
        assert registry.get_sample_value("age_seconds_count") == 2.0

    def test_a_batch_without_records_keeps_nothing(self) -> None:
        ages = RecordAges("age_seconds", "Age.", (1.0,), CollectorRegistry())
        ages.add_batch(100.0, [])
        assert ages._batches == []


class TestBulkHistogram:
    def test_its_exposition_equals_a_histogram_that_observed_each_value(self) -> None:
        rng = np.random.default_rng(3)
        values = np.concatenate(
            [rng.exponential(0.2, 5000), np.asarray(END_TO_END_BUCKETS), [0.0, 1e6]]
        )
        bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
        bulk = BulkHistogram("lat_seconds", "Latency.", END_TO_END_BUCKETS, bulk_registry)
        reference = Histogram(
            "lat_seconds", "Latency.", buckets=END_TO_END_BUCKETS, registry=reference_registry
        )
        bulk.observe_many(values[:2000])
        bulk.observe_many(values[2000:])
        for v in values.tolist():
            reference.observe(v)

        def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
            return {
                (s.name, s.labels.get("le", "")): s.value
                for metric in registry.collect()
                for s in metric.samples
                if not s.name.endswith("_created")
            }

        got, want = samples(bulk_registry), samples(reference_registry)
        assert got.keys() == want.keys()
        for key, expected in want.items():
            assert got[key] == pytest.approx(expected), key

    @pytest.mark.parametrize("bin_every", [1, 5, 10_000])
    def test_single_values_by_label_equal_a_labelled_histogram(self, bin_every: int) -> None:
        rng = np.random.default_rng(bin_every)
        stages = ("preprocess", "model", "produce")
        observed = [(float(v), stages[int(i)]) for v, i in zip(
            rng.exponential(0.01, 300), rng.integers(0, 3, 300), strict=True
        )]  # fmt: skip
        observed += [(0.005, "model"), (0.0, "produce"), (100.0, "preprocess")]  # edges, +Inf
        bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
        bulk = BulkHistogram(
            "stage_seconds", "S.", LATENCY_BUCKETS, bulk_registry,
            label="stage", series=stages, bin_every=bin_every,
        )  # fmt: skip
        reference = Histogram(
            "stage_seconds", "S.", ["stage"], buckets=LATENCY_BUCKETS, registry=reference_registry
        )
        for value, stage in observed:
            bulk.observe(value, stage)
            reference.labels(stage=stage).observe(value)
        got, want = self._samples(bulk_registry), self._samples(reference_registry)
        assert got.keys() == want.keys()
        for key, expected in want.items():
            assert got[key] == pytest.approx(expected), key

    @staticmethod
    def _samples(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
        return {
            (s.name, s.labels.get("stage", ""), s.labels.get("le", "")): s.value
            for metric in registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    def test_an_empty_array_changes_nothing(self) -> None:
        registry = CollectorRegistry()
        bulk = BulkHistogram("x_seconds", "X.", (1.0, 2.0), registry)
        bulk.observe_many(np.asarray([], dtype=np.float64))
        assert registry.get_sample_value("x_seconds_count") == 0.0

    def test_buckets_must_increase(self) -> None:
        with pytest.raises(ValueError, match="strictly increasing"):
            BulkHistogram("x_seconds", "X.", (1.0, 1.0), CollectorRegistry())

    def test_it_shows_in_the_text_exposition_like_a_histogram(self) -> None:
        registry = CollectorRegistry()
        BulkHistogram("x_seconds", "X.", (1.0,), registry).observe_many(np.asarray([0.5, 3.0]))
        text = generate_latest(registry).decode()
        assert "# TYPE x_seconds histogram" in text
        assert 'x_seconds_bucket{le="1.0"} 1.0' in text
        assert 'x_seconds_bucket{le="+Inf"} 2.0' in text
        assert "x_seconds_count 2.0" in text
        assert "x_seconds_sum 3.5" in text


# --- the actor and its HTTP server -------------------------------------------


class Probe:
    """A probe whose answer the test sets."""

    def __init__(self) -> None:
        self.ok = True
        self.details: dict[str, Any] = {"status": "ok"}
        self.raises: Exception | None = None
        self.calls = 0

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        return self.ok, self.details


def get(port: int, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, whatever the status."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with DIRECT.open(url, timeout=ASK_S) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


def start(
    registry: CollectorRegistry,
    health: HealthProbe | None = None,
    readiness: HealthProbe | None = None,
) -> tuple[pykka.ActorRef, int]:
    ref = MetricsActor.start(
        MetricsSettings(enabled=True, host="127.0.0.1", port=0),
        registry,
        "demo-fraud",
        "abc",
        health=health,
        readiness=readiness,
    )
    port = ref.ask(GetStatus(), timeout=ASK_S).port
    assert isinstance(port, int)
    assert port > 0
    return ref, port


@pytest.fixture
def probes() -> Iterator[tuple[Probe, Probe, int, pykka.ActorRef]]:
    health, readiness = Probe(), Probe()
    ref, port = start(CollectorRegistry(), health, readiness)
    yield health, readiness, port, ref
    if ref.is_alive():
        ref.stop(timeout=ASK_S)


class TestHttp:
    def test_metrics_are_served_in_the_prometheus_text_format(self) -> None:
        registry = CollectorRegistry()
        ref, port = start(registry)
        ref.tell(RecordsConsumed(7))
        ref.ask(GetStatus(), timeout=ASK_S)  # the tell above was handled
        status, content_type, body = get(port, "/metrics")
        ref.stop(timeout=ASK_S)
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert "streamer_records_consumed_total 7.0" in text
        assert 'streamer_model_info{name="demo-fraud",version="abc"} 1.0' in text
        assert "process_cpu_seconds_total" in text
        assert 'streamer_actor_restarts_total{actor="consumer"} 0.0' in text

    def test_healthz_and_readyz_answer_200_with_the_probe_details_when_ok(
        self, probes: tuple[Probe, Probe, int, pykka.ActorRef]
    ) -> None:
        health, readiness, port, _ = probes
        health.details = {"status": "ok", "dead_actors": []}
        readiness.details = {"status": "ready", "failing": []}
        for path, details in (("/healthz", health.details), ("/readyz", readiness.details)):
            status, content_type, body = get(port, path)
            assert status == 200
            assert content_type == "application/json"
            assert json.loads(body) == details
        assert health.calls == 1
        assert readiness.calls == 1

    def test_a_failing_probe_answers_503_with_what_is_wrong(
        self, probes: tuple[Probe, Probe, int, pykka.ActorRef]
    ) -> None:
        health, readiness, port, _ = probes
        health.ok, health.details = False, {"status": "failing", "dead_actors": ["model-0"]}
        readiness.ok, readiness.details = False, {"status": "not ready", "failing": ["x"]}
        status, _, body = get(port, "/healthz")
        assert (status, json.loads(body)["dead_actors"]) == (503, ["model-0"])
        status, _, body = get(port, "/readyz")
        assert (status, json.loads(body)["failing"]) == (503, ["x"])

    def test_a_probe_that_raises_answers_503_with_the_error(
        self, probes: tuple[Probe, Probe, int, pykka.ActorRef]
    ) -> None:
        health, _, port, _ = probes
        health.raises = RuntimeError("boom")
        status, _, body = get(port, "/healthz")
        assert status == 503
        assert json.loads(body) == {"status": "error", "error": "RuntimeError: boom"}

    def test_the_probes_keep_answering_while_the_actor_is_busy(
        self, probes: tuple[Probe, Probe, int, pykka.ActorRef]
    ) -> None:
        _, _, port, ref = probes
        for _ in range(2000):
            ref.tell(RecordsConsumed(1))
        started = time.monotonic()
        status, _, _ = get(port, "/healthz")
        assert status == 200
        assert time.monotonic() - started < 1.0

    def test_without_probes_the_health_endpoints_say_ok(self) -> None:
        ref, port = start(CollectorRegistry())
        try:
            status, _, body = get(port, "/healthz")
        finally:
            ref.stop(timeout=ASK_S)
        assert status == 200
        assert json.loads(body)["status"] == "ok"

    def test_an_unknown_path_is_404_and_lists_the_endpoints(
        self, probes: tuple[Probe, Probe, int, pykka.ActorRef]
    ) -> None:
        _, _, port, _ = probes
        status, _, body = get(port, "/nope")
        assert status == 404
        assert json.loads(body)["endpoints"] == ["/metrics", "/healthz", "/readyz"]

    def test_a_query_string_is_ignored(
        self, probes: tuple[Probe, Probe, int, pykka.ActorRef]
    ) -> None:
        _, _, port, _ = probes
        assert get(port, "/metrics?name[]=x")[0] == 200

    def test_stopping_the_actor_closes_the_port(
        self, probes: tuple[Probe, Probe, int, pykka.ActorRef]
    ) -> None:
        _, _, port, ref = probes
        ref.stop(timeout=ASK_S)
        with pytest.raises(urllib.error.URLError):
            DIRECT.open(f"http://127.0.0.1:{port}/healthz", timeout=ASK_S)

    def test_a_disabled_endpoint_binds_nothing(self) -> None:
        registry = CollectorRegistry()
        ref = MetricsActor.start(MetricsSettings(enabled=False), registry, "m", "v")
        assert ref.ask(GetStatus(), timeout=ASK_S) == MetricsStatus(port=None)
        assert (
            registry.get_sample_value("streamer_model_info", {"name": "m", "version": "v"}) == 1.0
        )
        ref.stop(timeout=ASK_S)


def test_model_reloads_are_counted_by_result_and_a_success_updates_the_model_info() -> None:
    from streamer.actors.metrics import PipelineMetrics
    from streamer.messages import ModelReloaded

    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    for result in ("success", "unchanged", "failure"):
        assert registry.get_sample_value("streamer_model_reloads_total", {"result": result}) == 0
    metrics.apply(ModelReloaded("failure", "demo", "v1", "bad pickle"))
    metrics.apply(ModelReloaded("success", "demo", "v2"))
    assert registry.get_sample_value("streamer_model_reloads_total", {"result": "failure"}) == 1
    assert registry.get_sample_value("streamer_model_reloads_total", {"result": "success"}) == 1
    assert registry.get_sample_value("streamer_model_info", {"name": "demo", "version": "v2"}) == 1

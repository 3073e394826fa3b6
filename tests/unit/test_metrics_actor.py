"""The metrics actor: an injected registry, pre-created series, and the /metrics endpoint."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry

from streamer.actors.metrics import ACTOR_KINDS, MetricsActor, PipelineMetrics
from streamer.core.features import REASONS
from streamer.messages import (
    ActorFailed,
    BatchDelivered,
    ConsumerProgress,
    GetStatus,
    RecordsConsumed,
)
from streamer.settings import MetricsSettings

ASK_S = 5.0


def test_every_labelled_series_exists_at_zero_on_a_fresh_registry() -> None:
    registry = CollectorRegistry()
    PipelineMetrics(registry)
    value = registry.get_sample_value
    for reason in REASONS:
        assert value("streamer_dead_letters_total", {"reason": reason}) == 0.0
    for actor in ACTOR_KINDS:
        assert value("streamer_actor_failures_total", {"actor": actor}) == 0.0
    for stage in ("preprocess", "model", "produce"):
        assert value("streamer_stage_duration_seconds_count", {"stage": stage}) == 0.0
    assert value("streamer_records_consumed_total") == 0.0
    assert value("streamer_batches_total") == 0.0


def test_events_update_the_metrics_exactly() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    metrics.apply(RecordsConsumed(100))
    metrics.apply(RecordsConsumed(50))
    metrics.apply(
        BatchDelivered(
            produced=95,
            dead_letters={"invalid_json": 3, "model_error": 1},
            dropped=1,
            size=100,
            batch_seconds=0.02,
            preprocess_seconds=0.001,
            model_seconds=0.002,
            produce_seconds=0.003,
            end_to_end_seconds=[0.5],
        )
    )
    metrics.apply(
        ConsumerProgress(
            in_flight_batches=3,
            in_flight_records=250,
            committed={("events", 1): 1200},
            lag={("events", 1): 42},
            paused_partitions=2,
        )
    )
    metrics.apply(ActorFailed(actor="model", error="RuntimeError: x"))
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
    assert value("streamer_end_to_end_latency_seconds_count") == 1.0
    assert value("streamer_in_flight_batches") == 3.0
    assert value("streamer_in_flight_records") == 250.0
    assert value("streamer_committed_offset", {"topic": "events", "partition": "1"}) == 1200.0
    assert value("streamer_consumer_lag", {"topic": "events", "partition": "1"}) == 42.0
    assert value("streamer_paused_partitions") == 2.0
    assert value("streamer_actor_failures_total", {"actor": "model"}) == 1.0


def test_the_actor_reports_the_model_and_serves_metrics_over_http() -> None:
    registry = CollectorRegistry()
    ref = MetricsActor.start(
        MetricsSettings(enabled=True, host="127.0.0.1", port=0), registry, "demo-fraud", "abc"
    )
    ref.tell(RecordsConsumed(7))
    port = ref.ask(GetStatus(), timeout=ASK_S)["port"]
    assert isinstance(port, int)
    assert port > 0
    url = f"http://127.0.0.1:{port}/metrics"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    with direct.open(url, timeout=ASK_S) as response:
        body = response.read().decode()
    assert "streamer_records_consumed_total 7.0" in body
    assert 'streamer_model_info{name="demo-fraud",version="abc"} 1.0' in body
    ref.stop(timeout=ASK_S)


def test_a_disabled_endpoint_binds_nothing() -> None:
    registry = CollectorRegistry()
    ref = MetricsActor.start(MetricsSettings(enabled=False), registry, "m", "v")
    assert ref.ask(GetStatus(), timeout=ASK_S) == {"port": None}
    assert registry.get_sample_value("streamer_model_info", {"name": "m", "version": "v"}) == 1.0

"""The whole topology over fake Kafka clients: exactly-once output in order, commits, failures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson
import pykka
import pytest
from prometheus_client import CollectorRegistry

from streamer.core.models import ModelDefaults
from streamer.core.models.linear import LinearModel
from streamer.errors import BrokerError, ConfigError
from streamer.topology import Pipeline
from tests.unit.fakes import FakeKafka, FakeProducer, Sent, wait_until
from tests.unit.topology.helpers import (
    BAD_EVERY,
    BAD_VALUES,
    DLQ,
    INPUT,
    OUTPUT,
    PARTITIONS,
    PER_PARTITION,
    TOPICS,
    CrashingModel,
    assert_no_commit_passes_undelivered_work,
    dataset,
    delivered_prefix,
    settings,
    source_of,
    start,
)


def test_every_record_is_produced_exactly_once_in_order_and_committed(
    demo: LinearModel,
) -> None:
    data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
    pipeline, kafka, registry = start(data, settings())
    ends = dict.fromkeys(data.records, PER_PARTITION)
    wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=15)
    report = pipeline.stop()

    assert (report.exit_code, report.drained, report.failure) == (0, True, None)
    assert report.committed == ends
    assert kafka.consumer.last_commit() == ends
    assert kafka.consumer.closed is True
    assert kafka.producer.closed is True
    assert kafka.producer.flushes != []

    sent = kafka.producer.records()
    sources = [source_of(s) for s in sent]
    assert Counter(sources) == Counter(
        (tp, r.offset) for tp, recs in data.records.items() for r in recs
    )
    for tp in data.records:
        assert [o for t, o in sources if t == tp] == list(range(PER_PARTITION))

    mean, std = demo.spec.mean.tolist(), demo.spec.std.tolist()
    for s, (tp, offset) in zip(sent, sources, strict=True):
        reason = data.reasons.get((tp, offset))
        if reason is None:
            assert s.topic == OUTPUT
            doc = orjson.loads(s.value)
            row = [
                (x - m) / d for x, m, d in zip(data.features[(tp, offset)], mean, std, strict=True)
            ]
            assert abs(doc["score"] - demo.predict_one(row)) <= 1e-12
            assert doc["model"] == {"name": demo.name, "version": demo.version}
            assert s.key == f"k{offset}".encode()
        else:
            assert s.topic == DLQ
            assert s.header_map["streamer.reason"] == reason.encode()
            original = data.records[tp][offset].value
            assert s.value == (original or b"")

    value = registry.get_sample_value
    bad = Counter(data.reasons.values())
    assert sum(bad.values()) == PARTITIONS * PER_PARTITION // BAD_EVERY
    assert value("streamer_records_consumed_total") == PARTITIONS * PER_PARTITION
    assert value("streamer_records_produced_total") == PARTITIONS * PER_PARTITION - sum(
        bad.values()
    )
    assert value("streamer_batches_total") == PARTITIONS * PER_PARTITION / 100
    for reason, _ in BAD_VALUES:
        assert value("streamer_dead_letters_total", {"reason": reason}) == bad[reason]
    assert value("streamer_dead_letters_total", {"reason": "model_error"}) == 0.0
    for actor in ("consumer", "preprocessor", "model", "producer", "metrics"):
        assert value("streamer_actor_failures_total", {"actor": actor}) == 0.0


class PartlyBroken(ModelDefaults):
    """The demo model, except that it raises for rows with a standardized amount above 3."""

    # No file behind it: nothing to watch, and a reload never counts as unchanged.
    digest = ""
    watch_paths = ()

    def __init__(self, model: LinearModel) -> None:
        self._model = model
        self.name, self.version = model.name, model.version
        self.spec, self.output_names = model.spec, model.output_names

    def predict(self, features: np.ndarray) -> np.ndarray:
        if np.any(features[:, 0] > 3.0):
            msg = "amount out of the training range"
            raise ValueError(msg)
        return self._model.predict(features)


def test_rows_the_model_cannot_score_are_dead_lettered_and_the_pipeline_stays_up(
    demo: LinearModel,
) -> None:
    data = dataset(demo.spec, 2, 200)
    broken = {
        key
        for key, row in data.features.items()
        if (row[0] - demo.spec.mean[0]) / demo.spec.std[0] > 3.0
    }
    assert broken, "the data set needs a few large amounts"
    pipeline, kafka, registry = start(data, settings(), model=PartlyBroken(demo))
    ends = dict.fromkeys(data.records, 200)
    wait_until(lambda: pipeline.consumer_status().watermarks == ends)
    report = pipeline.stop()
    assert report.exit_code == 0
    model_errors = {
        source_of(s)
        for s in kafka.producer.records()
        if s.topic == DLQ and s.header_map["streamer.reason"] == b"model_error"
    }
    assert model_errors == broken
    for s in kafka.producer.records():
        if source_of(s) in broken:
            assert s.header_map["streamer.stage"] == b"model"
            assert s.header_map["streamer.error"] == b"ValueError: amount out of the training range"
    value = registry.get_sample_value
    assert value("streamer_dead_letters_total", {"reason": "model_error"}) == len(broken)
    assert value("streamer_records_produced_total") == 400 - len(data.reasons) - len(broken)


def test_a_model_raising_a_base_exception_fails_the_pipeline_and_is_counted(
    demo: LinearModel,
) -> None:
    data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
    model = CrashingModel(demo, crash_on_call=3)
    pipeline, kafka, registry = start(data, settings(max_restarts=0), model=model)
    assert model.crashed.wait(5.0)
    report = pipeline.stop(timeout_s=2.0)
    assert report.exit_code == 1
    assert_no_commit_passes_undelivered_work(kafka, data)
    assert registry.get_sample_value("streamer_actor_failures_total", {"actor": "model"}) == 1.0
    assert report.failure is not None
    assert "model" in report.failure


def test_a_producer_whose_send_raises_fails_the_pipeline_without_committing_unacked_work(
    demo: LinearModel,
) -> None:
    data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
    producer = FakeProducer(raise_on_send=650)
    pipeline, kafka, registry = start(data, settings(max_restarts=0), producer=producer)
    wait_until(lambda: pipeline.failure is not None)
    report = pipeline.stop(timeout_s=3.0)
    assert report.exit_code == 1
    assert report.drained is False
    assert report.failure is not None
    assert len(kafka.producer.records()) == 650
    assert kafka.producer.closed is True
    assert_no_commit_passes_undelivered_work(kafka, data)
    safe = delivered_prefix(kafka.producer, data.records)
    assert report.committed == kafka.consumer.last_commit()
    for tp, offset in report.committed.items():
        assert offset <= safe[tp]
        assert offset % 100 == 0
    assert registry.get_sample_value("streamer_actor_failures_total", {"actor": "producer"}) == 1.0
    assert registry.get_sample_value("streamer_actor_failures_total", {"actor": "consumer"}) == 0.0


def test_a_failed_delivery_stops_the_watermark_before_its_batch(demo: LinearModel) -> None:
    data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
    failing = ((INPUT, 1), 250)

    def fail_when(sent: Sent) -> BaseException | None:
        if source_of(sent) == failing:
            return TimeoutError("delivery timed out")
        return None

    pipeline, kafka, _registry = start(
        data, settings(max_restarts=0), producer=FakeProducer(fail_when=fail_when)
    )
    wait_until(lambda: pipeline.failure is not None)
    report = pipeline.stop(timeout_s=3.0)
    assert report.exit_code == 1
    assert "TimeoutError: delivery timed out" in (report.failure or "")
    assert report.committed[(INPUT, 1)] == 200
    assert_no_commit_passes_undelivered_work(kafka, data)


def test_a_missing_topic_is_a_config_error_and_starts_no_actor(demo: LinearModel) -> None:
    data = dataset(demo.spec, 1, 10)
    kafka = FakeKafka(data.records, (INPUT, OUTPUT))
    pipeline = Pipeline(
        settings(),
        registry=CollectorRegistry(),
        consumer_factory=kafka.consumer_factory,
        producer_factory=kafka.producer_factory,
    )
    with pytest.raises(ConfigError) as info:
        pipeline.start()
    assert str(info.value).startswith(
        "config error: kafka.dead_letter_topic: topic 'events.dlq' does not exist on 127.0.0.1:9092"
    )
    assert pykka.ActorRegistry.get_all() == []
    assert kafka.consumers[0].closed is True


def test_a_consumer_that_cannot_connect_at_start_fails_the_pipeline(demo: LinearModel) -> None:
    data = dataset(demo.spec, 1, 10)
    kafka = FakeKafka(
        data.records, TOPICS, consumer_error=BrokerError("cannot start the consumer: refused")
    )
    registry = CollectorRegistry()
    pipeline = Pipeline(
        settings(),
        registry=registry,
        consumer_factory=kafka.consumer_factory,
        producer_factory=kafka.producer_factory,
    )
    try:
        pipeline.start()
    except BrokerError:
        pass  # reported synchronously: fine
    else:
        wait_until(lambda: pipeline.failure is not None, timeout=3.0)
        assert "BrokerError" in (pipeline.failure or "")
        assert (
            registry.get_sample_value("streamer_actor_failures_total", {"actor": "consumer"}) == 1.0
        )
    assert pipeline.stop(timeout_s=1.0).exit_code == 1

"""The whole topology over fake Kafka clients: exactly-once output in order, commits, failures."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np
import orjson
import pykka
import pytest
from prometheus_client import CollectorRegistry

from streamer.core.features import FeatureSpec
from streamer.core.model import LinearModel, load_linear
from streamer.errors import BrokerError, ConfigError
from streamer.settings import (
    BatchSettings,
    KafkaSettings,
    MetricsSettings,
    ModelSettings,
    PreprocessSettings,
    Settings,
    ShutdownSettings,
    SupervisionSettings,
)
from streamer.topology import Pipeline
from tests.unit.fakes import FakeKafka, FakeProducer, FakeRecord, Sent, make_records, wait_until

TP = tuple[str, int]
INPUT, OUTPUT, DLQ = "events", "scores", "events.dlq"
TOPICS = (INPUT, OUTPUT, DLQ)
PARTITIONS = 4
PER_PARTITION = 500
MAX_RECORD_BYTES = 300
BAD_EVERY = 50

BAD_VALUES: list[tuple[str, bytes | None]] = [
    ("invalid_json", b'{"amount": 12.5, "distance_from_home_km": '),
    ("not_object", b"[1, 2, 3]"),
    ("missing_feature", b'{"amount": 10.0, "merchant_risk": 0.1}'),
    (
        "non_numeric_feature",
        b'{"amount": "lots", "distance_from_home_km": 1, "transactions_last_hour": 1, '
        b'"account_age_days": 10, "merchant_risk": 0.1}',
    ),
    (
        "non_finite",
        b'{"amount": "Infinity", "distance_from_home_km": 1, "transactions_last_hour": 1, '
        b'"account_age_days": 10, "merchant_risk": 0.1}',
    ),
    ("empty_value", None),
    ("not_utf8", b"\xff\xfe not utf-8"),
    ("oversized", b'{"pad": "' + b"x" * MAX_RECORD_BYTES + b'"}'),
]


@pytest.fixture(scope="module")
def demo() -> LinearModel:
    return load_linear(None)


@dataclass
class Dataset:
    records: dict[TP, list[FakeRecord]]
    reasons: dict[tuple[TP, int], str]  # (tp, offset) -> dead-letter reason
    features: dict[tuple[TP, int], list[float]]  # raw features of the good records


def dataset(spec: FeatureSpec, partitions: int, per_partition: int) -> Dataset:
    """Good transactions with one bad record in every BAD_EVERY, cycling through the reasons."""
    records: dict[TP, list[FakeRecord]] = {}
    reasons: dict[tuple[TP, int], str] = {}
    features: dict[tuple[TP, int], list[float]] = {}
    for p in range(partitions):
        tp = (INPUT, p)
        rng = random.Random(p)
        values: list[bytes | None] = []
        for i in range(per_partition):
            if i % BAD_EVERY == 7:
                reason, value = BAD_VALUES[(p * 10 + i // BAD_EVERY) % len(BAD_VALUES)]
                reasons[(tp, i)] = reason
                values.append(value)
            else:
                row = [
                    round(rng.lognormvariate(3.7, 0.7), 2),
                    round(abs(rng.gauss(12, 15)), 1),
                    rng.randint(0, 5),
                    rng.randint(1, 3000),
                    rng.choice([0.08, 0.12, 0.3, 0.4]),
                ]
                features[(tp, i)] = [float(x) for x in row]
                values.append(orjson.dumps(dict(zip(spec.names, row, strict=True))))
        records[tp] = make_records(values)
    return Dataset(records, reasons, features)


def settings(
    *,
    max_in_flight: int = 4,
    preprocessors: int = 3,
    models: int = 2,
    max_records: int = 100,
    max_restarts: int = 5,
) -> Settings:
    return Settings(
        kafka=KafkaSettings(input_topic=INPUT, output_topic=OUTPUT, commit_interval_s=0.05),
        batch=BatchSettings(
            max_records=max_records,
            max_wait_s=0.05,
            max_in_flight=max_in_flight,
            max_record_bytes=MAX_RECORD_BYTES,
        ),
        preprocess=PreprocessSettings(workers=preprocessors),
        model=ModelSettings(workers=models),
        supervision=SupervisionSettings(
            max_restarts=max_restarts, backoff_initial_s=0.01, backoff_max_s=0.05
        ),
        metrics=MetricsSettings(enabled=False),
        shutdown=ShutdownSettings(timeout_s=10.0),
    )


def source_of(sent: Sent) -> tuple[TP, int]:
    """The input (tp, offset) an output record or dead letter came from."""
    if sent.topic == OUTPUT:
        doc = orjson.loads(sent.value)
        return (doc["topic"], doc["partition"]), doc["offset"]
    headers = sent.header_map
    tp = (headers["streamer.source.topic"].decode(), int(headers["streamer.source.partition"]))
    return tp, int(headers["streamer.source.offset"])


def delivered_prefix(producer: FakeProducer, records: dict[TP, list[FakeRecord]]) -> dict[TP, int]:
    """Per partition, the commit offset below which every input record was delivered."""
    delivered = {
        source_of(s) for s in producer.records() if s.future.done and s.future.exception is None
    }
    prefix = {}
    for tp, recs in records.items():
        end = recs[0].offset
        for record in recs:
            if (tp, record.offset) not in delivered:
                break
            end = record.offset + 1
        prefix[tp] = end
    return prefix


def assert_no_commit_passes_undelivered_work(kafka: FakeKafka, data: Dataset) -> None:
    safe = delivered_prefix(kafka.producer, data.records)
    consumer = kafka.consumer
    for commit in consumer.commits + consumer.async_commits:
        for tp, offset in commit.items():
            assert offset <= safe[tp], f"committed {tp}@{offset} but only {safe[tp]} delivered"


def start(
    data: Dataset,
    config: Settings,
    *,
    model: object | None = None,
    producer: FakeProducer | None = None,
) -> tuple[Pipeline, FakeKafka, CollectorRegistry]:
    kafka = FakeKafka(data.records, TOPICS, producer=producer)
    registry = CollectorRegistry()
    pipeline = Pipeline(
        config,
        registry=registry,
        model=model,  # type: ignore[arg-type]
        consumer_factory=kafka.consumer_factory,
        producer_factory=kafka.producer_factory,
    )
    pipeline.start()
    assert pipeline.wait_until_assigned(5.0)
    return pipeline, kafka, registry


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


class PartlyBroken:
    """The demo model, except that it raises for rows with a standardized amount above 3."""

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


class ModelCrash(BaseException):
    """Escapes ``except Exception``: pykka does not call on_failure for it."""


class CrashingModel:
    """The demo model until its n-th call, which raises a BaseException."""

    def __init__(self, model: LinearModel, crash_on_call: int) -> None:
        self._model = model
        self.name, self.version = model.name, model.version
        self.spec, self.output_names = model.spec, model.output_names
        self._lock = threading.Lock()
        self._calls = 0
        self._crash_on = crash_on_call
        self.crashed = threading.Event()

    def predict(self, features: np.ndarray) -> np.ndarray:
        with self._lock:
            self._calls += 1
            crash = self._calls == self._crash_on
        if crash:
            self.crashed.set()
            msg = "model crashed"
            raise ModelCrash(msg)
        return self._model.predict(features)


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

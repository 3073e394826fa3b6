"""The whole topology over fake Kafka clients: data sets, settings and checks the tests share."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from streamer.core.features import FeatureSpec
from streamer.core.models import ModelDefaults
from streamer.core.models.linear import LinearModel
from streamer.core.records import TP
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
from tests.unit.fakes import FakeKafka, FakeProducer, FakeRecord, Sent, make_records

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


class ModelCrash(BaseException):
    """Escapes ``except Exception``: pykka does not call on_failure for it."""


class CrashingModel(ModelDefaults):
    """The demo model until its n-th call, which raises a BaseException."""

    # No file behind it: nothing to watch, and a reload never counts as unchanged.
    digest = ""
    watch_paths = ()

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

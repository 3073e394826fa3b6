"""Avro, Protobuf and JSON Schema records through the real broker, on both client backends.

The records are written by confluent-kafka's own serializers against the
Schema Registry STAND-IN of tests/schema_registry_standin.py (an in-memory
HTTP server implementing the REST subset the client uses; see its docstring).
Every score is compared, bit for bit, with the demo model applied offline to
a DataFrame built from the same events.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import CollectorRegistry

from streamer.clients.kafka_python import ensure_topics
from streamer.core.models.linear import load_linear
from streamer.settings import KafkaSettings, build_settings
from streamer.topology import Pipeline
from tests.schema_registry_standin import SchemaRegistryStandIn

from .helpers import BACKENDS, Cluster, PipelineStarter, wait_for, wait_until_delivered

DEMO = Path(__file__).resolve().parents[2] / "streamer" / "core" / "models" / "demo_fraud.json"
# The demo model's features, nested: feature name -> path in the event.
PATHS = {
    "amount": "payment.amount",
    "merchant_risk": "payment.merchant_risk",
    "transactions_last_hour": "activity.transactions_last_hour",
    "account_age_days": "activity.account_age_days",
    "distance_from_home_km": "distance_from_home_km",
}


def _avro(extra: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": "Transaction",
            "namespace": "streamer.it",
            "fields": [
                {"name": "card_id", "type": "string"},
                {
                    "name": "payment",
                    "type": {
                        "type": "record",
                        "name": "Payment",
                        "fields": [
                            {"name": "amount", "type": "double"},
                            {"name": "merchant_risk", "type": "double"},
                        ],
                    },
                },
                {"name": "distance_from_home_km", "type": "double"},
                {
                    "name": "activity",
                    "type": {
                        "type": "record",
                        "name": "Activity",
                        "fields": [
                            {"name": "transactions_last_hour", "type": "int"},
                            {"name": "account_age_days", "type": "int"},
                        ],
                    },
                },
                *extra,
            ],
        }
    )


AVRO_V1 = _avro([])
AVRO_V2 = _avro([{"name": "channel", "type": "string", "default": "app"}])
AVRO_V3 = _avro(
    [
        {"name": "channel", "type": "string", "default": "app"},
        {"name": "country", "type": "string", "default": "FR"},
    ]
)
JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Transaction",
    "type": "object",
    "properties": {
        "payment": {"type": "object", "required": ["amount", "merchant_risk"]},
        "activity": {"type": "object"},
        "distance_from_home_km": {"type": "number"},
    },
    "required": ["payment", "activity", "distance_from_home_km"],
}


def _events(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "card_id": f"card-{seed}-{i}",
            "payment": {
                "amount": round(rng.lognormvariate(3.5, 1.0), 2),
                "merchant_risk": round(rng.random(), 3),
            },
            "distance_from_home_km": round(rng.expovariate(1 / 20), 1),
            "activity": {
                "transactions_last_hour": rng.randint(0, 6),
                "account_age_days": rng.randint(1, 4000),
            },
        }
        for i in range(count)
    ]


def _offline(events: list[dict[str, Any]], model_path: Path | None = None) -> np.ndarray:
    """The data scientist's own call: a DataFrame of the flattened events, then the model."""
    model = load_linear(model_path)
    frame = pd.json_normalize(events)
    raw = frame[[PATHS[name] for name in model.spec.names]].to_numpy(dtype=np.float64)
    return model.predict((raw - model.spec.mean) / model.spec.std)


def _settings(cluster: Cluster, topics: Any, client: str, fmt: str, url: str) -> Any:
    return cluster.settings(
        topics,
        kafka={"client": client},
        batch={"max_records": 16, "max_wait_s": 0.02},
        preprocess={"paths": PATHS},
        format={"input": fmt, "registry_url": url, "registry_retry_s": 0.2},
        supervision={"dead_letter_max_ratio": 1.0},
    )


def _scores_by_source(cluster: Cluster, topic: str) -> dict[tuple[int, int], float]:
    scores = {}
    for _key, value, _headers in cluster.read(topic).records.values():
        doc = orjson.loads(value or b"null")
        scores[(doc["partition"], doc["offset"])] = doc["score"]
    return scores


def _dead_letters(cluster: Cluster, topic: str) -> dict[tuple[int, int], tuple[str, bytes | None]]:
    out = {}
    for _key, value, headers in cluster.read(topic).records.values():
        named = dict(headers)
        source = (int(named["streamer.source.partition"]), int(named["streamer.source.offset"]))
        out[source] = (named["streamer.reason"].decode(), value)
    return out


@pytest.fixture
def registry() -> Iterator[SchemaRegistryStandIn]:
    with SchemaRegistryStandIn() as standin:
        yield standin


@pytest.mark.parametrize("client", BACKENDS)
def test_avro_nested_evolving_poison_and_a_registry_outage(
    client: str,
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    registry: SchemaRegistryStandIn,
) -> None:
    topics = cluster.new_topics(partitions=1)
    writer = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topics.input, MessageField.VALUE)
    v1, v2, v3 = (AvroSerializer(writer, schema) for schema in (AVRO_V1, AVRO_V2, AVRO_V3))
    first = _events(40, seed=1)
    # Two writer schemas in one partition: v2 adds a field with a default, mid-topic.
    values = [
        v1(e, ctx) if i < 20 else v2({**e, "channel": "web"}, ctx) for i, e in enumerate(first)
    ]
    poison = [
        b"\x01" + values[0][1:],  # wrong magic byte
        b"\x00" + struct.pack(">I", 4242) + values[1][5:],  # unknown schema id
        values[2][:-5],  # truncated
    ]
    records = [(f"k{i}".encode(), v) for i, v in enumerate(values[:20])]
    records += [(b"poison", p) for p in poison]
    records += [(f"k{i}".encode(), v) for i, v in enumerate(values[20:], start=20)]
    produced = cluster.produce(topics.input, records)
    pipeline = start_pipeline(_settings(cluster, topics, client, "avro", registry.url))
    wait_until_delivered(pipeline, topics.input, produced)

    # The registry goes away; records of a schema id not seen yet wait for it.
    second = _events(20, seed=2)
    later = [v3({**e, "channel": "x", "country": "DE"}, ctx) for e in second]
    registry.stop()
    produced_later = cluster.produce(topics.input, [(b"later", v) for v in later])
    time.sleep(2.0)
    assert len(cluster.read(topics.dead_letter)) == 3, "no record is dead-lettered for an outage"
    assert len(cluster.read(topics.output)) == 40, "records of an unknown id wait"
    registry.start()
    wait_until_delivered(pipeline, topics.input, {**produced, **produced_later})

    scores = _scores_by_source(cluster, topics.output)
    dead = _dead_letters(cluster, topics.dead_letter)
    events = first + second
    good = [(p, o) for p, o in sorted({**produced, **produced_later}) if (p, o) not in dead]
    assert len(good) == len(events) == len(scores)
    assert np.array_equal(np.array([scores[s] for s in good]), _offline(events))
    assert {source: reason for source, (reason, _v) in dead.items()} == {
        (0, 20): "wrong_format",
        (0, 21): "unknown_schema",
        (0, 22): "undecodable",
    }
    # Dead letters keep the original bytes.
    assert [dead[(0, 20 + i)][1] for i in range(3)] == poison


def test_a_challenger_with_its_own_statistics_reads_avro_through_the_registry(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    registry: SchemaRegistryStandIn,
    tmp_path: Path,
) -> None:
    # Other statistics and weights than the champion's: the challenger prepares each batch again.
    doc = json.loads(DEMO.read_text())
    doc.update(
        name="restandardized",
        version="2",
        mean=[value * 1.1 for value in doc["mean"]],
        std=[value * 0.9 for value in doc["std"]],
        bias=doc["bias"] + 0.5,
    )
    path = tmp_path / "challenger.json"
    path.write_text(json.dumps(doc))
    topics = cluster.new_topics(partitions=1)
    shadow = f"{topics.output}.challenger"
    ensure_topics(KafkaSettings(bootstrap_servers=cluster.bootstrap_servers), {shadow: 1})
    writer = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topics.input, MessageField.VALUE)
    serialize = AvroSerializer(writer, AVRO_V1)
    events = _events(60, seed=5)
    produced = cluster.produce(
        topics.input, [(f"k{i}".encode(), serialize(e, ctx)) for i, e in enumerate(events)]
    )
    document = {
        "kafka": cluster.kafka_section(topics),
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": 20.0},
        "batch": {"max_records": 16, "max_wait_s": 0.02},
        "preprocess": {"paths": PATHS},
        "format": {"input": "avro", "registry_url": registry.url, "registry_retry_s": 0.2},
        "challenger": [
            {
                "name": "restandardized",
                "kind": "linear",
                "path": str(path),
                "output_topic": shadow,
                "max_pending_batches": 1000,
            }
        ],
    }
    pipeline = start_pipeline(build_settings(document, environ={}))
    wait_until_delivered(pipeline, topics.input, produced)
    agreement = pipeline.challengers[0].agreement
    wait_for(
        lambda: agreement.snapshot().compared == len(events),
        30,
        "the challenger to score every record",
        describe=lambda: str(agreement.snapshot()),
    )
    wait_for(lambda: len(cluster.read(shadow)) == len(events), 30, "the challenger's outputs")
    scores = _scores_by_source(cluster, shadow)
    expected = _offline(events, path)
    assert np.array_equal(np.array([scores[source] for source in sorted(scores)]), expected)
    assert not np.array_equal(expected, _offline(events))  # the champion's scores differ


def _protobuf_class() -> Any:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="streamer_it_transaction.proto", package="streamer.it", syntax="proto3"
    )
    kinds = descriptor_pb2.FieldDescriptorProto
    payment = file_proto.message_type.add(name="Payment")
    payment.field.add(name="amount", number=1, type=kinds.TYPE_DOUBLE)
    payment.field.add(name="merchant_risk", number=2, type=kinds.TYPE_DOUBLE)
    activity = file_proto.message_type.add(name="Activity")
    activity.field.add(name="transactions_last_hour", number=1, type=kinds.TYPE_INT32)
    activity.field.add(name="account_age_days", number=2, type=kinds.TYPE_INT32)
    txn = file_proto.message_type.add(name="Transaction")
    txn.field.add(name="card_id", number=1, type=kinds.TYPE_STRING)
    txn.field.add(
        name="payment", number=2, type=kinds.TYPE_MESSAGE, type_name=".streamer.it.Payment"
    )
    txn.field.add(name="distance_from_home_km", number=3, type=kinds.TYPE_DOUBLE)
    txn.field.add(
        name="activity", number=4, type=kinds.TYPE_MESSAGE, type_name=".streamer.it.Activity"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return GetMessageClass(pool.FindMessageTypeByName("streamer.it.Transaction"))


def _to_message(message_class: Any, event: dict[str, Any]) -> Any:
    message = message_class(
        card_id=event["card_id"], distance_from_home_km=event["distance_from_home_km"]
    )
    message.payment.amount = event["payment"]["amount"]
    message.payment.merchant_risk = event["payment"]["merchant_risk"]
    message.activity.transactions_last_hour = event["activity"]["transactions_last_hour"]
    message.activity.account_age_days = event["activity"]["account_age_days"]
    return message


@pytest.mark.parametrize("client", BACKENDS)
@pytest.mark.parametrize("fmt", ["protobuf", "json_schema"])
def test_protobuf_and_json_schema_events_score_like_offline(
    client: str,
    fmt: str,
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    registry: SchemaRegistryStandIn,
) -> None:
    topics = cluster.new_topics(partitions=2)
    writer = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topics.input, MessageField.VALUE)
    events = _events(30, seed=3)
    if fmt == "protobuf":
        message_class = _protobuf_class()
        serialize = ProtobufSerializer(message_class, writer, {"use.deprecated.format": False})
        values = [serialize(_to_message(message_class, e), ctx) for e in events]
    else:
        serialize = JSONSerializer(json.dumps(JSON_SCHEMA), writer)
        values = [serialize(e, ctx) for e in events]
    poison = values[0][:5] + b"\xff\xfe"  # a known id, bytes that are not its record
    keyed = [(f"k{i}".encode(), v) for i, v in enumerate(values)] + [(b"poison", poison)]
    produced = cluster.produce(topics.input, keyed)
    pipeline = start_pipeline(_settings(cluster, topics, client, fmt, registry.url))
    wait_until_delivered(pipeline, topics.input, produced)
    by_key = {}
    for _key, value, _headers in cluster.read(topics.output).records.values():
        doc = orjson.loads(value or b"null")
        by_key[doc["key"]] = doc["score"]
    assert sorted(by_key) == sorted(f"k{i}" for i in range(30))
    assert np.array_equal(np.array([by_key[f"k{i}"] for i in range(30)]), _offline(events))
    dead = list(_dead_letters(cluster, topics.dead_letter).values())
    assert dead == [("undecodable", poison)]


@pytest.mark.parametrize("client", BACKENDS)
def test_avro_output_is_read_back_with_confluents_avro_deserializer(
    client: str,
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    registry: SchemaRegistryStandIn,
) -> None:
    topics = cluster.new_topics(partitions=2)
    writer = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topics.input, MessageField.VALUE)
    events = _events(25, seed=4)
    serialize = AvroSerializer(writer, AVRO_V1)
    keyed = [(f"k{i}".encode(), serialize(e, ctx)) for i, e in enumerate(events)]
    keyed.append((b"poison", b"\x07not avro"))
    produced = cluster.produce(topics.input, keyed)
    settings = _settings(cluster, topics, client, "avro", registry.url)
    settings = dataclasses.replace(
        settings, format=dataclasses.replace(settings.format, output="avro")
    )
    pipeline = start_pipeline(settings)
    wait_until_delivered(pipeline, topics.input, produced)

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    out_ctx = SerializationContext(topics.output, MessageField.VALUE)
    docs = [
        deserialize(value, out_ctx)
        for _k, value, _h in cluster.read(topics.output).records.values()
    ]
    by_key = {doc["key"]: doc for doc in docs}
    assert sorted(by_key) == sorted(f"k{i}" for i in range(25))
    first = by_key["k0"]
    assert set(first) == {"key", "topic", "partition", "offset", "score", "model", "scored_at"}
    assert first["topic"] == topics.input
    assert (first["partition"], first["offset"]) in produced
    scores = np.array([by_key[f"k{i}"]["score"] for i in range(25)])
    assert np.array_equal(scores, _offline(events))
    assert f"{topics.output}-value" in SchemaRegistryClient({"url": registry.url}).get_subjects()
    # The dead letter keeps the original bytes, whatever the output format.
    assert [(r, v) for r, v in _dead_letters(cluster, topics.dead_letter).values()] == [
        ("wrong_format", b"\x07not avro")
    ]


def test_a_registry_down_at_start_keeps_the_pipeline_not_ready_until_it_answers(
    cluster: Cluster, registry: SchemaRegistryStandIn
) -> None:
    topics = cluster.new_topics(partitions=1)
    writer = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topics.input, MessageField.VALUE)
    events = _events(10, seed=6)
    serialize = AvroSerializer(writer, AVRO_V1)
    produced = cluster.produce(
        topics.input, [(f"k{i}".encode(), serialize(e, ctx)) for i, e in enumerate(events)]
    )
    registry.stop()
    pipeline = Pipeline(
        _settings(cluster, topics, "kafka-python", "avro", registry.url),
        registry=CollectorRegistry(),
    )
    starting = threading.Thread(target=pipeline.start, daemon=True)
    try:
        starting.start()
        time.sleep(1.5)
        assert starting.is_alive(), "start waits for the registry"
        ready, _details = pipeline.readiness()
        assert not ready
        registry.start()
        starting.join(30)
        assert not starting.is_alive()
        assert pipeline.wait_until_assigned(30)
        wait_until_delivered(pipeline, topics.input, produced)
    finally:
        report = pipeline.stop(timeout_s=10)
    assert report.exit_code == 0
    assert len(cluster.read(topics.output)) == 10

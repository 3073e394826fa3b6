"""Avro, Protobuf and JSON Schema records, written by confluent-kafka's own serializers.

The registry here is confluent-kafka's in-process ``mock://`` client, shared by
the serializers and the reader; no network. The HTTP stand-in registry of the
integration tests is tests/schema_registry_standin.py.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamer.clients.registry import RegistrySource
from streamer.core.features import FeatureSpec, prepare_batch
from streamer.core.formats import (
    RecordReader,
    RegistryUnavailableError,
    compile_paths,
    project,
)
from streamer.settings import FormatSettings
from tests.formats_data import (
    AVRO_V1,
    AVRO_V2,
    JSON_SCHEMA,
    events,
    protobuf_event_class,
    to_protobuf,
)

TOPIC = "payments"
NAMES = ("payment.amount", "payment.risk", "distance_km")
CTX = SerializationContext(TOPIC, MessageField.VALUE)


def _registry() -> Any:
    return SchemaRegistryClient.new_client({"url": "mock://unit"})


def _reader(client: Any, fmt: str, **kwargs: Any) -> RecordReader:
    settings = FormatSettings(input=fmt, registry_url="mock://unit")
    return RecordReader(fmt, RegistrySource(settings, client), **kwargs)


def _spec() -> FeatureSpec:
    return FeatureSpec(NAMES, np.array([50.0, 0.3, 10.0]), np.array([20.0, 0.2, 5.0]))


def _prepare(values: list[bytes | None], reader: RecordReader) -> Any:
    spec = _spec()
    paths = compile_paths(spec.names)
    assert paths is not None
    return prepare_batch(
        values,
        spec,
        reader=reader,
        projector=lambda docs: project(docs, spec.names, paths),
    )


def _offline(rows: list[dict[str, Any]]) -> np.ndarray:
    """What the data scientist computes from the same events: nested fields by hand."""
    raw = np.array(
        [[r["payment"]["amount"], r["payment"]["risk"], r["distance_km"]] for r in rows],
        dtype=np.float64,
    )
    spec = _spec()
    return (raw - spec.mean) / spec.std


def test_avro_nested_records_decode_to_the_offline_features_bit_for_bit() -> None:
    client = _registry()
    serialize = AvroSerializer(client, AVRO_V1)
    rows = events(7)
    values = [serialize(row, CTX) for row in rows]
    reader = _reader(client, "avro")
    prepared = _prepare(values, reader)
    assert prepared.rejected == ()
    assert prepared.valid_rows.tolist() == list(range(7))
    assert np.array_equal(prepared.features, _offline(rows))
    assert reader.schema_fetches == 1  # fetched once for the whole batch, then cached


def test_evolving_avro_schema_reads_each_record_with_its_writers_schema() -> None:
    client = _registry()
    old, new = AvroSerializer(client, AVRO_V1), AvroSerializer(client, AVRO_V2)
    rows = events(6)
    values = []
    for index, row in enumerate(rows):
        if index % 2:
            values.append(new({**row, "channel": "web"}, CTX))
        else:
            values.append(old(row, CTX))
    ids = {struct.unpack(">I", value[1:5])[0] for value in values}
    assert len(ids) == 2
    reader = _reader(client, "avro")
    docs, _rows, rejected = reader.decode_batch(values, 1 << 20)
    assert rejected == []
    assert [doc.get("channel") for doc in docs] == [None, "web"] * 3
    assert np.array_equal(_prepare(values, reader).features, _offline(rows))
    assert reader.schema_fetches == 2


def test_poison_gets_its_own_reason_and_the_good_rows_are_scored() -> None:
    client = _registry()
    serialize = AvroSerializer(client, AVRO_V1)
    rows = events(5)
    good = [serialize(row, CTX) for row in rows]
    values: list[bytes | None] = [
        good[0],
        b"\x01" + good[1][1:],  # wrong magic byte
        b"\x00" + struct.pack(">I", 9999) + good[2][5:],  # an id the registry lacks
        good[3][:-4],  # truncated
        b'{"payment": {"amount": 1}}',  # plain JSON on an Avro topic
        None,
        good[4],
    ]
    prepared = _prepare(values, _reader(client, "avro"))
    reasons = {p.index: p.reason for p in prepared.rejected}
    assert reasons == {
        1: "wrong_format",
        2: "unknown_schema",
        3: "undecodable",
        4: "wrong_format",
        5: "empty_value",
    }
    details = {p.index: p.detail for p in prepared.rejected}
    assert "schema id 9999 is not in the schema registry" in details[2]
    assert "magic byte" in details[1]
    assert prepared.valid_rows.tolist() == [0, 6]
    assert np.array_equal(prepared.features, _offline([rows[0], rows[4]]))


def test_trailing_bytes_after_an_avro_record_are_undecodable() -> None:
    client = _registry()
    value = AvroSerializer(client, AVRO_V1)(events(1)[0], CTX) + b"\x00\x00"
    prepared = _prepare([value], _reader(client, "avro"))
    assert [(p.reason, "2 bytes are left" in p.detail) for p in prepared.rejected] == [
        ("undecodable", True)
    ]


def test_a_protobuf_id_on_an_avro_reader_is_wrong_format() -> None:
    client = _registry()
    message_class = protobuf_event_class()
    value = ProtobufSerializer(message_class, client, {"use.deprecated.format": False})(
        to_protobuf(message_class, events(1)[0]), CTX
    )
    prepared = _prepare([value], _reader(client, "avro"))
    assert [p.reason for p in prepared.rejected] == ["wrong_format"]
    assert "is a PROTOBUF schema, not AVRO" in prepared.rejected[0].detail


def test_protobuf_events_decode_to_the_offline_features() -> None:
    client = _registry()
    message_class = protobuf_event_class()
    serialize = ProtobufSerializer(message_class, client, {"use.deprecated.format": False})
    rows = events(5)
    rows[2]["distance_km"] = 0.0  # a proto3 default is absent on the wire, still 0
    values = [serialize(to_protobuf(message_class, row), CTX) for row in rows]
    prepared = _prepare(values, _reader(client, "protobuf"))
    assert prepared.rejected == ()
    assert np.array_equal(prepared.features, _offline(rows))
    truncated = _prepare([values[0][:-3]], _reader(client, "protobuf"))
    assert [p.reason for p in truncated.rejected] == ["undecodable"]


def test_json_schema_events_are_validated_and_decoded() -> None:
    client = _registry()
    serialize = JSONSerializer(json.dumps(JSON_SCHEMA), client)
    rows = events(4)
    values = [serialize(row, CTX) for row in rows]
    # Valid JSON with the framing, but not the schema's shape: undecodable.
    values.append(values[0][:5] + b'{"payment": {"amount": "lots", "risk": 1}, "distance_km": 1}')
    prepared = _prepare(values, _reader(client, "json_schema"))
    assert [(p.index, p.reason) for p in prepared.rejected] == [(4, "undecodable")]
    assert "does not match its JSON Schema" in prepared.rejected[0].detail
    assert np.array_equal(prepared.features, _offline(rows))


class _FlakySource:
    """A registry that is down for the first ``failures`` calls, then answers."""

    def __init__(self, failures: int, schema: str) -> None:
        self.failures = failures
        self.calls = 0
        self._schema = schema

    def schema(self, schema_id: int, schema_type: str) -> tuple[str, str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise RegistryUnavailableError("registry down")
        return "AVRO", self._schema


def test_a_registry_outage_waits_and_never_dead_letters() -> None:
    client = _registry()
    rows = events(3)
    values = [AvroSerializer(client, AVRO_V1)(row, CTX) for row in rows]
    source = _FlakySource(3, AVRO_V1)
    waits: list[str] = []
    sleeps: list[float] = []
    reader = RecordReader(
        "avro", source, retry_s=0.25, on_wait=lambda e: waits.append(str(e)), sleep=sleeps.append
    )
    prepared = _prepare(values, reader)
    assert prepared.rejected == ()
    assert np.array_equal(prepared.features, _offline(rows))
    assert waits == ["registry down"] * 3
    assert sleeps == [0.25] * 3
    assert source.calls == 4


def test_the_schema_cache_is_bounded_and_refetches_an_evicted_id() -> None:
    client = _registry()
    old, new = AvroSerializer(client, AVRO_V1), AvroSerializer(client, AVRO_V2)
    row = events(1)[0]
    values = [old(row, CTX), new({**row, "channel": "x"}, CTX), old(row, CTX)]
    reader = _reader(client, "avro", cache_size=1)
    assert reader.decode_batch(values, 1 << 20)[2] == []
    assert reader.schema_fetches == 3


def test_json_field_paths_and_the_explicit_mapping() -> None:
    spec = FeatureSpec(("amount", "risk.score", "plain"), np.zeros(3), np.ones(3))
    paths = compile_paths(spec.names, {"amount": "payment.amount", "risk.score": ["risk.score"]})
    assert paths == (("payment", "amount"), ("risk.score",), ("plain",))
    values: list[bytes | None] = [
        b'{"payment": {"amount": 12.5}, "risk.score": 0.5, "plain": 1}',
        b'{"payment": 3, "risk.score": 0.5, "plain": 1}',
        b'{"payment": {"amount": "7"}, "risk.score": true, "plain": 2}',
    ]
    assert paths is not None
    prepared = prepare_batch(
        values, spec, standardize=False, projector=lambda d: project(d, spec.names, paths)
    )
    assert prepared.features.tolist() == [[12.5, 0.5, 1.0], [7.0, 1.0, 2.0]]
    assert [(p.index, p.reason, p.detail) for p in prepared.rejected] == [
        (1, "missing_feature", "feature 'amount' is missing")
    ]


def test_top_level_names_need_no_projection() -> None:
    assert compile_paths(("a", "b")) is None
    assert compile_paths(("a", "b"), {"a": "a"}) is None


def test_carried_headers_pick_the_named_ones_and_never_streamers_own() -> None:
    from streamer.core.headers import carried_headers

    rows = [[("traceparent", b"00-ab"), ("tenant", b"\xff\x00"), ("streamer.reason", b"x")], []]
    assert carried_headers(rows, "traceparent") == [[("traceparent", b"00-ab")], []]
    assert carried_headers(rows, " tenant , traceparent ") == [
        [("traceparent", b"00-ab"), ("tenant", b"\xff\x00")],
        [],
    ]
    assert carried_headers(rows, "*") == [[("traceparent", b"00-ab"), ("tenant", b"\xff\x00")], []]
    assert carried_headers(rows, "") is None
    assert carried_headers(None, "*") is None
    assert carried_headers([[], []], "traceparent") is None
    assert carried_headers([[("other", b"1")], []], "traceparent") is None


def test_record_columns_keep_headers_through_extend_and_take() -> None:
    from streamer.core.records import RecordColumns

    columns = RecordColumns.empty()
    columns.extend(RecordColumns([1, 2], [None, None], [b"a", b"b"], [0, 0], [[("h", b"1")], []]))
    columns.extend(RecordColumns([3], [None], [b"c"], [0]))
    assert columns.headers == [[("h", b"1")], [], []]
    head = columns.take(1)
    assert (head.offsets, head.headers) == ([1], [[("h", b"1")]])
    assert (columns.offsets, columns.headers) == ([2, 3], [[], []])


def test_avro_outputs_read_back_with_avro_deserializer() -> None:
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from streamer.clients.registry import AvroOutputWriter

    client = _registry()
    settings = FormatSettings(output="avro", registry_url="mock://unit")
    writer = AvroOutputWriter(settings, "scores", RegistrySource(settings, client))
    fields: dict[str, Any] = {
        "topic": "payments",
        "partition": 3,
        "offsets": [10, 11, 12],
        "keys": [b"a", None, b"\xff"],
        "rows": np.array([0, 2]),
        "model": {"name": "m", "version": "v1"},
        "scored_at": "2026-12-02T12:00:00.000Z",
    }
    single = writer.encode(**fields, predictions=np.array([0.25, 1 / 3]), output_names=("score",))
    multi = writer.encode(
        **fields,
        predictions=np.array([[0.5, 0.5], [0.1, 0.9]]),
        output_names=("proba_0", "proba_1"),
    )
    read = AvroDeserializer(client)
    ctx = SerializationContext("scores", MessageField.VALUE)
    docs = [read(value, ctx) for value in single]
    assert docs == [
        {"key": "a", "topic": "payments", "partition": 3, "offset": 10, "score": 0.25,
         "model": {"name": "m", "version": "v1"}, "scored_at": "2026-12-02T12:00:00.000Z"},
        {"key": "\\xff", "topic": "payments", "partition": 3, "offset": 12, "score": 1 / 3,
         "model": {"name": "m", "version": "v1"}, "scored_at": "2026-12-02T12:00:00.000Z"},
    ]  # fmt: skip
    assert [read(value, ctx)["proba_1"] for value in multi] == [0.5, 0.9]
    assert client.get_subjects() == ["scores-value"]
    assert len(client.get_versions("scores-value")) == 2  # one schema per set of output names

    # Reason codes (model.explain_top_k) are an array of records in the Avro output.
    explained = writer.encode(
        **fields,
        predictions=np.array([0.25, 1 / 3]),
        output_names=("score",),
        reasons=(
            b'[{"feature":"amount","contribution":1.92},{"feature":"age","contribution":-0.5}]',
            b"[]",
        ),
    )
    assert [read(value, ctx)["reasons"] for value in explained] == [
        [{"feature": "amount", "contribution": 1.92}, {"feature": "age", "contribution": -0.5}],
        [],
    ]
    assert len(client.get_versions("scores-value")) == 3

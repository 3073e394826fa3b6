"""Record formats: JSON objects, or Avro, Protobuf and JSON Schema in the Confluent wire format.

A schema-registry record is a magic byte (0), a 4-byte big-endian schema id,
then the payload (for Protobuf, first a list of message indexes). The schema of
each id is fetched once from a :class:`SchemaSource` and kept, parsed, in a
bounded cache, so a topic whose schema evolves is read with each record's own
writer's schema. The bytes are decoded by kept libraries, never by hand:
fastavro for Avro, protobuf for Protobuf (the framing by confluent-kafka's
``SchemaId``), orjson and jsonschema for JSON Schema.

No Kafka client and no network here: the registry comes in as a
:class:`SchemaSource` (``streamer.clients.registry`` wraps confluent-kafka's
``SchemaRegistryClient``).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from streamer.core.dead_letters import NOT_OBJECT, UNDECODABLE, UNKNOWN_SCHEMA, WRONG_FORMAT
from streamer.core.features import RowProblem, _InvalidValueError, decode_value

JSON = "json"
AVRO = "avro"
PROTOBUF = "protobuf"
JSON_SCHEMA = "json_schema"
INPUT_FORMATS = (JSON, AVRO, PROTOBUF, JSON_SCHEMA)
SCHEMA_TYPES = {AVRO: "AVRO", PROTOBUF: "PROTOBUF", JSON_SCHEMA: "JSON"}

_MAGIC_BYTE = 0
_FRAME_BYTES = 5  # the magic byte and the 4-byte schema id


class SchemaNotFoundError(Exception):
    """The registry answered that it has no schema with this id."""


class RegistryUnavailableError(Exception):
    """The registry could not be asked (down, refusing, timing out): wait and retry."""


class SchemaSource(Protocol):
    """Where the schemas come from: ``schema(id)`` is ``(schema_type, schema_str)``."""

    def schema(self, schema_id: int, schema_type: str) -> tuple[str, str]:  # noqa: D102
        ...


Decode = Callable[[bytes], Any]


def _avro_decoder(schema_str: str) -> Decode:
    import fastavro  # noqa: PLC0415 - only the Avro format needs it

    parsed = fastavro.parse_schema(json.loads(schema_str))
    reader = fastavro.schemaless_reader

    def decode(value: bytes) -> Any:
        buffer = io.BytesIO(value)
        buffer.seek(_FRAME_BYTES)
        doc = reader(buffer, parsed, None)
        left = len(value) - buffer.tell()
        if left:
            msg = f"{left} bytes are left after the Avro record"
            raise ValueError(msg)
        return doc

    return decode


def _json_schema_decoder(schema_str: str) -> Decode:
    import jsonschema  # noqa: PLC0415 - only the JSON Schema format needs it

    schema = json.loads(schema_str)
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)

    def decode(value: bytes) -> Any:
        doc = orjson.loads(memoryview(value)[_FRAME_BYTES:])
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        if error is not None:
            msg = f"the document does not match its JSON Schema: {error.message}"
            raise ValueError(msg)
        return doc

    return decode


def _protobuf_decoder(schema_str: str) -> Decode:
    from confluent_kafka.schema_registry.serde import SchemaId  # noqa: PLC0415
    from google.protobuf import (  # noqa: PLC0415
        any_pb2,
        descriptor_pb2,
        descriptor_pool,
        duration_pb2,
        empty_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    )
    from google.protobuf.message_factory import GetMessageClass  # noqa: PLC0415

    file_proto = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(schema_str))
    pool = descriptor_pool.DescriptorPool()
    for known in (any_pb2, duration_pb2, empty_pb2, struct_pb2, timestamp_pb2, wrappers_pb2):
        pool.AddSerializedFile(known.DESCRIPTOR.serialized_pb)
    pool.Add(file_proto)
    classes: dict[tuple[int, ...], Any] = {}

    def message_class(indexes: tuple[int, ...]) -> Any:
        cls = classes.get(indexes)
        if cls is None:
            container: Any = file_proto.message_type
            names = []
            for index in indexes:
                message = container[index]
                names.append(message.name)
                container = message.nested_type
            full = ".".join(([file_proto.package] if file_proto.package else []) + names)
            cls = classes[indexes] = GetMessageClass(pool.FindMessageTypeByName(full))
        return cls

    def decode(value: bytes) -> Any:
        framing = SchemaId("PROTOBUF")
        payload = framing.from_bytes(io.BytesIO(value))
        message = message_class(tuple(framing.message_indexes or [0]))()
        message.ParseFromString(payload.read())
        return _message_dict(message)

    return decode


def _message_dict(message: Any) -> dict[str, Any]:
    """A message's fields by name; a proto3 scalar left at its default is its default (0)."""
    doc: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if field.message_type is not None and not _is_repeated(field):
            if message.HasField(name):
                doc[name] = _message_dict(getattr(message, name))
        elif _is_repeated(field):
            doc[name] = list(getattr(message, name))
        elif not field.has_presence or message.HasField(name):
            doc[name] = getattr(message, name)
    return doc


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.28; label before
    return bool(repeated) if repeated is not None else field.label == field.LABEL_REPEATED


_DECODERS: dict[str, Callable[[str], Decode]] = {
    AVRO: _avro_decoder,
    PROTOBUF: _protobuf_decoder,
    JSON_SCHEMA: _json_schema_decoder,
}


class RecordReader:
    """Decodes the record values of one input format into documents (dicts).

    For the registry formats, the parsed schema of each id is kept in an LRU
    cache of ``cache_size`` ids. A record whose schema is not cached while the
    registry is unreachable is not dead-lettered: ``decode_batch`` waits
    ``retry_s`` and asks again, until the registry answers.
    """

    def __init__(
        self,
        input_format: str = JSON,
        source: SchemaSource | None = None,
        *,
        cache_size: int = 1000,
        retry_s: float = 1.0,
        on_wait: Callable[[Exception], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if input_format not in INPUT_FORMATS:
            msg = f"unknown input format {input_format!r} (known: {', '.join(INPUT_FORMATS)})"
            raise ValueError(msg)
        if input_format != JSON and source is None:
            msg = f"the {input_format} format needs a schema registry"
            raise ValueError(msg)
        self.input_format = input_format
        self._source = source
        self._cache_size = cache_size
        self._retry_s = retry_s
        self._on_wait = on_wait
        self._sleep = sleep
        self._decoders: OrderedDict[int, Decode] = OrderedDict()
        self._unknown: OrderedDict[int, str] = OrderedDict()
        self.schema_fetches = 0

    def decode_batch(
        self, values: Sequence[bytes | None], max_record_bytes: int
    ) -> tuple[list[dict[str, Any]], list[int], list[RowProblem]]:
        """(documents, their row indexes, the rows that do not decode), in batch order."""
        docs: list[dict[str, Any]] = []
        rows: list[int] = []
        rejected: list[RowProblem] = []
        for index, value in enumerate(values):
            try:
                docs.append(self.decode(value, max_record_bytes))
                rows.append(index)
            except _InvalidValueError as exc:
                rejected.append(RowProblem(index, exc.reason, exc.detail))
        return docs, rows, rejected

    def decode(self, value: bytes | None, max_record_bytes: int) -> dict[str, Any]:
        """One record value as a document, or raise _InvalidValueError with its reason."""
        if self.input_format == JSON:
            return decode_value(value, max_record_bytes)
        if not value or len(value) > max_record_bytes:
            return decode_value(value, max_record_bytes)  # empty_value or oversized
        if len(value) < _FRAME_BYTES or value[0] != _MAGIC_BYTE:
            shown = value[:_FRAME_BYTES].hex()
            detail = (
                f"value does not start with the schema registry's magic byte 0 and a 4-byte "
                f"schema id (first bytes: {shown}); is the topic {self.input_format}?"
            )
            raise _InvalidValueError(WRONG_FORMAT, detail)
        schema_id = int.from_bytes(value[1:_FRAME_BYTES], "big")
        decode = self._decoder(schema_id)
        try:
            doc = decode(value)
        except Exception as exc:
            detail = (
                f"value does not decode with {self.input_format} schema id {schema_id}: "
                f"{type(exc).__name__}: {exc}"
            )
            raise _InvalidValueError(UNDECODABLE, detail[:1000]) from None
        if not isinstance(doc, dict):
            detail = f"value decodes to {type(doc).__name__}, expected a record"
            raise _InvalidValueError(NOT_OBJECT, detail)
        return doc

    def _decoder(self, schema_id: int) -> Decode:
        decode = self._decoders.get(schema_id)
        if decode is not None:
            self._decoders.move_to_end(schema_id)
            return decode
        if schema_id in self._unknown:
            raise _InvalidValueError(UNKNOWN_SCHEMA, self._unknown[schema_id])
        schema_type, schema_str = self._fetch(schema_id)
        expected = SCHEMA_TYPES[self.input_format]
        if schema_type != expected:
            detail = (
                f"schema id {schema_id} is a {schema_type} schema, not {expected} "
                f"(format.input = {self.input_format!r})"
            )
            raise _InvalidValueError(WRONG_FORMAT, detail)
        try:
            decode = _DECODERS[self.input_format](schema_str)
        except Exception as exc:
            detail = f"schema id {schema_id} cannot be parsed: {type(exc).__name__}: {exc}"
            raise _InvalidValueError(UNDECODABLE, detail[:1000]) from None
        self._decoders[schema_id] = decode
        if len(self._decoders) > self._cache_size:
            self._decoders.popitem(last=False)
        return decode

    def _fetch(self, schema_id: int) -> tuple[str, str]:
        """The schema of ``schema_id``, asking until the registry answers."""
        assert self._source is not None
        while True:
            try:
                self.schema_fetches += 1
                return self._source.schema(schema_id, SCHEMA_TYPES[self.input_format])
            except SchemaNotFoundError:
                detail = f"schema id {schema_id} is not in the schema registry"
                self._unknown[schema_id] = detail
                if len(self._unknown) > self._cache_size:
                    self._unknown.popitem(last=False)
                raise _InvalidValueError(UNKNOWN_SCHEMA, detail) from None
            except RegistryUnavailableError as exc:
                if self._on_wait is not None:
                    self._on_wait(exc)
                self._sleep(self._retry_s)


def compile_paths(
    names: Sequence[str], explicit: Mapping[str, str | Sequence[str]] | None = None
) -> tuple[tuple[str, ...], ...] | None:
    """The path of each feature into a document, or None when every feature is top-level.

    A dotted name is a path (``payment.amount``); ``explicit`` maps a name to a
    dotted path, or to a list of keys (for keys that contain dots themselves).
    """
    explicit = explicit or {}
    paths = []
    for name in names:
        target = explicit.get(name, name)
        paths.append(tuple(target.split(".")) if isinstance(target, str) else tuple(target))
    if all(path == (name,) for path, name in zip(paths, names, strict=True)):
        return None
    return tuple(paths)


_ABSENT = object()


def project(
    docs: list[dict[str, Any]], names: Sequence[str], paths: tuple[tuple[str, ...], ...]
) -> list[dict[str, Any]]:
    """Each document as ``{feature name: value}``; a path that leads nowhere leaves the name out."""
    pairs = list(zip(names, paths, strict=True))
    out = []
    for doc in docs:
        row = {}
        for name, path in pairs:
            value: Any = doc
            for part in path:
                value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
                if value is _ABSENT:
                    break
            if value is not _ABSENT:
                row[name] = value
        out.append(row)
    return out


_REASONS_FIELD: dict[str, Any] = {
    "name": "reasons",
    "type": {
        "type": "array",
        "items": {
            "type": "record",
            "name": "Reason",
            "fields": [
                {"name": "feature", "type": "string"},
                {"name": "contribution", "type": "double"},
            ],
        },
    },
}
"""The ``reasons`` field of an output with reason codes (``model.explain_top_k``)."""


def avro_output_schema(output_names: Sequence[str], *, with_reasons: bool = False) -> str:
    """The Avro schema of the output document (docs/records.md#output) for these outputs."""
    fields: list[dict[str, Any]] = [
        {"name": "key", "type": ["null", "string"]},
        {"name": "topic", "type": "string"},
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        *({"name": name, "type": "double"} for name in output_names),
        {
            "name": "model",
            "type": {
                "type": "record",
                "name": "Model",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                ],
            },
        },
        {"name": "scored_at", "type": "string"},
    ]
    if with_reasons:
        fields.insert(4 + len(output_names), _REASONS_FIELD)
    return json.dumps(
        {"type": "record", "name": "Prediction", "namespace": "streamer", "fields": fields}
    )


class AvroOutputEncoder:
    """Encodes output documents as Avro with the wire-format prefix of ``schema_id`` (fastavro)."""

    def __init__(self, schema_id: int, schema_str: str) -> None:
        import fastavro  # noqa: PLC0415

        self._parsed = fastavro.parse_schema(json.loads(schema_str))
        self._write = fastavro.schemaless_writer
        self._prefix = bytes([_MAGIC_BYTE]) + schema_id.to_bytes(4, "big")

    def encode(
        self,
        *,
        topic: str,
        partition: int,
        offsets: Sequence[int],
        keys: Sequence[bytes | None],
        rows: Any,
        predictions: Any,
        output_names: tuple[str, ...],
        model: dict[str, str],
        scored_at: str,
        reasons: Sequence[bytes] = (),
    ) -> list[bytes]:
        """One Avro record per valid row, in row order (the fields of encode_predictions).

        ``reasons`` holds each valid row's reason codes as the JSON array the
        JSON output writes; the schema must then have been made ``with_reasons``.
        """
        values = predictions.tolist()
        out = []
        for position, row in enumerate(rows.tolist()):
            key = keys[row]
            doc: dict[str, Any] = {
                "key": None if key is None else key.decode("utf-8", "backslashreplace"),
                "topic": topic,
                "partition": partition,
                "offset": offsets[row],
                "model": model,
                "scored_at": scored_at,
            }
            scores = values[position]
            if predictions.ndim == 1:
                doc[output_names[0]] = scores
            else:
                doc.update(zip(output_names, scores, strict=True))
            if reasons:
                doc["reasons"] = orjson.loads(reasons[position])
            buffer = io.BytesIO()
            buffer.write(self._prefix)
            self._write(buffer, self._parsed, doc)
            out.append(buffer.getvalue())
        return out

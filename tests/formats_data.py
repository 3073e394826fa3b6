"""Events, schemas and a Protobuf message class shared by the format tests.

The Protobuf class is built at test time from a FileDescriptorProto with
protobuf's own descriptor APIs (no generated _pb2 file, no hand-encoded bytes).
"""

from __future__ import annotations

import json
import random
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

AVRO_V1 = json.dumps(
    {
        "type": "record",
        "name": "Payment",
        "namespace": "streamer.test",
        "fields": [
            {"name": "id", "type": "string"},
            {
                "name": "payment",
                "type": {
                    "type": "record",
                    "name": "Amount",
                    "fields": [
                        {"name": "amount", "type": "double"},
                        {"name": "risk", "type": "float"},
                    ],
                },
            },
            {"name": "distance_km", "type": "double"},
        ],
    }
)
# v2 adds a field with a default: a backward-compatible evolution.
_v2 = json.loads(AVRO_V1)
_v2["fields"].append({"name": "channel", "type": "string", "default": "unknown"})
AVRO_V2 = json.dumps(_v2)

JSON_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Payment",
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "payment": {
            "type": "object",
            "properties": {"amount": {"type": "number"}, "risk": {"type": "number"}},
            "required": ["amount", "risk"],
        },
        "distance_km": {"type": "number"},
    },
    "required": ["payment", "distance_km"],
}


def events(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Nested payment events; ``risk`` is a float32 value, as Avro 'float' keeps it."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        risk = rng.random()
        risk32 = float(__import__("numpy").float32(risk))
        rows.append(
            {
                "id": f"p-{seed}-{index}",
                "payment": {"amount": round(rng.uniform(1, 500), 2), "risk": risk32},
                "distance_km": rng.uniform(0, 80),
            }
        )
    return rows


def protobuf_event_class() -> Any:
    """The message class of ``Payment { string id; Amount payment; double distance_km; }``."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="streamer_test_payment.proto", package="streamer.test", syntax="proto3"
    )
    amount = file_proto.message_type.add(name="Amount")
    amount.field.add(name="amount", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)
    amount.field.add(name="risk", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT)
    payment = file_proto.message_type.add(name="Payment")
    payment.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    payment.field.add(
        name="payment",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".streamer.test.Amount",
    )
    payment.field.add(
        name="distance_km", number=3, type=descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return GetMessageClass(pool.FindMessageTypeByName("streamer.test.Payment"))


def to_protobuf(message_class: Any, event: dict[str, Any]) -> Any:
    """The event as a message of ``message_class``."""
    message = message_class(id=event["id"], distance_km=event["distance_km"])
    message.payment.amount = event["payment"]["amount"]
    message.payment.risk = event["payment"]["risk"]
    return message

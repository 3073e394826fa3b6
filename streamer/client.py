"""The default Kafka client (kafka-python), under its historical import path.

``from streamer.client import GroupConsumer, Producer, ensure_topics, TP, Record``
(and ``RecordColumns``, what a poll returns)
keeps working; the backends themselves live in :mod:`streamer.clients`.
"""

from __future__ import annotations

from streamer.clients.base import (
    TP,
    ConsumerClient,
    DeliveryFuture,
    OutputGroup,
    ProducerClient,
    Record,
    RecordColumns,
    send_batch,
)
from streamer.clients.kafka_python import GroupConsumer, Producer, ensure_topics

__all__ = [
    "TP",
    "ConsumerClient",
    "DeliveryFuture",
    "GroupConsumer",
    "OutputGroup",
    "Producer",
    "ProducerClient",
    "Record",
    "RecordColumns",
    "ensure_topics",
    "send_batch",
]

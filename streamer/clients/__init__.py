"""Kafka client backends behind one small interface (:mod:`streamer.clients.base`).

``kafka.client`` picks one: ``kafka-python`` (the default, pure Python) or
``confluent`` (librdkafka through confluent-kafka, the ``confluent`` extra).
Each backend module is imported only when it is chosen, and only it imports
its client library. ``score-file`` runs on a third backend, over files
(:func:`streamer.clients.file.file_backend`), built for the files of one run.
"""

from __future__ import annotations

import importlib

from streamer.clients.base import (
    Backend,
    BatchDelivery,
    ChangelogReader,
    ConsumerClient,
    ConsumerFactory,
    DeliveryFuture,
    GroupReader,
    OutputGroup,
    ProducerClient,
    ProducerFactory,
    send_batch,
)
from streamer.core.records import TP, Record, RecordColumns
from streamer.errors import ConfigError

BACKENDS: dict[str, tuple[str, str]] = {
    # name -> (module, the pip extra that installs its library)
    "kafka-python": ("streamer.clients.kafka_python", ""),
    "confluent": ("streamer.clients.confluent", "confluent"),
}


def backend(name: str) -> Backend:
    """The backend called ``name`` (a ``kafka.client`` value).

    Raises:
        ConfigError: The name is unknown, or its client library is not installed.
    """
    if name not in BACKENDS:
        known = ", ".join(repr(n) for n in BACKENDS)
        msg = f"config error: kafka.client must be one of {known}, got {name!r}"
        raise ConfigError(msg)
    module_name, extra = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = (
            f"config error: kafka.client={name!r} needs {exc.name or 'its client library'}: "
            f"pip install 'streamer[{extra}]'"
        )
        raise ConfigError(msg) from None
    return Backend(
        name=name,
        consumer=module.GroupConsumer,
        producer=module.Producer,
        ensure_topics=module.ensure_topics,
        group_reader=module.GroupReader,
        changelog_reader=module.ChangelogReader,
        ensure_changelog=module.ensure_changelog,
        partition_counts=module.partition_counts,
    )


__all__ = [
    "BACKENDS",
    "TP",
    "Backend",
    "BatchDelivery",
    "ChangelogReader",
    "ConsumerClient",
    "ConsumerFactory",
    "DeliveryFuture",
    "GroupReader",
    "OutputGroup",
    "ProducerClient",
    "ProducerFactory",
    "Record",
    "RecordColumns",
    "backend",
    "send_batch",
]

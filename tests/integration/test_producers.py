"""Both producer backends' ``send_batch`` against the real broker: where each record lands."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from kafka.partitioner.default import murmur2

from streamer.clients import OutputGroup, backend
from streamer.clients import kafka_python as kafka_python_backend
from streamer.clients.base import SendFailure
from streamer.settings import KafkaSettings

from .helpers import BACKENDS, Cluster

pytestmark = pytest.mark.integration

PARTITIONS = 3
KEYS = [f"card-{n:03d}".encode() for n in range(60)]
# Above the size the kafka-python backend appends directly: it takes `send` instead.
LARGE = b"x" * (kafka_python_backend._DIRECT_MAX_BYTES + 1)


def _murmur2_partition(key: bytes) -> int:
    """The Java client's (and kafka-python's) default partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def _send_and_wait(
    client: str, settings: KafkaSettings, groups: list[OutputGroup]
) -> list[Sequence[SendFailure]]:
    """One ``send_batch`` on a fresh producer of ``client``; every ``done`` call it got."""
    outcomes: list[Sequence[SendFailure]] = []
    settled = threading.Event()

    def done(failures: Sequence[SendFailure]) -> None:
        outcomes.append(failures)
        settled.set()

    producer = backend(client).producer(settings)
    try:
        producer.send_batch(groups, done)
        assert settled.wait(30), "the batch was never reported done"
    finally:
        producer.close()
    return outcomes


@pytest.mark.parametrize("client", BACKENDS)
def test_send_batch_puts_every_record_in_its_key_partition_in_order_with_its_headers(
    client: str, cluster: Cluster
) -> None:
    topics = cluster.new_topics(partitions=1, output_partitions=PARTITIONS)
    settings = cluster.settings(topics, kafka={"client": client}).kafka
    values = [f"value-{n}".encode() for n in range(len(KEYS))]
    values[7] = LARGE
    headers: list[list[tuple[str, bytes]] | None] = [None] * len(KEYS)
    headers[45] = [("streamer.reason", b"invalid_json")]
    keys: list[bytes | None] = list(KEYS)
    groups = [
        OutputGroup(topics.output, values[:40], keys[:40]),
        OutputGroup(topics.output, values[40:], keys[40:], headers=headers[40:]),
        OutputGroup(topics.output, [b"no key"], [None]),
        OutputGroup(topics.output, [b"again"], [keys[3]]),
    ]
    assert _send_and_wait(client, settings, groups) == [[]]
    outputs = cluster.read(topics.output)
    assert len(outputs.records) == len(KEYS) + 2
    by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for (partition, _offset), (key, value, record_headers) in sorted(outputs.records.items()):
        by_partition.setdefault(partition, []).append((key, value))
        if key is not None:
            assert partition == _murmur2_partition(key), f"{key!r} landed on {partition}"
        if value == values[45]:
            assert record_headers == [("streamer.reason", b"invalid_json")]
        else:
            assert not record_headers
    sent = [(k, v) for k, v in zip(keys, values, strict=True)] + [(keys[3], b"again")]
    for partition, seen in by_partition.items():
        keyed = [record for record in seen if record[0] is not None]
        assert keyed == [r for r in sent if _murmur2_partition(r[0]) == partition]  # type: ignore[arg-type]
    assert sum(1 for seen in by_partition.values() for key, _ in seen if key is None) == 1


@pytest.mark.parametrize("client", BACKENDS)
def test_a_record_above_the_size_limit_fails_alone_as_a_record_failure_at_its_index(
    client: str, cluster: Cluster
) -> None:
    topics = cluster.new_topics(partitions=1)
    settings = cluster.settings(
        topics, kafka={"client": client, "max_request_bytes": 100_000}
    ).kafka
    values = [b"small-0", b"x" * 200_000, b"small-2", b"y" * 150_000, b"small-4"]
    headers: list[list[tuple[str, bytes]] | None] = [None, None, None, [("h", b"1")], None]
    groups = [
        OutputGroup(topics.output, values[:3], [b"k0", b"k1", b"k2"]),
        OutputGroup(topics.output, values[3:], [b"k3", b"k4"], headers=headers[3:]),
    ]
    (failures,) = _send_and_wait(client, settings, groups)
    assert [(f.index, f.record_level) for f in failures] == [(1, True), (3, True)]
    # kafka-python: MessageSizeTooLargeError [Error 10]; confluent: MSG_SIZE_TOO_LARGE (10).
    assert all(
        "MessageSizeTooLarge" in f.error or "MSG_SIZE_TOO_LARGE" in f.error for f in failures
    )
    outputs = cluster.read(topics.output)
    assert [value for _key, value, _h in outputs.records.values()] == [
        b"small-0",
        b"small-2",
        b"small-4",
    ]


def test_the_kafka_python_producer_appends_directly_with_the_installed_kafka_python(
    cluster: Cluster,
) -> None:
    """The fast path depends on kafka-python internals: an upgrade that changes
    them must fail here, not silently fall back to the slower ``send``."""
    topics = cluster.new_topics(partitions=1)
    producer = kafka_python_backend.Producer(cluster.settings(topics).kafka)
    try:
        assert producer._direct_append is not None
    finally:
        producer.close()

"""Both backends' changelog reader and ``ensure_changelog`` against the real broker."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterable

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from streamer.clients import BACKENDS as BACKEND_MODULES
from streamer.clients import backend
from streamer.clients.changelog import ChangelogRecord
from streamer.devtools.broker import free_port
from streamer.errors import BrokerError, ConfigError
from streamer.settings import KafkaSettings

from .helpers import BACKENDS, PROCESS_TIMEOUT_S, Cluster

pytestmark = pytest.mark.integration

# Keys repeat and every seventh record is a tombstone, as in a store's changelog.
RECORDS: list[tuple[bytes, bytes | None]] = [
    (f"card-{n % 40:03d}".encode(), None if n % 7 == 3 else f"state-{n}".encode())
    for n in range(300)
]


def _produce(cluster: Cluster, topic: str, partition: int) -> list[ChangelogRecord]:
    """Produce RECORDS to one partition; what landed where, as (offset, key, value)."""
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap_servers.split(","), acks="all")
    try:
        futures = [
            (key, value, producer.send(topic, key=key, value=value, partition=partition))
            for key, value in RECORDS
        ]
        producer.flush(timeout=PROCESS_TIMEOUT_S)
        return [(f.get(timeout=PROCESS_TIMEOUT_S).offset, k, v) for k, v, f in futures]
    finally:
        producer.close(timeout=5)


def _flat(chunks: Iterable[list[ChangelogRecord]]) -> list[ChangelogRecord]:
    return [record for chunk in chunks for record in chunk]


def _described(cluster: Cluster, topic: str) -> tuple[int, str | None]:
    """The topic's partition count and cleanup.policy, asked by a client of the test's own."""
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers.split(","))
    try:
        (described,) = admin.describe_topics([topic])
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )["topic"][topic]
    finally:
        admin.close()
    return len(described["partitions"]), configs.get("cleanup.policy", {}).get("value")


def _create(cluster: Cluster, topic: str, partitions: int, configs: dict[str, str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers.split(","))
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "configs": configs}})
    finally:
        admin.close()


def _new_changelog(cluster: Cluster, client: str, partitions: int) -> tuple[KafkaSettings, str]:
    """Settings for ``client`` and a new changelog topic made by its ``ensure_changelog``."""
    topics = cluster.new_topics(partitions=partitions)
    settings = cluster.settings(topics, kafka={"client": client}).kafka
    changelog = f"{topics.input}.state-changelog"
    ensure = backend(client).ensure_changelog
    assert ensure is not None
    ensure(settings, changelog, topics.input)
    return settings, changelog


@pytest.mark.parametrize("client", BACKENDS)
def test_the_reader_reads_back_every_record_with_its_offset_and_the_watermarks_of_fetches(
    client: str, cluster: Cluster
) -> None:
    settings, changelog = _new_changelog(cluster, client, partitions=2)
    produced = _produce(cluster, changelog, partition=0)
    assert [offset for offset, _, _ in produced] == list(range(len(RECORDS)))
    factory = backend(client).changelog_reader
    assert factory is not None

    reader = factory(settings, changelog)
    try:
        assert reader.high_watermark(1, timeout_s=10) == 0, "an empty partition ends at 0"
        high = reader.high_watermark(0, timeout_s=10)
        assert high == len(RECORDS)

        chunks = list(reader.read(0, 0, high))
        assert all(chunks), "no empty chunk"
        assert _flat(chunks) == produced, "keys, values, tombstones (None) and offsets"
        assert _flat(reader.read(0, high - 1, high)) == produced[-1:], "the last record alone"
        assert _flat(reader.read(0, 10, 13)) == produced[10:13]
        assert list(reader.read(1, 0, 0)) == []
        assert reader.high_watermark(0, timeout_s=10) == high, "again after a read"
        abandoned = reader.read(0, 0, high)
        next(abandoned)
        abandoned.close()
        assert _flat(reader.read(0, 5, 7)) == produced[5:7], "again after an abandoned read"
    finally:
        reader.close()


@pytest.mark.parametrize("client", BACKENDS)
def test_a_read_past_the_end_stops_with_a_broker_error_after_the_idle_timeout(
    client: str, cluster: Cluster
) -> None:
    settings, changelog = _new_changelog(cluster, client, partitions=1)
    module = importlib.import_module(BACKEND_MODULES[client][0])

    reader = module.ChangelogReader(settings, changelog, idle_timeout_s=1.0)
    try:
        with pytest.raises(BrokerError, match=rf"stalled: .* at {changelog}/0 .*before offset 3"):
            list(reader.read(0, 0, 3))
    finally:
        reader.close()


@pytest.mark.parametrize("client", BACKENDS)
def test_ensure_changelog_creates_it_compacted_like_the_input_and_refuses_one_that_cannot_serve(
    client: str, cluster: Cluster
) -> None:
    topics = cluster.new_topics(partitions=3)
    settings = cluster.settings(topics, kafka={"client": client}).kafka
    ensure = backend(client).ensure_changelog
    assert ensure is not None
    changelog = f"{topics.input}.state-changelog"

    ensure(settings, changelog, topics.input)
    assert _described(cluster, changelog) == (3, "compact")
    ensure(settings, changelog, topics.input)  # an existing, fitting one is kept

    smaller = f"{topics.input}.smaller"
    _create(cluster, smaller, 2, {"cleanup.policy": "compact"})
    with pytest.raises(ConfigError, match=rf"topic '{smaller}' has 2 partitions but the input"):
        ensure(settings, smaller, topics.input)

    deleting = f"{topics.input}.deleting"
    _create(cluster, deleting, 3, {"cleanup.policy": "delete"})
    with pytest.raises(ConfigError, match=rf"topic '{deleting}' has cleanup\.policy=delete"):
        ensure(settings, deleting, topics.input)

    missing = f"in-{uuid.uuid4().hex[:12]}"
    with pytest.raises(ConfigError, match=rf"kafka\.input_topic: topic '{missing}' does not"):
        ensure(settings, f"{missing}.state-changelog", missing)


@pytest.mark.parametrize("client", BACKENDS)
def test_an_unreachable_broker_is_one_line_broker_error(client: str) -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", bootstrap_timeout_s=1.0)
    chosen = backend(client)
    assert chosen.ensure_changelog is not None
    assert chosen.changelog_reader is not None

    with pytest.raises(
        BrokerError, match=r"^cannot start the changelog reader at kafka\.bootstrap"
    ):
        chosen.changelog_reader(settings, "changelog")
    with pytest.raises(
        BrokerError, match=r"^cannot connect the admin client at kafka\.bootstrap"
    ) as e:
        chosen.ensure_changelog(settings, "changelog", "input")
    assert "\n" not in str(e.value)

"""The demo generator's labels land on their transaction's partition, on both backends.

The truth of each label is checked in tests/unit/test_generator.py.
"""

from __future__ import annotations

import random

import orjson
import pytest

from streamer.clients import backend
from streamer.core.demo_data import LabelSchedule
from streamer.generator import DemoLabels, produce_demo
from streamer.settings import KafkaSettings

from .helpers import BACKENDS, Cluster

pytestmark = pytest.mark.integration

TRANSACTIONS = 2000


@pytest.mark.parametrize("client", BACKENDS)
def test_each_label_is_on_its_transactions_partition(client: str, cluster: Cluster) -> None:
    topics = cluster.new_topics(partitions=4)
    labels_topic = f"{topics.input}.labels"
    kafka = KafkaSettings(bootstrap_servers=cluster.bootstrap_servers, client=client)
    backend(client).ensure_topics(kafka, {labels_topic: 4})
    labels = DemoLabels(
        labels_topic, LabelSchedule(random.Random(3), share=0.5, delay_s=(0.0, 0.1))
    )
    sent = produce_demo(
        kafka, topics.input, rate=0, count=TRANSACTIONS, bad_ratio=0.01, seed=9, labels=labels
    )
    assert sent == TRANSACTIONS

    where: dict[str, int] = {}
    for (partition, _offset), (_key, value, _headers) in cluster.read(topics.input).records.items():
        assert value is not None
        if b"transaction_id" in value:
            where[orjson.loads(value)["transaction_id"]] = partition
    read = cluster.read(labels_topic).records
    assert len(read) == labels.sent > TRANSACTIONS // 3
    per_partition = dict.fromkeys(range(4), 0)
    for (partition, _offset), (_key, value, _headers) in read.items():
        assert value is not None
        label = orjson.loads(value)
        assert partition == where[label["transaction_id"]], label
        per_partition[partition] += 1
    assert all(per_partition.values()), per_partition  # keys spread over every partition
    assert {orjson.loads(v)["label"] for _k, v, _h in read.values() if v} == {0, 1}

"""kafka.propagate_headers on the real broker, both backends: headers arrive unchanged."""

from __future__ import annotations

import random

import orjson
import pytest
from kafka import KafkaProducer

from streamer.core.demo_data import make_record

from .helpers import BACKENDS, PROCESS_TIMEOUT_S, Cluster, PipelineStarter, wait_until_delivered

# Not UTF-8 on purpose: header bytes pass through as they are.
TENANT = b"\xfftenant-\x00\x01"


@pytest.mark.parametrize("client", BACKENDS)
def test_traceparent_and_a_custom_header_reach_outputs_and_dead_letters(
    client: str, cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=2)
    rng = random.Random(15)
    values = [make_record(rng)[1] for _ in range(20)]
    values[7] = b"{not json"
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap_servers.split(","), acks="all")
    produced = {}
    try:
        futures = []
        for index, value in enumerate(values):
            traceparent = f"00-{index:032x}-{index + 1:016x}-01".encode()
            headers = [("traceparent", traceparent), ("tenant", TENANT), ("dropped", b"x")]
            futures.append(
                (
                    index,
                    producer.send(
                        topics.input, key=f"k{index}".encode(), value=value, headers=headers
                    ),
                )
            )
        producer.flush(PROCESS_TIMEOUT_S)
        for index, future in futures:
            metadata = future.get(timeout=PROCESS_TIMEOUT_S)
            produced[(metadata.partition, metadata.offset)] = (f"k{index}".encode(), values[index])
    finally:
        producer.close(timeout=5)
    settings = cluster.settings(
        topics, kafka={"client": client, "propagate_headers": "traceparent, tenant"}
    )
    pipeline = start_pipeline(settings)
    wait_until_delivered(pipeline, topics.input, produced)

    def expected(key: bytes) -> list[tuple[str, bytes]]:
        index = int(key[1:])
        return [
            ("traceparent", f"00-{index:032x}-{index + 1:016x}-01".encode()),
            ("tenant", TENANT),
        ]

    outputs = cluster.read(topics.output).records.values()
    assert len(outputs) == 19
    for key, value, headers in outputs:
        assert key is not None
        assert orjson.loads(value or b"null")["key"] == key.decode()
        assert headers == expected(key)
    dead = list(cluster.read(topics.dead_letter).records.values())
    assert len(dead) == 1
    key, value, headers = dead[0]
    assert (key, value) == (b"k7", b"{not json")
    carried = [(name, data) for name, data in headers if not name.startswith("streamer.")]
    assert carried == expected(b"k7")
    assert dict(headers)["streamer.reason"] == b"invalid_json"

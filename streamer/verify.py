"""Read whole topics back and check that every input has an output (demo and tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition


@dataclass
class TopicDump:
    """Every record of a topic: ``records[(partition, offset)] = (key, value, headers)``."""

    records: dict[tuple[int, int], tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = (
        field(default_factory=dict)
    )

    def __len__(self) -> int:
        return len(self.records)


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> TopicDump:
    """Read a topic from the beginning to its current end, without a group."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers.split(","),
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=50,
        max_poll_records=5000,
    )
    dump = TopicDump()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        remaining = set(tps)
        while remaining and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=200).items():
                for r in recs:
                    dump.records[(tp.partition, r.offset)] = (r.key, r.value, list(r.headers or []))
            for tp in list(remaining):
                high = consumer.highwater(tp)
                if high is not None and consumer.position(tp, timeout_ms=5000) >= high:
                    remaining.discard(tp)
        if remaining:
            msg = f"could not read {topic} to its end within {timeout_s}s"
            raise TimeoutError(msg)
    finally:
        consumer.close(autocommit=False, timeout_ms=5000)
    return dump


@dataclass
class Reconciliation:
    """How the outputs and dead letters cover the inputs."""

    inputs: int
    scored: int
    dead_lettered: int
    duplicates: int
    lost: list[tuple[int, int]]
    outputs_by_source: dict[tuple[int, int], list[dict[str, Any]]]


def reconcile(inputs: TopicDump, outputs: TopicDump, dead_letters: TopicDump) -> Reconciliation:
    """Match every input (partition, offset) with its outputs and dead letters."""
    by_source: dict[tuple[int, int], list[dict[str, Any]]] = {}
    duplicates = 0
    for _key, value, _headers in outputs.records.values():
        doc = orjson.loads(value or b"null")
        source = (doc["partition"], doc["offset"])
        if source in by_source:
            duplicates += 1
        by_source.setdefault(source, []).append(doc)
    dead: set[tuple[int, int]] = set()
    for _key, _value, headers in dead_letters.records.values():
        h = dict(headers)
        source = (int(h["streamer.source.partition"]), int(h["streamer.source.offset"]))
        if source in dead or source in by_source:
            duplicates += 1
        dead.add(source)
    covered = set(by_source) | dead
    lost = sorted(set(inputs.records) - covered)
    return Reconciliation(
        inputs=len(inputs),
        scored=len(by_source),
        dead_lettered=len(dead),
        duplicates=duplicates,
        lost=lost,
        outputs_by_source=by_source,
    )

"""``streamer replay-dlq``: send dead letters back to the input topic after a fix.

It reads the dead-letter topic in its own consumer group (``<group_id>.replay``)
up to the end it saw at start, produces each record's original key and bytes
to the input topic, and commits only after the broker acknowledged them, so a
replay that is interrupted resumes where it stopped and never skips a record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streamer.errors import BrokerError
from streamer.settings import Settings

log = logging.getLogger(__name__)

REPLAYED_HEADER = "streamer.replayed_from"


@dataclass
class ReplayReport:
    """What a replay did."""

    replayed: int = 0
    skipped: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


def replay_dead_letters(
    settings: Settings,
    *,
    reasons: set[str] | None = None,
    limit: int = 0,
    dry_run: bool = False,
    timeout_s: float = 60.0,
) -> ReplayReport:
    """Replay the dead-letter topic into the input topic.

    Args:
        settings: The pipeline's settings (topics, group, broker).
        reasons: Replay only dead letters with one of these ``streamer.reason`` headers;
            the others are skipped (and committed past: they stay in the DLQ).
        limit: Stop after this many replayed records (0: no limit).
        dry_run: Count what would be replayed; produce and commit nothing.
        timeout_s: Give up waiting for the broker after this long.
    """
    k = settings.kafka
    source, target = k.dead_letter_topic_name, k.input_topic
    consumer = KafkaConsumer(
        bootstrap_servers=k.bootstrap_servers.split(","),
        group_id=f"{k.group_id}.replay",
        client_id=f"{k.client_id}-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1000,
        fetch_max_wait_ms=50,
        bootstrap_timeout_ms=int(k.bootstrap_timeout_s * 1000),
    )
    producer = (
        None
        if dry_run
        else KafkaProducer(
            bootstrap_servers=k.bootstrap_servers.split(","),
            client_id=f"{k.client_id}-replay",
            acks="all",
            linger_ms=5,
        )
    )
    report = ReplayReport()
    try:
        partitions = consumer.partitions_for_topic(source)
        if not partitions:
            msg = (
                f"kafka.dead_letter_topic: topic {source!r} does not exist on {k.bootstrap_servers}"
            )
            raise BrokerError(msg)
        tps = [TopicPartition(source, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = _ends(settings, tps, timeout_s)
        positions = _resume_positions(consumer, tps, timeout_s)
        remaining = {tp for tp in tps if positions[tp] < ends[tp]}
        while remaining and not (limit and report.replayed >= limit):
            commits: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset >= ends[tp]:
                        positions[tp] = ends[tp]  # written after the replay started
                        break
                    if limit and report.replayed >= limit:
                        break
                    _replay_one(record, tp, target, reasons, producer, report)
                    commits[tp] = OffsetAndMetadata(record.offset + 1, None, -1)
            if producer is not None and commits:
                producer.flush(timeout=timeout_s)  # acknowledged before committed
                consumer.commit(commits)
            for tp, meta in commits.items():
                positions[tp] = max(positions[tp], meta.offset)
            remaining = {tp for tp in remaining if positions[tp] < ends[tp]}
    finally:
        if producer is not None:
            producer.close(timeout=5)
        consumer.close(autocommit=False, timeout_ms=5000)
    return report


def _resume_positions(
    consumer: KafkaConsumer, tps: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """Seek to the replay group's committed offsets (the beginning when none)."""
    positions: dict[TopicPartition, int] = {}
    for tp in tps:
        committed = consumer.committed(tp, timeout_ms=int(timeout_s * 1000))
        positions[tp] = committed or 0
        if committed is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
    return positions


def _replay_one(
    record: Any,
    tp: TopicPartition,
    target: str,
    reasons: set[str] | None,
    producer: KafkaProducer | None,
    report: ReplayReport,
) -> None:
    headers = dict(record.headers or [])
    reason = headers.get("streamer.reason", b"unknown").decode(errors="replace")
    if reasons is not None and reason not in reasons:
        report.skipped += 1
        return
    report.replayed += 1
    report.by_reason[reason] = report.by_reason.get(reason, 0) + 1
    if producer is not None:
        origin = f"{tp.topic}/{tp.partition}/{record.offset}".encode()
        producer.send(
            target, key=record.key, value=record.value, headers=[(REPLAYED_HEADER, origin)]
        )


def _ends(
    settings: Settings, tps: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """The end of each partition now, from the highwater of a fetch (no group)."""
    k = settings.kafka
    probe = KafkaConsumer(
        bootstrap_servers=k.bootstrap_servers.split(","),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        bootstrap_timeout_ms=int(k.bootstrap_timeout_s * 1000),
    )
    ends: dict[TopicPartition, int] = {}
    try:
        probe.assign(tps)
        probe.seek_to_beginning(*tps)
        for _ in range(max(1, int(timeout_s / 0.2))):
            probe.poll(timeout_ms=200, max_records=1)
            ends = {tp: high for tp in tps if (high := probe.highwater(tp)) is not None}
            if len(ends) == len(tps):
                return ends
    finally:
        probe.close(autocommit=False, timeout_ms=5000)
    missing = [tp.partition for tp in tps if tp not in ends]
    msg = f"could not read the end of {tps[0].topic} partitions {missing} within {timeout_s}s"
    raise BrokerError(msg)

"""``streamer replay-dlq``: send dead letters back to the input topic after a fix.

It reads the dead-letter topic in its own consumer group (``<group_id>.replay``)
up to the end it saw at start, produces each record's original key and bytes
to the input topic, and commits only after the broker acknowledged them, so a
replay that is interrupted resumes where it stopped and never skips a record.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import cast

from streamer.clients import backend
from streamer.clients.base import GroupReader, Headers, ProducerClient
from streamer.core.records import TP, RecordColumns
from streamer.errors import BrokerError, ConfigError
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
    """Replay the dead-letter topic into the input topic, with the ``kafka.client`` backend.

    Args:
        settings: The pipeline's settings (topics, group, broker).
        reasons: Replay only dead letters with one of these ``streamer.reason`` headers;
            the others are skipped (and committed past: they stay in the DLQ).
        limit: Stop after this many replayed records (0: no limit).
        dry_run: Count what would be replayed; produce and commit nothing.
        timeout_s: Give up waiting for the broker after this long.
    """
    k = settings.kafka
    chosen = backend(k.client)
    if chosen.group_reader is None:  # pragma: no cover - every Kafka backend has one
        msg = f"config error: kafka.client={k.client!r} cannot replay"
        raise ConfigError(msg)
    replaying = dataclasses.replace(
        k, group_id=f"{k.group_id}.replay", client_id=f"{k.client_id}-replay"
    )
    reader = chosen.group_reader(replaying, k.dead_letter_topic_name)
    producer = None if dry_run else chosen.producer(replaying)
    replay = _Replay(k.input_topic, reasons, limit, producer)
    try:
        if not reader.partitions:
            msg = (
                f"kafka.dead_letter_topic: topic {k.dead_letter_topic_name!r} "
                f"does not exist on {k.bootstrap_servers}"
            )
            raise BrokerError(msg)
        ends = _ends(reader, timeout_s)
        positions = reader.start_at_committed(timeout_s)
        remaining = {tp for tp in reader.partitions if positions[tp] < ends[tp]}
        while remaining and not replay.at_limit():
            commits = replay.polled(reader.poll(0.5), ends, positions)
            if producer is not None and commits:
                if not producer.flush(timeout_s):  # acknowledged before committed
                    msg = (
                        f"kafka.input_topic: the replayed records were not acknowledged by "
                        f"{k.bootstrap_servers} within {timeout_s:g} s; nothing past the last "
                        "acknowledged poll was committed: run the replay again"
                    )
                    raise BrokerError(msg)
                reader.commit(commits)
            for tp, offset in commits.items():
                positions[tp] = max(positions[tp], offset)
            remaining = {tp for tp in remaining if positions[tp] < ends[tp]}
    finally:
        if producer is not None:
            producer.close()
        reader.close()
    return replay.report


class _Replay:
    """Sends each dead letter of a poll back to the input topic, or skips it."""

    def __init__(
        self,
        target: str,
        reasons: set[str] | None,
        limit: int,
        producer: ProducerClient | None,
    ) -> None:
        self.target = target
        self.reasons = reasons
        self.limit = limit
        self.producer = producer
        self.report = ReplayReport()

    def at_limit(self) -> bool:
        """True once ``limit`` records were replayed."""
        return bool(self.limit) and self.report.replayed >= self.limit

    def polled(
        self,
        polled: dict[TP, tuple[RecordColumns, list[Headers]]],
        ends: dict[TP, int],
        positions: dict[TP, int],
    ) -> dict[TP, int]:
        """Replay a poll's records below the ends; returns the offsets to commit."""
        commits: dict[TP, int] = {}
        for tp, (records, headers) in polled.items():
            for index, offset in enumerate(records.offsets):
                if offset >= ends[tp]:
                    positions[tp] = ends[tp]  # written after the replay started
                    break
                if self.at_limit():
                    break
                self._one(tp, offset, records.keys[index], records.values[index], headers[index])
                commits[tp] = offset + 1
        return commits

    def _one(
        self, tp: TP, offset: int, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        named = dict(headers)
        reason = named.get("streamer.reason", b"unknown").decode(errors="replace")
        report = self.report
        if self.reasons is not None and reason not in self.reasons:
            report.skipped += 1
            return
        report.replayed += 1
        report.by_reason[reason] = report.by_reason.get(reason, 0) + 1
        if self.producer is not None:
            origin = f"{tp[0]}/{tp[1]}/{offset}".encode()
            # The bytes as they came, a tombstone (None) included.
            self.producer.send(self.target, cast("bytes", value), key, [(REPLAYED_HEADER, origin)])


def _ends(reader: GroupReader, timeout_s: float) -> dict[TP, int]:
    """The end of each partition now, or a BrokerError naming those it could not read."""
    ends = reader.end_offsets(timeout_s)
    missing = [p for topic, p in reader.partitions if (topic, p) not in ends]
    if missing:
        topic = reader.partitions[0][0]
        msg = f"could not read the end of {topic} partitions {missing} within {timeout_s}s"
        raise BrokerError(msg)
    return ends

"""What both backends' changelog readers and ``ensure_changelog`` share (no client library here).

A state store's changelog topic is compacted and has one partition per input
partition. A backend's :class:`~streamer.clients.base.ChangelogReader` polls;
:func:`read_range` and :func:`wait_for_watermark` decide when a read is done
and when it has waited too long, the same way for both clients.
:func:`check_changelog` says whether an existing changelog topic can serve.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterator

from streamer.errors import BrokerError, ConfigError
from streamer.settings import KafkaSettings

ChangelogRecord = tuple[int, bytes, bytes | None]
"""(offset, key, value); value None is a tombstone."""

CHANGELOG_CONFIG = {"cleanup.policy": "compact"}
"""The topic configuration a changelog is created with: only a key's newest value is kept."""

READ_IDLE_TIMEOUT_S = 30.0
"""A read that receives nothing and gets no nearer its end for this long raises BrokerError."""

# One poll's wait: short, so that the end and the deadline are checked often.
POLL_WAIT_S = 0.2

READER_FETCH_WAIT_MS = 5
"""The broker's longest wait for data in a reader's fetch. A fetch with records returns at
once whatever this is; only a fetch of an empty partition (a probe of an empty changelog,
the common case at a first start) waits it out. At 50 ms, restoring 4 empty ledgers took
0.4-0.5 s before the first delivery; at 5 ms, 14-22 ms each (docs/labels.md)."""

# (records of one poll in offset order, the offset the partition has been read to or None)
Fetch = Callable[[], tuple[list[ChangelogRecord], int | None]]


class PartitionReader(ABC):
    """A :class:`~streamer.clients.base.ChangelogReader` but for its client's polls.

    Each :meth:`high_watermark` and :meth:`read` assigns the one partition it
    needs and unassigns it after, so the next one starts from a fresh
    partition state (no watermark nor fetched records left from before).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        idle_timeout_s: float = READ_IDLE_TIMEOUT_S,
        chunk_records: int = 10_000,
    ) -> None:
        """Connect; ``idle_timeout_s`` bounds a read that gets nothing (BrokerError after).

        Raises:
            BrokerError: The broker cannot be reached.
        """
        self._settings = settings
        self._topic = topic
        self._idle_timeout_s = idle_timeout_s
        self._chunk_records = chunk_records
        self._connect()

    def high_watermark(self, partition: int, timeout_s: float) -> int:
        """The end offset that a fetch from the partition's beginning reports (0 when empty).

        Not a ListOffsets request: on Tansu it answers the last batch's base
        offset + 1.
        """
        probe = self._start_probe(partition)
        try:
            return wait_for_watermark(probe, timeout_s, lambda: f"{self._topic}/{partition}")
        finally:
            self._unassign()

    def read(self, partition: int, start: int, end: int) -> Iterator[list[ChangelogRecord]]:
        """Chunks of (offset, key, value) for every offset in [start, end) that exists."""
        if start >= end:
            return
        fetch = self._start_read(partition, start)
        try:
            yield from read_range(
                fetch,
                start,
                end,
                idle_timeout_s=self._idle_timeout_s,
                where=lambda: self._where(partition),
            )
        finally:
            self._unassign()

    @abstractmethod
    def _connect(self) -> None:
        """Open the client (a one-line BrokerError when the broker cannot be reached)."""

    @abstractmethod
    def _start_probe(self, partition: int) -> Callable[[], int | None]:
        """Assign the partition from its beginning; a poll that returns its watermark or None."""

    @abstractmethod
    def _start_read(self, partition: int, start: int) -> Fetch:
        """Assign the partition at ``start``; a poll of its records and position (:data:`Fetch`)."""

    @abstractmethod
    def _unassign(self) -> None:
        """Drop the assignment (and what was fetched for it)."""

    @abstractmethod
    def _where(self, partition: int) -> str:
        """The partition and how far it was read, for an error message."""

    @abstractmethod
    def close(self) -> None:
        """Close connections (nothing was committed)."""


def read_range(
    fetch: Fetch,
    start: int,
    end: int,
    *,
    idle_timeout_s: float,
    where: Callable[[], str],
) -> Iterator[list[ChangelogRecord]]:
    """Chunks of the records in [start, end), from repeated ``fetch`` calls; stops at ``end``.

    A compacted partition has gaps, so the read does not count records: it
    ends once a record at ``end - 1`` or later came, or ``fetch`` says the
    partition was read to ``end`` or beyond (the position after a poll, or an
    end-of-partition event). Records at ``end`` or later are left out.

    Raises:
        BrokerError: No record came and the read got no nearer ``end`` for
            ``idle_timeout_s``; ``where()`` describes the partition.
    """
    if start >= end:
        return
    deadline = time.monotonic() + idle_timeout_s
    reached = start
    while True:
        records, position = fetch()
        if records:
            last = records[-1][0]
            if last >= end:
                records = records[: bisect_left(records, end, key=_offset)]
            if records:
                yield records
            reached = max(reached, last + 1)
            deadline = time.monotonic() + idle_timeout_s
        if position is not None and position > reached:
            reached = position
            deadline = time.monotonic() + idle_timeout_s
        if reached >= end:
            return
        if time.monotonic() > deadline:
            msg = (
                f"reading the changelog stalled: nothing arrived for {idle_timeout_s:.0f}s "
                f"at {where()}, before offset {end}; check the broker"
            )
            raise BrokerError(msg)


def _offset(record: ChangelogRecord) -> int:
    return record[0]


def wait_for_watermark(
    probe: Callable[[], int | None], timeout_s: float, where: Callable[[], str]
) -> int:
    """Call ``probe`` (one poll, then the watermark of its fetch, or None) until it answers.

    Raises:
        BrokerError: No fetch answered within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        high = probe()
        if high is not None:
            return high
        if time.monotonic() > deadline:
            msg = (
                f"no fetch of {where()} answered within {timeout_s:g}s, so its high "
                "watermark is unknown; check the broker"
            )
            raise BrokerError(msg)


def check_changelog(
    changelog_topic: str,
    input_topic: str,
    *,
    partitions: int,
    input_partitions: int,
    cleanup_policy: str | None,
    setting: str = "state.changelog_topic",
) -> None:
    """Refuse an existing changelog topic that cannot hold every input partition's state.

    ``cleanup_policy`` is None when the broker does not report it (then it is
    not checked).

    Raises:
        ConfigError: It has fewer partitions than the input topic, or its
            cleanup.policy is not ``compact`` (``delete`` would drop old keys'
            state, ``compact,delete`` too once they are older than retention.ms).
    """
    if partitions < input_partitions:
        msg = (
            f"{setting}: topic {changelog_topic!r} has {partitions} partitions but "
            f"the input topic {input_topic!r} has {input_partitions}; add partitions "
            f"(kafka-topics.sh --alter --topic {changelog_topic} --partitions {input_partitions}) "
            f"or set {setting} to a new topic"
        )
        raise ConfigError(msg)
    if cleanup_policy is not None and cleanup_policy.replace(" ", "") != "compact":
        msg = (
            f"{setting}: topic {changelog_topic!r} has cleanup.policy="
            f"{cleanup_policy}, so the broker deletes old state; make it compact "
            f"(kafka-configs.sh --alter --entity-type topics --entity-name {changelog_topic} "
            f"--add-config cleanup.policy=compact) or set {setting} to a new topic"
        )
        raise ConfigError(msg)


def missing_input(input_topic: str, bootstrap_servers: str) -> ConfigError:
    """The error when the input topic, whose partitions the changelog copies, does not exist."""
    msg = (
        f"kafka.input_topic: topic {input_topic!r} does not exist on {bootstrap_servers}; "
        f"create it first (e.g. kafka-topics.sh --create --topic {input_topic})"
    )
    return ConfigError(msg)

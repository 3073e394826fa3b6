"""The kafka-python backend (the default): the only module that imports kafka-python.

kafka-python 3.x runs a network I/O thread per client. Rebalance callbacks
and delivery callbacks run on those threads, while the caller waits inside
``poll`` or goes on sending.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from streamer.clients.base import (
    DeliveryFuture,
    DoneCallback,
    Headers,
    OutputGroup,
    SendFailure,
    broker_error,
    error_text,
    latest_end,
)
from streamer.clients.changelog import (
    CHANGELOG_CONFIG,
    POLL_WAIT_S,
    READER_FETCH_WAIT_MS,
    ChangelogRecord,
    Fetch,
    PartitionReader,
    check_changelog,
    missing_input,
)
from streamer.core.records import TP, RecordColumns
from streamer.settings import KafkaSettings

if TYPE_CHECKING:
    from streamer.clients.reading import WholeTopicRead

log = logging.getLogger(__name__)

# Keys whose partition is remembered per topic (the cache starts over beyond it).
_PARTITION_CACHE_KEYS = 100_000
# Larger values go through ``send``, which checks them against max_request_size
# (1 MiB by default) and fails the record alone if it is too large.
_DIRECT_MAX_BYTES = 256 * 1024

__all__ = [
    "ChangelogReader",
    "GroupConsumer",
    "GroupReader",
    "Producer",
    "ensure_changelog",
    "ensure_topics",
    "is_record_level",
    "read_records",
]

# Kafka error codes that refuse one record for what it is, so that sending it
# again cannot help: CORRUPT_MESSAGE, MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE,
# INVALID_TIMESTAMP, INVALID_RECORD. The same codes as the confluent backend's.
RECORD_LEVEL_ERRNOS = frozenset({2, 10, 18, 32, 87})


def is_record_level(exc: BaseException) -> bool:
    """True when kafka-python refused a record for its own content, not the connection's.

    ``send`` raises TypeError or ValueError for a key, value or headers of a
    type it cannot take; the broker's and the client's size checks carry a
    Kafka error code (``errno``).
    """
    if isinstance(exc, TypeError | ValueError):
        return True
    return isinstance(exc, KafkaError) and getattr(exc, "errno", None) in RECORD_LEVEL_ERRNOS


def _common(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "bootstrap_timeout_ms": int(settings.bootstrap_timeout_s * 1000),
    }
    if settings.sasl_mechanism:
        config.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    return config


class _Listener(ConsumerRebalanceListener):
    def __init__(
        self, on_assigned: Callable[[list[TP]], None], on_revoked: Callable[[list[TP]], None]
    ) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._on_revoked([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._on_assigned([(tp.topic, tp.partition) for tp in assigned])


class GroupConsumer:
    """A kafka-python consumer in a group, with manual commits."""

    def __init__(
        self, settings: KafkaSettings, max_poll_records: int, fetch_max_bytes: int | None = None
    ) -> None:
        """Open the consumer (it subscribes later, in :meth:`subscribe`).

        ``fetch_max_bytes`` is the fetch budget (None: the client's 50 MiB a
        fetch); the pipeline derives it from batch.max_in_flight_bytes. A fetch
        asks for a quarter of it, at least 1 MiB: kafka-python holds a response
        two or three times over while it parses it (the response, its record
        batches, the values), in Python objects. At 64 MiB of cap and records of
        500 KB, a 4 MiB fetch added 15-20 MiB of peak RSS over a 1 MiB one, for
        the same throughput.
        """
        self._with_headers = bool(settings.propagate_headers.strip())
        self._settings = settings
        fetch = {}
        if fetch_max_bytes is not None:
            fetch["fetch_max_bytes"] = max(1 << 20, fetch_max_bytes // 4)
        try:
            self._consumer = KafkaConsumer(
                **_common(settings),
                group_id=settings.group_id,
                # Partition p of the input and of the labels topic to one member (docs/labels.md).
                partition_assignment_strategy=(RangePartitionAssignor,),
                enable_auto_commit=False,
                auto_offset_reset=settings.auto_offset_reset,
                session_timeout_ms=int(settings.session_timeout_s * 1000),
                heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
                max_poll_interval_ms=int(settings.max_poll_interval_s * 1000),
                max_poll_records=max_poll_records,
                fetch_max_wait_ms=int(settings.fetch_max_wait_s * 1000),
                # Its own sensors, per request and per partition fetched, under the GIL
                # the actors share; streamer exports its own metrics.
                metrics_enabled=False,
                **fetch,
            )
        except KafkaError as exc:
            raise broker_error("start the consumer", settings, exc) from None
        self._end_offsets: dict[TP, int] = {}

    def existing_topics(self) -> set[str]:
        """Topic names the broker knows (does not create any)."""
        return set(self._consumer.topics())

    def subscribe(
        self,
        topic: str | Sequence[str],
        on_assigned: Callable[[list[TP]], None],
        on_revoked: Callable[[list[TP]], None],
    ) -> None:
        """Join the group on the topics; the callbacks run inside :meth:`poll`."""
        topics = [topic] if isinstance(topic, str) else list(topic)
        self._consumer.subscribe(topics, listener=_Listener(on_assigned, on_revoked))

    def poll(self, timeout_s: float, max_records: int) -> dict[TP, RecordColumns]:
        """Fetch records; returns an empty dict when there are none (or all are paused)."""
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return {
            (tp.topic, tp.partition): RecordColumns.of(records, with_headers=self._with_headers)
            for tp, records in polled.items()
            if records
        }

    def pause(self, tps: list[TP]) -> None:
        """Stop returning records of these partitions; the group membership stays."""
        self._consumer.pause(*(TopicPartition(t, p) for t, p in tps))

    def resume(self, tps: list[TP]) -> None:
        """Return records of these partitions again."""
        self._consumer.resume(*(TopicPartition(t, p) for t, p in tps))
        for tp in tps:  # fetches report the end again; a refreshed one would go stale
            self._end_offsets.pop(tp, None)

    def seek(self, tp: TP, offset: int) -> None:
        """Fetch this assigned partition from ``offset`` next (local; safe in a callback)."""
        self._consumer.seek(TopicPartition(*tp), offset)

    def highwater(self, tp: TP) -> int | None:
        """The partition's end offset as of the last fetch or refresh, or None before one."""
        fetched: int | None = self._consumer.highwater(TopicPartition(*tp))
        return latest_end(fetched, self._end_offsets.get(tp))

    def refresh_end_offsets(self, tps: list[TP], timeout_s: float) -> None:
        """Ask the broker for the end offsets (a ListOffsets request)."""
        if not tps:
            return
        ends = self._consumer.end_offsets(
            [TopicPartition(t, p) for t, p in tps], timeout_ms=int(timeout_s * 1000)
        )
        for tp, end in ends.items():
            self._end_offsets[(tp.topic, tp.partition)] = end

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously (never call from a rebalance callback)."""
        self._consumer.commit(
            {TopicPartition(t, p): OffsetAndMetadata(o, None, -1) for (t, p), o in offsets.items()},
            timeout_ms=10_000,
        )

    def commit_async(
        self, offsets: dict[TP, int], on_done: Callable[[dict[TP, int], Exception | None], None]
    ) -> None:
        """Commit without blocking; ``on_done`` runs on a client thread."""

        def callback(_offsets: Any, response: Any) -> None:
            on_done(offsets, response if isinstance(response, Exception) else None)

        self._consumer.commit_async(
            {TopicPartition(t, p): OffsetAndMetadata(o, None, -1) for (t, p), o in offsets.items()},
            callback=callback,
        )

    def close(self) -> None:
        """Leave the group and close connections (never commits on its own)."""
        self._consumer.close(autocommit=False, timeout_ms=5000)


class _BatchWatch:
    """Calls ``done(failures)`` once every future of a batch is done, watching one at a time.

    It registers on the first future that is not done yet; when that one
    settles it scans on, so a batch costs a callback per produce request it
    waits for rather than one per record. A record whose batch the client
    splits (MESSAGE_TOO_LARGE) keeps its future, so nothing is missed. A
    ``None`` future is a record that ``send`` refused at once: its failure is
    in ``refused``.
    """

    __slots__ = ("_done", "_finished", "_futures", "_lock", "_next", "_refused")

    def __init__(self, futures: list[Any], refused: list[SendFailure], done: DoneCallback) -> None:
        self._futures = futures
        self._refused = refused
        self._next = 0
        self._done = done
        self._finished = False
        self._lock = threading.Lock()

    def advance(self, _result: object = None) -> None:
        futures = self._futures
        with self._lock:
            if self._finished:
                return
            index, count = self._next, len(futures)
            while index < count and (futures[index] is None or futures[index].is_done):
                index += 1
            self._next = index
            pending = futures[index] if index < count else None
            self._finished = pending is None
        if pending is not None:
            pending.add_callback(self.advance)
            pending.add_errback(self.advance)
            return
        failures = list(self._refused)
        for index, future in enumerate(futures):
            if future is not None and future.exception is not None:
                error = future.exception
                failures.append(SendFailure(index, error_text(error), is_record_level(error)))
        failures.sort(key=lambda failure: failure.index)
        self._done(failures)


class Producer:
    """A kafka-python producer with acks=all and idempotence."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        try:
            self._producer = KafkaProducer(
                **_common(settings),
                acks="all",
                max_request_size=settings.max_request_bytes,
                linger_ms=int(settings.linger_s * 1000),
                batch_size=settings.producer_batch_bytes,
                delivery_timeout_ms=int(settings.delivery_timeout_s * 1000),
                metrics_enabled=False,  # as the consumer's
            )
        except KafkaError as exc:
            raise broker_error("start the producer", settings, exc) from None
        # topic -> (its partitions, key -> partition, partition -> TopicPartition)
        self._partition_cache: dict[
            str, tuple[list[int], dict[bytes, int], dict[int, TopicPartition]]
        ] = {}
        self._direct_append = self._direct_append_fn()
        # Larger records take ``send``, whose size check refuses one above the limit.
        self._direct_max_bytes = min(_DIRECT_MAX_BYTES, settings.max_request_bytes // 2)

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers | None = None
    ) -> DeliveryFuture:
        """Queue one record; the future resolves when the broker acknowledges it."""
        future: DeliveryFuture = self._producer.send(topic, value=value, key=key, headers=headers)
        return future

    def send_batch(self, groups: Sequence[OutputGroup], done: DoneCallback) -> None:
        """Send the groups in order; ``done(error)`` runs on the I/O thread once all settled.

        Three savings over ``send`` plus two callbacks per record, measured with
        py-spy on the pipeline:

        - A keyed record gets its partition from a cache of the default
          partitioner's answer (its pure-Python murmur2 was about a fifth of
          ``send``).
        - A keyed record without headers goes straight to the client's record
          accumulator (:meth:`_direct_append`), skipping the checks that
          ``send`` repeats for every record and that hold for the whole batch:
          about a third of its cost.
        - The batch is watched through one future at a time (:class:`_BatchWatch`)
          instead of a callback per record on the client's I/O thread.
        """
        futures: list[Any] = []
        refused: list[SendFailure] = []
        keep = futures.append
        send = self._producer.send
        direct_append = self._direct_append
        direct_max = self._direct_max_bytes
        for group in groups:
            topic, keys, headers = group.topic, group.keys, group.headers
            partition_of = self._partitioner(topic)
            direct = direct_append if headers is None else None
            if group.partition is not None:  # a state changelog: the input's partition
                partition_of = functools.partial(_fixed_partition, group.partition)
                direct = None  # its tombstones (None values) take send()
            if direct is not None:
                tp_of = self._topic_partitions(topic)
                now = time.monotonic()
            for index, value in enumerate(group.values):
                key = keys[index]
                if direct is not None and key is not None and len(value) + len(key) <= direct_max:
                    keep(direct(tp_of[partition_of(key)], key, value, now))
                    continue
                try:
                    keep(
                        send(
                            topic,
                            value=value,
                            key=key,
                            headers=None if headers is None else headers[index],
                            partition=None if key is None else partition_of(key),
                        )
                    )
                except (KafkaError, TypeError, ValueError) as exc:
                    if not is_record_level(exc):
                        raise
                    # Refused before it was queued (e.g. above max_request_size):
                    # this record's failure alone, not the producer's.
                    refused.append(SendFailure(len(futures), error_text(exc), True))
                    keep(None)
        _BatchWatch(futures, refused, done).advance()

    def _direct_append_fn(self) -> Callable[[TopicPartition, bytes, bytes, float], Any] | None:
        """``send`` minus its per-record checks, or None if this kafka-python differs.

        What ``send`` does per record and this does once per batch or not at
        all: check the closed flag and the headers (the accumulator checks the
        first; outputs have no headers), run the serializers (none are set),
        wait for the topic metadata (:meth:`_partitioner` did), estimate the
        size (values above ``_DIRECT_MAX_BYTES`` take ``send``), format a debug
        log line, and check for a transaction (none). What stays the same: the
        record lands in the same accumulator, in order, with a future per
        record, and the sender is woken when a batch fills up.
        """
        accumulator = getattr(self._producer, "_accumulator", None)
        sender = getattr(self._producer, "_sender", None)
        append = getattr(accumulator, "append", None)
        wakeup = getattr(sender, "wakeup", None)
        if append is None or wakeup is None or self._producer.config.get("transactional_id"):
            return None
        if self._producer.config.get("key_serializer") or self._producer.config.get(
            "value_serializer"
        ):
            return None
        no_headers: list[tuple[str, bytes]] = []

        def direct_append(tp: TopicPartition, key: bytes, value: bytes, now: float) -> Any:
            result = append(tp, None, key, value, no_headers, now=now)
            if result[1] or result[2]:  # the batch is full, or a new one was started
                wakeup()
            return result[0]

        return direct_append

    def _topic_partitions(self, topic: str) -> dict[int, TopicPartition]:
        """The topic's partitions as of the last :meth:`_partitioner` call."""
        return self._partition_cache[topic][2]

    def _partitioner(self, topic: str) -> Callable[[bytes], int]:
        """The default partitioner's choice for a key (murmur2 over all partitions), cached."""
        partitions = sorted(self._producer.partitions_for(topic))
        cache = self._partition_cache.get(topic)
        if cache is None or cache[0] != partitions:
            tps = {p: TopicPartition(topic, p) for p in partitions}
            cache = self._partition_cache[topic] = (partitions, {}, tps)
        known = cache[1]
        if len(known) > _PARTITION_CACHE_KEYS:
            known.clear()
        count = len(partitions)

        def partition_of(key: bytes) -> int:
            partition = known.get(key)
            if partition is None:
                partition = known[key] = partitions[(murmur2(key) & 0x7FFFFFFF) % count]
            return partition

        return partition_of

    def flush(self, timeout_s: float) -> bool:
        """Block until every queued record is acknowledged or failed."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            return False
        return True

    def close(self) -> None:
        """Flush and close, bounded in time."""
        self._producer.close(timeout=5)


def ensure_topics(settings: KafkaSettings, topics: dict[str, int], replication: int = 1) -> None:
    """Create the topics that do not exist yet (name -> partitions)."""
    try:
        admin = KafkaAdminClient(**_common(settings))
    except KafkaError as exc:
        raise broker_error("connect the admin client", settings, exc) from None
    try:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, replication)])
    finally:
        admin.close()


class GroupReader:
    """``replay-dlq``'s reader: a topic's partitions assigned by hand, for the settings' group."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self._settings = settings
        try:
            self._consumer = KafkaConsumer(
                **_common(settings),
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=1000,
                fetch_max_wait_ms=50,
            )
        except KafkaError as exc:
            raise broker_error("start the reader", settings, exc) from None
        partitions = self._consumer.partitions_for_topic(topic) or ()
        self.partitions: list[TP] = [(topic, p) for p in sorted(partitions)]
        self._tps = [TopicPartition(*tp) for tp in self.partitions]
        if self._tps:
            self._consumer.assign(self._tps)

    def end_offsets(self, timeout_s: float) -> dict[TP, int]:
        """The highwater of a fetch from the beginning, by a probe without a group.

        Not ``end_offsets()``: on Tansu it answers the last batch's base offset + 1.
        """
        probe = KafkaConsumer(
            **_common(self._settings),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        ends: dict[TP, int] = {}
        try:
            probe.assign(self._tps)
            probe.seek_to_beginning(*self._tps)
            for _ in range(max(1, int(timeout_s / 0.2))):
                probe.poll(timeout_ms=200, max_records=1)
                highs = ((tp, probe.highwater(tp)) for tp in self._tps)
                ends = {(tp.topic, tp.partition): h for tp, h in highs if h is not None}
                if len(ends) == len(self._tps):
                    break
        finally:
            probe.close(autocommit=False, timeout_ms=5000)
        return ends

    def start_at_committed(self, timeout_s: float) -> dict[TP, int]:
        """Seek to the group's committed offsets (the beginning when none)."""
        positions: dict[TP, int] = {}
        for tp in self._tps:
            committed = self._consumer.committed(tp, timeout_ms=int(timeout_s * 1000))
            positions[(tp.topic, tp.partition)] = committed or 0
            if committed is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
        return positions

    def poll(self, timeout_s: float) -> dict[TP, tuple[RecordColumns, list[Headers]]]:
        """Fetch records, with their headers."""
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        return {
            (tp.topic, tp.partition): (
                RecordColumns.of(records),
                [list(r.headers or ()) for r in records],
            )
            for tp, records in polled.items()
            if records
        }

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously."""
        self._consumer.commit(
            {TopicPartition(t, p): OffsetAndMetadata(o, None, -1) for (t, p), o in offsets.items()}
        )

    def close(self) -> None:
        """Close connections (never commits on its own)."""
        self._consumer.close(autocommit=False, timeout_ms=5000)


def read_records(
    settings: KafkaSettings,
    topics: Sequence[str],
    on_batch: Callable[[TP, RecordColumns, list[Headers]], None],
    *,
    idle_timeout_s: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
    progress_interval_s: float = 1.0,
) -> dict[TP, int]:
    """Read whole topics from the beginning to their end, without a group (for verify).

    A partition ends at its highwater as the fetches report it (on Tansu
    ``end_offsets()`` answers the last batch's base offset + 1 instead).
    Records go to ``on_batch`` (partition, its records in offset order, their
    headers) as they arrive, and nothing is kept here. Every
    ``progress_interval_s`` and at the end, ``on_progress(read, total)`` gets
    the records read and the records known to exist so far.

    Returns:
        The end offset each partition was read to.

    Raises:
        BrokerError: Nothing arrived and no partition reached its end for
            ``idle_timeout_s``, or the broker cannot be reached.
    """
    from streamer.clients.reading import WholeTopicRead  # noqa: PLC0415 - stands alone

    consumer = _open_reader(settings)
    try:
        timeout_ms = int(idle_timeout_s * 1000)
        starts = _assign_from_beginning(consumer, topics, timeout_ms)
        state = WholeTopicRead(
            topics,
            [(tp.topic, tp.partition) for tp in starts],
            idle_timeout_s=idle_timeout_s,
            on_progress=on_progress,
            progress_interval_s=progress_interval_s,
        )
        reader = _TopicReader(consumer, starts, state, timeout_ms)
        while state.remaining:
            reader.poll(on_batch)
            reader.finish_the_ended()
            reader.keep_pace()
        state.done(reader.total)
    finally:
        consumer.close(autocommit=False, timeout_ms=5000)
    return state.ends


def _open_reader(settings: KafkaSettings) -> KafkaConsumer:
    """A consumer outside any group, for :func:`read_records`."""
    try:
        return KafkaConsumer(
            **_common(settings),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            # Each poll takes every record fetched so far: kafka-python 3.0.12
            # never fetches a partition again that was paused while records of
            # a poll were still pending, and pacing pauses partitions.
            max_poll_records=1_000_000,
        )
    except KafkaError as exc:
        raise broker_error("start a reader", settings, exc) from None


def _assign_from_beginning(
    consumer: KafkaConsumer, topics: Sequence[str], timeout_ms: int
) -> dict[TopicPartition, int]:
    """Assign every partition of ``topics`` from its first offset; those offsets, in order."""
    tps = [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return {tp: consumer.position(tp, timeout_ms=timeout_ms) or 0 for tp in tps}


class _TopicReader:
    """The polling side of one :func:`read_records`; ``state`` decides the rest."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        starts: dict[TopicPartition, int],
        state: WholeTopicRead,
        timeout_ms: int,
    ) -> None:
        self._consumer = consumer
        self._tps = list(starts)
        self._starts = starts
        self._state = state
        self._timeout_ms = timeout_ms

    def poll(self, on_batch: Callable[[TP, RecordColumns, list[Headers]], None]) -> None:
        """Hand on what one poll returned for the unfinished partitions."""
        state = self._state
        for tp, records in self._consumer.poll(timeout_ms=200).items():
            key = (tp.topic, tp.partition)
            if records and key in state.remaining:
                columns = RecordColumns.of(records)
                on_batch(key, columns, [list(r.headers or ()) for r in records])
                state.delivered(key, columns.timestamps)

    def finish_the_ended(self) -> None:
        """Finish and pause for good each partition read to its highwater."""
        consumer, state = self._consumer, self._state
        for tp in self._tps:
            key = (tp.topic, tp.partition)
            high = consumer.highwater(tp)
            if (
                key in state.remaining
                and high is not None
                and consumer.position(tp, timeout_ms=self._timeout_ms) >= high
            ):
                state.finished(key, high)
                consumer.pause(tp)

    def keep_pace(self) -> None:
        """Report progress, check the deadline, and pause or resume to keep pace."""
        consumer = self._consumer
        pause, resume = self._state.step(self.total, self._unfinished)
        for change, changed in ((consumer.pause, pause), (consumer.resume, resume)):
            if changed:
                change(*(TopicPartition(t, p) for t, p in changed))

    def total(self) -> int:
        """The records known to exist so far (at least those read)."""
        highs = ((tp, self._consumer.highwater(tp)) for tp in self._tps)
        known = sum(high - self._starts[tp] for tp, high in highs if high is not None)
        return max(self._state.read, known)

    def _unfinished(self) -> str:
        consumer = self._consumer
        return ", ".join(
            f"{t}/{p} at {consumer.position(TopicPartition(t, p), timeout_ms=1000)}"
            f" of {consumer.highwater(TopicPartition(t, p))}"
            for t, p in sorted(self._state.remaining)[:4]
        )


def _fixed_partition(partition: int, _key: bytes) -> int:
    """A state changelog record goes to its input record's partition, whatever its key."""
    return partition


def ensure_changelog(
    settings: KafkaSettings,
    changelog_topic: str,
    input_topic: str,
    setting: str = "state.changelog_topic",
) -> None:
    """Create the changelog topic compacted with the input's partitions, or check the existing one.

    Raises:
        ConfigError: The input topic is missing, or the existing changelog has
            fewer partitions than the input or is not compacted.
        BrokerError: The broker cannot be reached, or refused to create it.
    """
    try:
        admin = KafkaAdminClient(**_common(settings))
    except KafkaError as exc:
        raise broker_error("connect the admin client", settings, exc) from None
    try:
        # Every topic: a Metadata request naming a missing topic may create it (Tansu does).
        partitions = _partition_counts(admin)
        if input_topic not in partitions:
            raise missing_input(input_topic, settings.bootstrap_servers)
        if changelog_topic not in partitions:
            try:
                admin.create_topics(
                    {
                        changelog_topic: {
                            "num_partitions": partitions[input_topic],
                            "replication_factor": -1,  # the broker's default.replication.factor
                            "configs": dict(CHANGELOG_CONFIG),
                        }
                    }
                )
            except TopicAlreadyExistsError:
                partitions = _partition_counts(admin)
            except KafkaError as exc:
                action = f"create topic {changelog_topic!r}"
                raise broker_error(action, settings, exc) from None
            else:
                log.info(
                    "created the changelog topic %s (compacted, %d partitions)",
                    changelog_topic,
                    partitions[input_topic],
                )
                return
        check_changelog(
            changelog_topic,
            input_topic,
            partitions=partitions[changelog_topic],
            input_partitions=partitions[input_topic],
            cleanup_policy=_cleanup_policy(admin, changelog_topic),
            setting=setting,
        )
    finally:
        admin.close()


def partition_counts(settings: KafkaSettings) -> dict[str, int]:
    """Every topic's number of partitions (BrokerError when the broker cannot be reached)."""
    try:
        admin = KafkaAdminClient(**_common(settings))
    except KafkaError as exc:
        raise broker_error("connect the admin client", settings, exc) from None
    try:
        return _partition_counts(admin)
    finally:
        admin.close()


def _partition_counts(admin: KafkaAdminClient) -> dict[str, int]:
    """Every topic's number of partitions."""
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics() if not t["error_code"]}


def _cleanup_policy(admin: KafkaAdminClient, topic: str) -> str | None:
    """The topic's cleanup.policy, or None when the broker does not describe it."""
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )
    except KafkaError as exc:
        log.warning("cannot check the cleanup.policy of %s: %s", topic, error_text(exc))
        return None
    entry = described.get("topic", {}).get(topic, {}).get("cleanup.policy")
    if entry is None or entry.get("value") is None:
        log.warning("the broker does not report the cleanup.policy of %s; not checked", topic)
        return None
    return str(entry["value"])


class ChangelogReader(PartitionReader):
    """Reads a changelog topic's partitions by hand, outside any group; commits nothing."""

    def _connect(self) -> None:
        settings = self._settings
        try:
            self._consumer = KafkaConsumer(
                **_common(settings),
                group_id=None,
                enable_auto_commit=False,
                # A start below the log start (compaction removed the first records).
                auto_offset_reset="earliest",
                fetch_max_wait_ms=READER_FETCH_WAIT_MS,
            )
        except KafkaError as exc:
            raise broker_error("start the changelog reader", settings, exc) from None

    def _start_probe(self, partition: int) -> Callable[[], int | None]:
        """``highwater()`` after a poll: the fetch's watermark (not ``end_offsets()``)."""
        consumer = self._consumer
        tp = TopicPartition(self._topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        poll_ms = int(POLL_WAIT_S * 1000)

        def probe() -> int | None:
            consumer.poll(timeout_ms=poll_ms, max_records=1)
            high: int | None = consumer.highwater(tp)
            return high

        return probe

    def _start_read(self, partition: int, start: int) -> Fetch:
        consumer = self._consumer
        tp = TopicPartition(self._topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        poll_ms, chunk_records = int(POLL_WAIT_S * 1000), self._chunk_records

        def fetch() -> tuple[list[ChangelogRecord], int | None]:
            polled = consumer.poll(timeout_ms=poll_ms, max_records=chunk_records).get(tp, ())
            offsets = map(_record_offset, polled)
            keys, values = map(_record_key, polled), map(_record_value, polled)
            # The position is past the records polled, and past offsets compaction removed.
            position: int | None = consumer.position(tp, timeout_ms=poll_ms)
            return list(zip(offsets, keys, values, strict=True)), position

        return fetch

    def _unassign(self) -> None:
        self._consumer.unsubscribe()

    def _where(self, partition: int) -> str:
        high = self._consumer.highwater(TopicPartition(self._topic, partition))
        return f"{self._topic}/{partition} (highwater {high})"

    def close(self) -> None:
        """Close connections (nothing was committed)."""
        self._consumer.close(autocommit=False, timeout_ms=5000)


_record_offset = operator.attrgetter("offset")
_record_key = operator.attrgetter("key")
_record_value = operator.attrgetter("value")

"""The confluent-kafka backend (librdkafka): ``kafka.client = "confluent"``.

Installed with the ``confluent`` extra. librdkafka does the network I/O, the
checksums and the record batching in C threads that do not hold the GIL, so
the Python side pays little more than one call per record each way.

Threads and callbacks:

- Consumer: rebalance (``on_assign``/``on_revoke``/``on_lost``), commit and log
  callbacks run inside :meth:`GroupConsumer.poll`, on the caller's thread.
- Producer: one daemon thread calls ``poll`` and is the only thread that serves
  delivery reports, so a batch's counter needs no lock. :meth:`Producer.flush`
  therefore waits for the queue to empty instead of calling librdkafka's
  ``flush`` (which would serve reports on the caller's thread).

Tuning (shared/PERF-NOTES.md): ``fetch.queue.backoff.ms`` 10 (the default of
1000 cut throughput to a third), whole batches from ``consume(n, timeout)``, and
the murmur2 partitioner, so that a key lands on the same output partition as
with the Java client and kafka-python.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from streamer.clients.base import (
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
_rdkafka_log = logging.getLogger("streamer.rdkafka")

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

# Error codes that refuse one record for what it is, so that sending it again
# cannot help (the same as the kafka-python backend's): CORRUPT_MESSAGE,
# MSG_SIZE_TOO_LARGE, RECORD_LIST_TOO_LARGE, INVALID_TIMESTAMP, INVALID_RECORD,
# and librdkafka's local refusals of a message (_BAD_MSG, _INVALID_ARG,
# _KEY_SERIALIZATION, _VALUE_SERIALIZATION).
RECORD_LEVEL_CODES = frozenset(
    {
        KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.INVALID_RECORD,
        KafkaError._BAD_MSG,
        KafkaError._INVALID_ARG,
        KafkaError._KEY_SERIALIZATION,
        KafkaError._VALUE_SERIALIZATION,
    }
)


def is_record_level(error: KafkaError | BaseException) -> bool:
    """True when librdkafka or the broker refused a record for its own content.

    A fatal error (a fenced idempotent producer) is never record-level, whatever
    its code: the producer must be replaced.
    """
    if isinstance(error, KafkaException):
        error = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else error
    if isinstance(error, KafkaError):
        return not error.fatal() and error.code() in RECORD_LEVEL_CODES
    return isinstance(error, TypeError | ValueError)


# Unbound methods, mapped over a list of messages in C: each column is one list().
_offset = Message.offset
_key = Message.key
_value = Message.value
_timestamp = Message.timestamp
_partition = Message.partition
_topic = Message.topic
_error = Message.error
_second = operator.itemgetter(1)
_ANY_PARTITION = -1  # RD_KAFKA_PARTITION_UA: let the configured partitioner choose

# Producer ceilings: the pipeline's credits (batch.max_in_flight) bound what is
# queued, so these only have to be high enough never to be the limit.
_QUEUE_MAX_MESSAGES = 1_000_000
_QUEUE_MAX_KBYTES = 1_048_576
# The consumer's prefetch queue (for all partitions together): enough for a
# few polls at full speed, small enough to keep the memory flat.
_PREFETCH_KBYTES = 4_096
# Most bytes a paused partition holds back before it is paused in librdkafka
# too, when no fetch size is given (see GroupConsumer).
_HELD_MAX_BYTES = 1 << 20


_HEADERS = operator.methodcaller("headers")


def _headers_of(chunk: list[Message]) -> list[Headers] | None:
    """The messages' headers, or None when none has any.

    The common case (no record has a header) costs one C-level pass: a list
    per record, or a Python call per record, cost 0.5-0.7 µs per record in
    all (py-spy under ``benchmarks/cpu.py``), a tenth of the pipeline's time.
    """
    found = list(map(_HEADERS, chunk))
    if not any(found):
        return None
    return [cast("Headers", h) or [] for h in found]


def _nbytes(records: RecordColumns) -> int:
    """The bytes of the records' keys and values."""
    return sum(map(len, filter(None, records.values))) + sum(map(len, filter(None, records.keys)))


def _common(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol,
        "logger": _rdkafka_log,
    }
    if settings.sasl_mechanism:
        config.update(
            {
                "sasl.mechanism": settings.sasl_mechanism,
                "sasl.username": settings.sasl_username,
                "sasl.password": settings.sasl_password,
            }
        )
    return config


def _check_connected(client: Any, settings: KafkaSettings, action: str) -> set[str]:
    """Fetch the topic list within bootstrap_timeout_s; librdkafka itself never fails at start."""
    try:
        metadata = client.list_topics(timeout=settings.bootstrap_timeout_s)
    except KafkaException as exc:
        raise broker_error(action, settings, exc) from None
    return set(metadata.topics)


def _tps(tps: Sequence[TP]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in tps]


def _commit(consumer: Consumer, offsets: dict[TP, int]) -> None:
    """Commit synchronously; a partition's refusal raises."""
    if not offsets:
        return
    result = consumer.commit(
        offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
    )
    failed = [p for p in result or [] if p.error is not None]
    if failed:
        raise KafkaException(failed[0].error)


def _group_config(settings: KafkaSettings, fetch_max_bytes: int | None) -> dict[str, Any]:
    """The librdkafka settings of a :class:`GroupConsumer` (without its callbacks)."""
    fetch: dict[str, Any] = {}
    if fetch_max_bytes is not None:
        # librdkafka refuses a fetch.max.bytes below message.max.bytes (1,000,000).
        fetch["fetch.max.bytes"] = max(fetch_max_bytes, 1_000_000)
    return {
        **_common(settings),
        **fetch,
        "group.id": settings.group_id,
        # Partition p of the input and of the labels topic to one member (docs/labels.md).
        "partition.assignment.strategy": "range",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "session.timeout.ms": int(settings.session_timeout_s * 1000),
        "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
        "max.poll.interval.ms": int(settings.max_poll_interval_s * 1000),
        "fetch.wait.max.ms": int(settings.fetch_max_wait_s * 1000),
        "fetch.queue.backoff.ms": 10,
        "queued.max.messages.kbytes": _PREFETCH_KBYTES,
        # The same as kafka-python's (and the Java client's) default.
        "isolation.level": "read_uncommitted",
    }


def _consume(
    consumer: Consumer, max_records: int, timeout_s: float, *, with_headers: bool = False
) -> dict[TP, RecordColumns]:
    """Up to ``max_records`` records, grouped by partition in offset order."""
    # consume(n, timeout) waits until it has n messages or the timeout: a
    # partial batch would then wait twice (here and in the micro-batcher).
    # Wait for the first message only, then take what librdkafka has already
    # prefetched, like kafka-python's poll.
    consume = consumer.consume
    messages = consume(1, timeout_s) if timeout_s > 0 else []
    if (messages or timeout_s <= 0) and max_records > len(messages):
        messages += consume(max_records - len(messages), 0)
    if not messages:
        return {}
    if any(map(_error, messages)):
        messages = _without_errors(messages)
        if not messages:
            return {}
    topics: list[str | None] = list(map(_topic, messages))
    partitions = np.fromiter(map(_partition, messages), dtype=np.int64, count=len(messages))
    boundaries = partitions[1:] != partitions[:-1]
    if topics.count(topics[0]) != len(topics):
        # Two topics in one poll (the input and the labels topic): their partition
        # numbers are the same, so a run ends where the topic changes too.
        codes = {name: code for code, name in enumerate(dict.fromkeys(topics))}
        topic_codes = np.fromiter(map(codes.__getitem__, topics), np.int64, len(topics))
        boundaries |= topic_codes[1:] != topic_codes[:-1]
    cuts = [0, *(np.flatnonzero(boundaries) + 1).tolist(), len(messages)]
    polled: dict[TP, RecordColumns] = {}
    for start, end in pairwise(cuts):
        chunk = messages[start:end]
        records = RecordColumns(
            cast("list[int]", list(map(_offset, chunk))),  # None only for error events
            list(map(_key, chunk)),
            list(map(_value, chunk)),
            list(map(_second, map(_timestamp, chunk))),
            headers=_headers_of(chunk) if with_headers else None,
        )
        tp = (topics[start] or "", int(partitions[start]))
        if tp in polled:
            polled[tp].extend(records)
        else:
            polled[tp] = records
    return polled


def _without_errors(messages: list[Message]) -> list[Message]:
    """The records among ``messages``: a fatal error raises, others are logged."""
    kept = []
    for message in messages:
        error = message.error()
        if error is None:
            kept.append(message)
        elif error.fatal():
            raise KafkaException(error)
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer: %s", error.str())
    return kept


class _HeldBack:
    """Records of paused partitions that a poll returned anyway, in order (see GroupConsumer).

    A partition whose held records reach ``max_bytes`` is paused in librdkafka
    too ("stopped"), until they are below that again.
    """

    def __init__(self, consumer: Consumer, max_bytes: int) -> None:
        self._consumer = consumer
        self._records: dict[TP, RecordColumns] = {}
        self._bytes: dict[TP, int] = {}
        self._max_bytes = max_bytes
        self._stopped: set[TP] = set()

    def hold(self, polled: dict[TP, RecordColumns], paused: set[TP]) -> None:
        """Take the records of the ``paused`` partitions out of ``polled``."""
        for tp in [tp for tp in polled if tp in paused]:
            records = polled.pop(tp)
            if tp in self._records:
                self._records[tp].extend(records)
            else:
                self._records[tp] = records
            held = self._bytes[tp] = self._bytes.get(tp, 0) + _nbytes(records)
            if held >= self._max_bytes and tp not in self._stopped:
                self._consumer.pause([TopicPartition(*tp)])
                self._stopped.add(tp)

    def release(self, max_records: int, paused: set[TP]) -> dict[TP, RecordColumns]:
        """Up to ``max_records`` held records of partitions no longer paused."""
        released: dict[TP, RecordColumns] = {}
        for tp in [tp for tp in self._records if tp not in paused]:
            if max_records <= 0:
                break
            held = self._records[tp]
            if len(held) <= max_records:
                released[tp] = self._records.pop(tp)
                self._bytes.pop(tp, None)
            else:
                released[tp] = held.take(max_records)
                self._bytes[tp] -= _nbytes(released[tp])
            if tp in self._stopped and self._bytes.get(tp, 0) < self._max_bytes:
                self._restart([tp])
            max_records -= len(released[tp])
        return released

    def restart_below_limit(self, tps: list[TP]) -> None:
        """Let the stopped ones of these resumed partitions fetch again, if below the limit."""
        # Until then a pause would add more (they restart in release() once below).
        self._restart(
            [tp for tp in tps if tp in self._stopped and self._bytes.get(tp, 0) < self._max_bytes]
        )

    def drop(self, tp: TP) -> None:
        """Forget the partition's held records (a seek, or a revocation)."""
        self._records.pop(tp, None)
        self._bytes.pop(tp, None)
        if tp in self._stopped:  # a pause in librdkafka would outlive a new assignment
            self._restart([tp])

    def _restart(self, tps: list[TP]) -> None:
        """Resume in librdkafka: it fetches from after the last record it returned."""
        if tps:
            self._consumer.resume([TopicPartition(*tp) for tp in tps])
            self._stopped.difference_update(tps)


class GroupConsumer:
    """A librdkafka consumer in a group, with manual commits and explicit offsets.

    :meth:`pause` and :meth:`resume` are kept here, not in librdkafka: there a
    pause drops the prefetched records, and the first fetch after a resume came
    about 0.9 s later on this machine, a stall at every backpressure cycle.
    Records of a paused partition that a poll returns anyway are held back, in
    order, until it resumes. The pipeline polls one record at a time while it is
    paused (to serve the callbacks and stay in the group), so each such poll
    holds one more: once a partition holds ``fetch_max_bytes`` (1 MiB by
    default) it is paused in librdkafka too, until it resumes. With records of
    500 KB the held records grew by 5 MB/s before. librdkafka stops prefetching
    once its queue holds ``queued.max.messages.kbytes``, so memory stays bounded.
    """

    def __init__(
        self, settings: KafkaSettings, max_poll_records: int, fetch_max_bytes: int | None = None
    ) -> None:
        """Open the consumer (it subscribes later, in :meth:`subscribe`).

        ``fetch_max_bytes`` bounds one fetch (None: librdkafka's 50 MiB); the
        pipeline derives it from batch.max_in_flight_bytes.
        """
        self._settings = settings
        self._with_headers = bool(settings.propagate_headers.strip())
        self._max_poll_records = max_poll_records
        self._consumer = Consumer(
            {**_group_config(settings, fetch_max_bytes), "on_commit": self._on_commit}
        )
        self._assigned: set[TP] = set()
        self._paused: set[TP] = set()
        self._held = _HeldBack(
            self._consumer, _HELD_MAX_BYTES if fetch_max_bytes is None else fetch_max_bytes
        )
        self._pending_commits: list[
            tuple[dict[TP, int], Callable[[dict[TP, int], Exception | None], None]]
        ] = []
        # While an on_assign callback runs, seeks are collected and applied with
        # the assignment (a seek before it fails with "erroneous state").
        self._assigning = False
        self._pending_seeks: dict[TP, int] = {}
        self._closing = False
        self._end_offsets: dict[TP, int] = {}

    def existing_topics(self) -> set[str]:
        """Topic names the broker knows (does not create any)."""
        return _check_connected(self._consumer, self._settings, "list the topics")

    def subscribe(
        self,
        topic: str | Sequence[str],
        on_assigned: Callable[[list[TP]], None],
        on_revoked: Callable[[list[TP]], None],
    ) -> None:
        """Join the group on the topics; the callbacks run inside :meth:`poll`."""

        def assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            tps = [(p.topic, p.partition) for p in partitions]
            self._assigning = True
            self._pending_seeks.clear()
            try:
                self._assigned.update(tps)
                on_assigned(tps)
            finally:
                self._assigning = False
            # No offset (OFFSET_INVALID) means the group's committed offset.
            consumer.assign(
                [
                    TopicPartition(t, p, self._pending_seeks.get((t, p), OFFSET_INVALID))
                    for t, p in tps
                ]
            )

        def revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            tps = [(p.topic, p.partition) for p in partitions]
            try:
                if not self._closing:
                    on_revoked(tps)
            finally:
                self._assigned.difference_update(tps)
                # A partition that moves comes back unpaused, as with kafka-python.
                self._paused.difference_update(tps)
                for tp in tps:
                    self._held.drop(tp)
                consumer.unassign()

        topics = [topic] if isinstance(topic, str) else list(topic)
        self._consumer.subscribe(topics, on_assign=assign, on_revoke=revoke, on_lost=revoke)

    def poll(self, timeout_s: float, max_records: int) -> dict[TP, RecordColumns]:
        """Fetch up to ``max_records`` records, grouped by partition in offset order."""
        max_records = max(1, max_records)
        released = self._held.release(max_records, self._paused)
        if released:
            return released
        if self._assigned and self._assigned <= self._paused:
            # Everything is paused: serve the callbacks, take as little as possible.
            max_records, timeout_s = 1, 0.0
        polled = _consume(self._consumer, max_records, timeout_s, with_headers=self._with_headers)
        if self._paused:
            self._held.hold(polled, self._paused)
        return polled

    def pause(self, tps: list[TP]) -> None:
        """Stop returning records of these partitions; the group membership stays."""
        self._paused.update(tps)

    def resume(self, tps: list[TP]) -> None:
        """Return records of these partitions again (first those held back)."""
        self._paused.difference_update(tps)
        self._held.restart_below_limit(tps)
        for tp in tps:  # fetches report the end again; a refreshed one would go stale
            self._end_offsets.pop(tp, None)

    def seek(self, tp: TP, offset: int) -> None:
        """Fetch this assigned partition from ``offset`` next."""
        self._held.drop(tp)
        if self._assigning:
            self._pending_seeks[tp] = offset
            return
        self._consumer.seek(TopicPartition(tp[0], tp[1], offset))

    def highwater(self, tp: TP) -> int | None:
        """The partition's end offset as of the last fetch or refresh, or None before one."""
        try:
            watermarks = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
        except KafkaException:
            watermarks = None
        fetched = watermarks[1] if watermarks is not None and watermarks[1] >= 0 else None
        return latest_end(fetched, self._end_offsets.get(tp))

    def refresh_end_offsets(self, tps: list[TP], timeout_s: float) -> None:
        """Ask the broker for the end offsets; librdkafka stops fetching when its queue is full."""
        deadline = time.monotonic() + timeout_s
        for tp in tps:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(*tp), timeout=remaining, cached=False
            )
            self._end_offsets[tp] = high

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously."""
        _commit(self._consumer, offsets)

    def commit_async(
        self, offsets: dict[TP, int], on_done: Callable[[dict[TP, int], Exception | None], None]
    ) -> None:
        """Commit without blocking; ``on_done`` runs inside a later :meth:`poll`."""
        if not offsets:
            on_done(offsets, None)
            return
        self._pending_commits.append((dict(offsets), on_done))
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=True,
            )
        except KafkaException as exc:
            self._pending_commits.pop()
            on_done(offsets, exc)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # librdkafka reports synchronous commits here too: only ours are matched.
        result = {(p.topic, p.partition): p.offset for p in partitions}
        for index, (offsets, on_done) in enumerate(self._pending_commits):
            if offsets == result:
                del self._pending_commits[index]
                failed = [p.error for p in partitions if p.error is not None]
                if error is not None and error.code() != KafkaError._NO_OFFSET:
                    on_done(offsets, KafkaException(error))
                elif failed:
                    on_done(offsets, KafkaException(failed[0]))
                else:
                    on_done(offsets, None)
                return

    def close(self) -> None:
        """Leave the group and close connections (never commits on its own)."""
        self._closing = True
        self._consumer.close()


class _BatchReport:
    """One batch's delivery reports, and the records that ``produce`` refused at once.

    The delivery thread calls :meth:`report`; the producer actor's thread calls
    :meth:`refused` while it sends. ``next()`` of an ``itertools.count`` is
    atomic under the GIL, so the count needs no lock, and the thread that
    takes the last number calls ``done``. A failed report names its message,
    not its index: the index is found from the batch's records, only when
    something failed.
    """

    __slots__ = ("_count", "_done", "_failed", "_groups", "_refused", "_total")

    def __init__(self, groups: Sequence[OutputGroup], total: int, done: DoneCallback) -> None:
        self._groups = groups
        self._total = total
        self._count = itertools.count(1)
        self._failed: list[tuple[KafkaError, Message]] = []
        self._refused: list[SendFailure] = []
        self._done = done

    def report(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failed.append((error, message))
        if next(self._count) == self._total:
            self._finish()

    def refused(self, index: int, exc: BaseException) -> None:
        self._refused.append(SendFailure(index, error_text(exc), True))
        if next(self._count) == self._total:
            self._finish()

    def _finish(self) -> None:
        failures = list(self._refused)
        if self._failed:
            failures.extend(self._locate())
        failures.sort(key=lambda failure: failure.index)
        self._done(failures)

    def _locate(self) -> list[SendFailure]:
        # Records are found by their content; two identical records (same topic,
        # key, value and headers) are interchangeable, so either index is right.
        where: dict[tuple[Any, ...], list[int]] = {}
        index = 0
        for group in self._groups:
            headers = group.headers
            for row, value in enumerate(group.values):
                row_headers = None if headers is None else headers[row]
                header = () if row_headers is None else tuple(row_headers)
                where.setdefault((group.topic, group.keys[row], value, header), []).append(index)
                index += 1
        located = []
        for error, message in self._failed:
            header = tuple(cast("list[tuple[str, bytes]]", message.headers() or ()))
            indexes = where.get((message.topic(), message.key(), message.value(), header))
            position = indexes.pop(0) if indexes else -1
            text = f"KafkaError: {error.str()}"
            located.append(SendFailure(position, text, is_record_level(error)))
        return located


class _Future:
    """The result of one :meth:`Producer.send`, with kafka-python's callback methods."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Any], Any]] = []
        self._errbacks: list[Callable[[BaseException], Any]] = []
        self._outcome: tuple[bool, Any] | None = None

    def add_callback(self, fn: Callable[[Any], Any]) -> _Future:
        with self._lock:
            if self._outcome is None:
                self._callbacks.append(fn)
                return self
        if self._outcome[0]:
            fn(self._outcome[1])
        return self

    def add_errback(self, fn: Callable[[BaseException], Any]) -> _Future:
        with self._lock:
            if self._outcome is None:
                self._errbacks.append(fn)
                return self
        if not self._outcome[0]:
            fn(self._outcome[1])
        return self

    def report(self, error: KafkaError | None, message: Message) -> None:
        ok = error is None
        value: Any = message if ok else KafkaException(error)
        with self._lock:
            self._outcome = (ok, value)
            callbacks = self._callbacks if ok else self._errbacks
        for fn in callbacks:
            fn(value)


class Producer:
    """A librdkafka producer with acks=all and idempotence."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer = _Producer(
            {
                **_common(settings),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": settings.linger_s * 1000,
                "batch.size": settings.producer_batch_bytes,
                "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
                "message.max.bytes": settings.max_request_bytes,
                "partitioner": "murmur2_random",
                "queue.buffering.max.messages": _QUEUE_MAX_MESSAGES,
                "queue.buffering.max.kbytes": _QUEUE_MAX_KBYTES,
            }
        )
        _check_connected(self._producer, settings, "start the producer")
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="confluent-delivery", daemon=True)
        self._poller.start()

    def _serve(self) -> None:
        poll = self._producer.poll
        while not self._stop.is_set():
            poll(0.05)

    def _produce(self, topic: str, value: bytes, key: bytes | None, **kwargs: Any) -> None:
        deadline = time.monotonic() + self._settings.delivery_timeout_s
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
            except BufferError:
                # Full local queue: the poll thread drains it; never poll here.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
            else:
                return

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers | None = None
    ) -> _Future:
        """Queue one record; the future resolves when the broker acknowledges it."""
        future = _Future()
        self._produce(topic, value, key, headers=headers, on_delivery=future.report)
        return future

    def send_batch(self, groups: Sequence[OutputGroup], done: DoneCallback) -> None:
        """Send the groups in order; ``done(failures)`` runs once all settled.

        It runs on the poll thread, or on the caller's when ``produce`` refused
        the last records at once (e.g. above ``message.max.bytes``): such a
        refusal is the record's failure, not the producer's.
        """
        total = sum(len(g) for g in groups)
        if total == 0:
            done([])
            return
        batch = _BatchReport(groups, total, done)
        report = batch.report
        produce = self._producer.produce
        index = -1
        for group in groups:
            topic, headers = group.topic, group.headers
            # A state changelog group names its partition (the input's).
            partition = _ANY_PARTITION if group.partition is None else group.partition
            if headers is None:  # the common case: no headers argument to parse
                for value, key in zip(group.values, group.keys, strict=True):
                    index += 1
                    try:
                        # Positional (partition -1: the partitioner's choice): a keyword
                        # argument cost 0.3 us more per record in the argument parsing.
                        produce(topic, value, key, partition, report)
                    except BufferError:
                        self._produce_refusable(batch, index, topic, value, key, None, partition)
                    except (KafkaException, TypeError, ValueError) as exc:
                        if not is_record_level(exc):
                            raise
                        batch.refused(index, exc)
                continue
            for value, key, header in zip(group.values, group.keys, headers, strict=True):
                index += 1
                self._produce_refusable(batch, index, topic, value, key, header)

    def _produce_refusable(
        self,
        batch: _BatchReport,
        index: int,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers | None,
        partition: int = _ANY_PARTITION,
    ) -> None:
        try:
            self._produce(
                topic, value, key, partition=partition, on_delivery=batch.report, headers=headers
            )
        except (KafkaException, TypeError, ValueError) as exc:
            if not is_record_level(exc):
                raise
            batch.refused(index, exc)

    def flush(self, timeout_s: float) -> bool:
        """Block until every queued record is acknowledged or failed (and reported)."""
        deadline = time.monotonic() + timeout_s
        while len(self._producer) > 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        return len(self._producer) == 0

    def close(self) -> None:
        """Flush and close, bounded in time."""
        self.flush(5.0)
        self._stop.set()
        self._poller.join(timeout=5)
        self._producer.flush(1.0)


def ensure_topics(settings: KafkaSettings, topics: dict[str, int], replication: int = 1) -> None:
    """Create the topics that do not exist yet (name -> partitions)."""
    admin = AdminClient(_common(settings))
    existing = _check_connected(admin, settings, "connect the admin client")
    wanted = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication)
        for name, partitions in topics.items()
        if name not in existing
    ]
    _create_topics(admin, settings, wanted)


def _create_topics(admin: AdminClient, settings: KafkaSettings, wanted: list[NewTopic]) -> set[str]:
    """Create the topics; the names of those created (one created meanwhile is not)."""
    if not wanted:
        return set()
    created = set()
    for name, future in admin.create_topics(wanted, request_timeout=30.0).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                action = f"create topic {name!r}"
                raise broker_error(action, settings, exc) from None
        else:
            created.add(name)
    return created


def _reader_config(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    return {
        **_common(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,
        "fetch.queue.backoff.ms": 10,
        "isolation.level": "read_uncommitted",
    }


class GroupReader:
    """``replay-dlq``'s reader: a topic's partitions assigned by hand, for the settings' group."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self._settings = settings
        self._consumer = Consumer(_reader_config(settings, settings.group_id))
        try:
            metadata = self._consumer.list_topics(timeout=settings.bootstrap_timeout_s).topics
        except KafkaException as exc:
            self._consumer.close()
            raise broker_error("start the reader", settings, exc) from None
        partitions = metadata[topic].partitions if topic in metadata else {}
        self.partitions: list[TP] = [(topic, p) for p in sorted(partitions)]

    def end_offsets(self, timeout_s: float) -> dict[TP, int]:
        """The highwater of a fetch from the beginning, by a probe that commits nothing.

        Not ``query_watermark_offsets``: on Tansu it answers the last batch's
        base offset + 1.
        """
        import uuid  # noqa: PLC0415 - only a replay needs it

        probe = Consumer(_reader_config(self._settings, f"streamer-probe-{uuid.uuid4().hex[:12]}"))
        ends: dict[TP, int] = {}
        try:
            probe.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self.partitions])
            for _ in range(max(1, int(timeout_s / 0.2))):
                probe.consume(1, 0.2)
                for tp in self.partitions:
                    high = probe.get_watermark_offsets(TopicPartition(*tp), cached=True)[1]
                    if high >= 0:
                        ends[tp] = high
                if len(ends) == len(self.partitions):
                    break
        finally:
            probe.close()
        return ends

    def start_at_committed(self, timeout_s: float) -> dict[TP, int]:
        """Assign the partitions at the group's committed offsets (the beginning when none)."""
        committed = self._consumer.committed(_tps(self.partitions), timeout=timeout_s)
        positions = {(p.topic, p.partition): max(p.offset, 0) for p in committed}
        start = [(p, p.offset if p.offset >= 0 else OFFSET_BEGINNING) for p in committed]
        self._consumer.assign([TopicPartition(p.topic, p.partition, o) for p, o in start])
        return positions

    def poll(self, timeout_s: float) -> dict[TP, tuple[RecordColumns, list[Headers]]]:
        """Fetch records, with their headers."""
        messages = self._consumer.consume(1000, timeout_s)
        polled: dict[TP, tuple[RecordColumns, list[Headers]]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise broker_error("read the topic", self._settings, KafkaException(error))
                continue
            tp = (message.topic() or "", message.partition() or 0)
            if tp not in polled:
                polled[tp] = (RecordColumns.empty(), [])
            records, headers = polled[tp]
            records.offsets.append(message.offset() or 0)
            records.keys.append(message.key())
            records.values.append(message.value())
            records.timestamps.append(message.timestamp()[1])
            headers.append(cast("Headers", message.headers() or []))
        return polled

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously."""
        _commit(self._consumer, offsets)

    def close(self) -> None:
        """Close connections (never commits on its own)."""
        self._consumer.close()


def read_records(
    settings: KafkaSettings,
    topics: Sequence[str],
    on_batch: Callable[[TP, RecordColumns, list[Headers]], None],
    *,
    idle_timeout_s: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
    progress_interval_s: float = 1.0,
) -> dict[TP, int]:
    """Read whole topics from the beginning to their end, committing nothing (for verify).

    A partition ends at librdkafka's end-of-partition event, which comes when a
    fetch reaches the highwater that the broker reports (``query_watermark_offsets``
    is wrong on Tansu: it answers the last batch's base offset + 1). Records go
    to ``on_batch`` (partition, its records in offset order, their headers) as
    they arrive, and nothing is kept here. Every ``progress_interval_s`` and at
    the end, ``on_progress(read, total)`` gets the records read and the records
    known to exist so far (from the watermarks of the last fetches).

    Returns:
        The end offset each partition was read to.

    Raises:
        BrokerError: Nothing arrived and no partition reached its end for
            ``idle_timeout_s``, or the broker cannot be reached.
    """
    from streamer.clients.reading import WholeTopicRead  # noqa: PLC0415 - stands alone

    consumer = _open_reader(settings)
    try:
        tps = _assign_from_beginning(consumer, settings, topics)
        state = WholeTopicRead(
            topics,
            tps,
            idle_timeout_s=idle_timeout_s,
            on_progress=on_progress,
            progress_interval_s=progress_interval_s,
        )
        reader = _TopicReader(consumer, settings, tps, state)
        while state.remaining:
            reader.poll(on_batch)
            reader.keep_pace()
        state.done(reader.total)
    finally:
        consumer.close()
    return state.ends


def _open_reader(settings: KafkaSettings) -> Consumer:
    """A consumer that joins no group and commits nothing, for :func:`read_records`."""
    import uuid  # noqa: PLC0415 - only the reader needs it

    return Consumer(
        {
            **_common(settings),
            # Required by librdkafka; nothing is committed and no group is joined.
            "group.id": f"streamer-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
            "fetch.queue.backoff.ms": 10,
            "queued.max.messages.kbytes": 4096,
            "isolation.level": "read_uncommitted",
        }
    )


def _assign_from_beginning(
    consumer: Consumer, settings: KafkaSettings, topics: Sequence[str]
) -> list[TP]:
    """Assign every partition of the existing ``topics``, each at its first offset."""
    try:
        metadata = consumer.list_topics(timeout=settings.bootstrap_timeout_s).topics
    except KafkaException as exc:
        raise broker_error("start a reader", settings, exc) from None
    tps = [
        (topic, partition)
        for topic in topics
        if topic in metadata
        for partition in sorted(metadata[topic].partitions)
    ]
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in tps])
    return tps


def _reader_grouping(message: Message) -> tuple[TP, bool]:
    """A message's partition, and whether it is an event (an error or an end)."""
    tp = (message.topic() or "", message.partition() or 0)
    return tp, message.error() is not None


class _TopicReader:
    """The polling side of one :func:`read_records`; ``state`` decides the rest."""

    def __init__(
        self, consumer: Consumer, settings: KafkaSettings, tps: list[TP], state: WholeTopicRead
    ) -> None:
        self._consumer = consumer
        self._settings = settings
        self._tps = tps
        self._state = state

    def poll(self, on_batch: Callable[[TP, RecordColumns, list[Headers]], None]) -> None:
        """Hand on the records of one consume, and handle its events, in order."""
        messages = self._consumer.consume(5000, 0.2)
        for (tp, is_event), group in itertools.groupby(messages, key=_reader_grouping):
            chunk = list(group)
            if is_event:
                for event in chunk:
                    self._handle_event(tp, event)
            elif tp in self._state.remaining:
                columns = RecordColumns(
                    [m.offset() or 0 for m in chunk],
                    [m.key() for m in chunk],
                    [m.value() for m in chunk],
                    [m.timestamp()[1] for m in chunk],
                )
                headers = [cast("Headers", m.headers() or []) for m in chunk]
                on_batch(tp, columns, headers)
                self._state.delivered(tp, columns.timestamps)

    def _handle_event(self, tp: TP, event: Message) -> None:
        error = cast("KafkaError", event.error())  # the grouping put events only here
        if error.code() == KafkaError._PARTITION_EOF:
            if tp in self._state.remaining:
                self._state.finished(tp, event.offset() or 0)
                self._consumer.pause([TopicPartition(*tp)])
        elif error.fatal():
            raise broker_error("read the topics", self._settings, KafkaException(error))
        else:
            log.warning("reader: %s", error.str())

    def keep_pace(self) -> None:
        """Report progress, check the deadline, and pause or resume to keep pace."""
        consumer = self._consumer
        pause, resume = self._state.step(self.total, self._unfinished)
        for change, changed in ((consumer.pause, pause), (consumer.resume, resume)):
            if changed:
                change([TopicPartition(*tp) for tp in changed])

    def total(self) -> int:
        """The records known to exist so far (from the last fetches' watermarks)."""
        known = 0
        for tp in self._tps:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            known += high - low if low >= 0 and high >= 0 else 0
        return max(self._state.read, known)

    def _unfinished(self) -> str:
        consumer = self._consumer
        waiting = sorted(self._state.remaining)[:4]
        positions = consumer.position([TopicPartition(*tp) for tp in waiting])
        return ", ".join(
            f"{p.topic}/{p.partition} at {p.offset} of "
            f"{consumer.get_watermark_offsets(p, cached=True)[1]}"
            for p in positions
        )


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
    admin = AdminClient(_common(settings))
    try:
        topics = admin.list_topics(timeout=settings.bootstrap_timeout_s).topics
    except KafkaException as exc:
        raise broker_error("connect the admin client", settings, exc) from None
    if input_topic not in topics:
        raise missing_input(input_topic, settings.bootstrap_servers)
    input_partitions = len(topics[input_topic].partitions)
    if changelog_topic not in topics:
        wanted = NewTopic(
            changelog_topic,
            num_partitions=input_partitions,
            replication_factor=-1,  # the broker's default.replication.factor
            config=dict(CHANGELOG_CONFIG),
        )
        if _create_topics(admin, settings, [wanted]):
            log.info(
                "created the changelog topic %s (compacted, %d partitions)",
                changelog_topic,
                input_partitions,
            )
            return
        topics = admin.list_topics(timeout=settings.bootstrap_timeout_s).topics
    check_changelog(
        changelog_topic,
        input_topic,
        partitions=len(topics[changelog_topic].partitions),
        input_partitions=input_partitions,
        cleanup_policy=_cleanup_policy(admin, changelog_topic, settings.bootstrap_timeout_s),
        setting=setting,
    )


def partition_counts(settings: KafkaSettings) -> dict[str, int]:
    """Every topic's number of partitions (BrokerError when the broker cannot be reached)."""
    admin = AdminClient(_common(settings))
    try:
        topics = admin.list_topics(timeout=settings.bootstrap_timeout_s).topics
    except KafkaException as exc:
        raise broker_error("connect the admin client", settings, exc) from None
    return {name: len(topic.partitions) for name, topic in topics.items() if topic.error is None}


def _cleanup_policy(admin: AdminClient, topic: str, timeout_s: float) -> str | None:
    """The topic's cleanup.policy, or None when the broker does not describe it."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(
            timeout=timeout_s
        )
    except KafkaException as exc:
        log.warning("cannot check the cleanup.policy of %s: %s", topic, error_text(exc))
        return None
    entry = configs.get("cleanup.policy")
    if entry is None or entry.value is None:
        log.warning("the broker does not report the cleanup.policy of %s; not checked", topic)
        return None
    return str(entry.value)


class ChangelogReader(PartitionReader):
    """Reads a changelog topic's partitions by hand: librdkafka needs a group.id, none is joined.

    The group id is a throwaway one and nothing is ever committed (partitions
    are assigned, never subscribed).
    """

    def _connect(self) -> None:
        import uuid  # noqa: PLC0415 - only the readers need it

        settings = self._settings
        self._consumer = Consumer(
            {
                **_common(settings),
                "group.id": f"streamer-changelog-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # An end-of-partition event carries the highwater: the end of an empty
                # partition, and of one whose last offsets were compacted away.
                "enable.partition.eof": True,
                # A start below the log start (compaction removed the first records).
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": READER_FETCH_WAIT_MS,
                "fetch.queue.backoff.ms": 10,
                "queued.max.messages.kbytes": _PREFETCH_KBYTES,  # as fast as 64 MiB here
                "isolation.level": "read_uncommitted",
            }
        )
        try:
            # All topics: a Metadata request naming a missing topic may create it (Tansu does).
            self._consumer.list_topics(timeout=settings.bootstrap_timeout_s)
        except KafkaException as exc:
            self._consumer.close()
            raise broker_error("start the changelog reader", settings, exc) from None

    def _start_probe(self, partition: int) -> Callable[[], int | None]:
        """The cached watermark, once this assignment's first message or end event arrived.

        Not ``query_watermark_offsets`` (a ListOffsets request). Waiting for a
        message of this assignment keeps a watermark cached by an earlier one out.
        """
        consumer, settings = self._consumer, self._settings
        tp = TopicPartition(self._topic, partition)
        consumer.assign([TopicPartition(self._topic, partition, OFFSET_BEGINNING)])
        fetched = False

        def probe() -> int | None:
            nonlocal fetched
            messages = consumer.consume(1, POLL_WAIT_S)
            _raise_fatal(messages, settings)
            fetched = fetched or any(m.partition() == partition for m in messages)
            if not fetched:
                return None
            high: int = consumer.get_watermark_offsets(tp, cached=True)[1]
            return high if high >= 0 else None

        return probe

    def _start_read(self, partition: int, start: int) -> Fetch:
        consumer, settings = self._consumer, self._settings
        chunk_records = self._chunk_records
        consumer.assign([TopicPartition(self._topic, partition, start)])

        def fetch() -> tuple[list[ChangelogRecord], int | None]:
            # consume(n, timeout) waits for n messages: wait for the first one only.
            messages = consumer.consume(1, POLL_WAIT_S)
            if messages:
                messages += consumer.consume(chunk_records - 1, 0)
            position = None
            if any(map(_error, messages)):
                _raise_fatal(messages, settings)
                position = _end_event(messages, partition)
                messages = [m for m in messages if m.error() is None]
            offsets, keys, values = (
                map(_offset, messages),
                map(_key, messages),
                map(_value, messages),
            )
            records = list(zip(offsets, keys, values, strict=True))
            return cast("list[ChangelogRecord]", records), position

        return fetch

    def _unassign(self) -> None:
        self._consumer.unassign()

    def _where(self, partition: int) -> str:
        tp = TopicPartition(self._topic, partition)
        position = self._consumer.position([tp])[0].offset
        high = self._consumer.get_watermark_offsets(tp, cached=True)[1]
        return f"{self._topic}/{partition} (position {position}, highwater {high})"

    def close(self) -> None:
        """Close connections (nothing was committed)."""
        self._consumer.close()


def _end_event(messages: list[Message], partition: int) -> int | None:
    """The offset of the last end-of-partition event among ``messages`` (the highwater), if any."""
    ends = [
        m.offset()
        for m in messages
        if m.error() is not None
        and m.error().code() == KafkaError._PARTITION_EOF  # type: ignore[union-attr]
        and m.partition() == partition
    ]
    return ends[-1] if ends else None


def _raise_fatal(messages: list[Message], settings: KafkaSettings) -> None:
    for message in messages:
        error = message.error()
        if error is not None and error.fatal():
            raise broker_error("read the changelog", settings, KafkaException(error))

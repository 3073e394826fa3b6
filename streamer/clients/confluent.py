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

import logging
import operator
import threading
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, cast

import numpy as np
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.clients.base import (
    TP,
    DoneCallback,
    Headers,
    OutputGroup,
    RecordColumns,
    broker_error,
    latest_end,
)
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("streamer.rdkafka")

__all__ = ["GroupConsumer", "Producer", "ensure_topics"]

# Unbound methods, mapped over a list of messages in C: each column is one list().
_offset = Message.offset
_key = Message.key
_value = Message.value
_timestamp = Message.timestamp
_partition = Message.partition
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


class GroupConsumer:
    """A librdkafka consumer in a group, with manual commits and explicit offsets.

    :meth:`pause` and :meth:`resume` are kept here, not in librdkafka: there a
    pause drops the prefetched records, and the first fetch after a resume came
    about 0.9 s later on this machine, a stall at every backpressure cycle.
    Records of a paused partition that a poll returns anyway are held back, in
    order, until it resumes (at most one poll's worth, since the pipeline polls
    a single record while it is paused). librdkafka stops prefetching once its
    queue holds ``queued.max.messages.kbytes``, so memory stays bounded.
    """

    def __init__(self, settings: KafkaSettings, max_poll_records: int) -> None:
        self._settings = settings
        self._max_poll_records = max_poll_records
        self._consumer = Consumer(
            {
                **_common(settings),
                "group.id": settings.group_id,
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
                "on_commit": self._on_commit,
            }
        )
        self._assigned: set[TP] = set()
        self._paused: set[TP] = set()
        self._held: dict[TP, RecordColumns] = {}
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
        topic: str,
        on_assigned: Callable[[list[TP]], None],
        on_revoked: Callable[[list[TP]], None],
    ) -> None:
        """Join the group on one topic; the callbacks run inside :meth:`poll`."""

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
                    self._held.pop(tp, None)
                consumer.unassign()

        self._consumer.subscribe([topic], on_assign=assign, on_revoke=revoke, on_lost=revoke)

    def poll(self, timeout_s: float, max_records: int) -> dict[TP, RecordColumns]:
        """Fetch up to ``max_records`` records, grouped by partition in offset order."""
        max_records = max(1, max_records)
        released = self._release_held(max_records)
        if released:
            return released
        if self._assigned and self._assigned <= self._paused:
            # Everything is paused: serve the callbacks, take as little as possible.
            max_records, timeout_s = 1, 0.0
        polled = self._consume(max_records, timeout_s)
        if self._paused:
            for tp in [tp for tp in polled if tp in self._paused]:
                records = polled.pop(tp)
                if tp in self._held:
                    self._held[tp].extend(records)
                else:
                    self._held[tp] = records
        return polled

    def _release_held(self, max_records: int) -> dict[TP, RecordColumns]:
        released: dict[TP, RecordColumns] = {}
        for tp in [tp for tp in self._held if tp not in self._paused]:
            if max_records <= 0:
                break
            held = self._held[tp]
            if len(held) <= max_records:
                released[tp] = self._held.pop(tp)
            else:
                released[tp] = held.take(max_records)
            max_records -= len(released[tp])
        return released

    def _consume(self, max_records: int, timeout_s: float) -> dict[TP, RecordColumns]:
        # consume(n, timeout) waits until it has n messages or the timeout: a
        # partial batch would then wait twice (here and in the micro-batcher).
        # Wait for the first message only, then take what librdkafka has already
        # prefetched, like kafka-python's poll.
        consume = self._consumer.consume
        messages = consume(1, timeout_s) if timeout_s > 0 else []
        if (messages or timeout_s <= 0) and max_records > len(messages):
            messages += consume(max_records - len(messages), 0)
        if not messages:
            return {}
        if any(map(_error, messages)):
            messages = self._without_errors(messages)
            if not messages:
                return {}
        topic: str = messages[0].topic() or ""
        partitions = np.fromiter(map(_partition, messages), dtype=np.int64, count=len(messages))
        cuts = [0, *(np.flatnonzero(partitions[1:] != partitions[:-1]) + 1).tolist()]
        cuts.append(len(messages))
        polled: dict[TP, RecordColumns] = {}
        for start, end in pairwise(cuts):
            chunk = messages[start:end]
            records = RecordColumns(
                cast("list[int]", list(map(_offset, chunk))),  # None only for error events
                list(map(_key, chunk)),
                list(map(_value, chunk)),
                list(map(_second, map(_timestamp, chunk))),
            )
            tp = (topic, int(partitions[start]))
            if tp in polled:
                polled[tp].extend(records)
            else:
                polled[tp] = records
        return polled

    def _without_errors(self, messages: list[Message]) -> list[Message]:
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

    def assignment(self) -> list[TP]:
        """Partitions currently assigned to this member."""
        return sorted(self._assigned)

    def pause(self, tps: list[TP]) -> None:
        """Stop returning records of these partitions; the group membership stays."""
        self._paused.update(tps)

    def resume(self, tps: list[TP]) -> None:
        """Return records of these partitions again (first those held back)."""
        self._paused.difference_update(tps)
        for tp in tps:  # fetches report the end again; a refreshed one would go stale
            self._end_offsets.pop(tp, None)

    def seek(self, tp: TP, offset: int) -> None:
        """Fetch this assigned partition from ``offset`` next."""
        self._held.pop(tp, None)
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
        if not offsets:
            return
        result = self._consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            asynchronous=False,
        )
        failed = [p for p in result or [] if p.error is not None]
        if failed:
            raise KafkaException(failed[0].error)

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

    def committed(self, tp: TP) -> int | None:
        """The group's committed offset for a partition."""
        result = self._consumer.committed([TopicPartition(*tp)], timeout=10.0)
        offset: int = result[0].offset
        return offset if offset >= 0 else None

    def close(self) -> None:
        """Leave the group and close connections (never commits on its own)."""
        self._closing = True
        self._consumer.close()


class _BatchReport:
    """One batch's delivery reports; only the producer's poll thread calls :meth:`report`."""

    __slots__ = ("_count", "_done", "_error", "_total")

    def __init__(self, total: int, done: DoneCallback) -> None:
        self._total = total
        self._count = 0
        self._error: str | None = None
        self._done = done

    def report(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None and self._error is None:
            self._error = f"KafkaError: {error.str()}"
        self._count += 1
        if self._count == self._total:
            self._done(self._error)


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
        """Send the groups in order; ``done(error)`` runs on the poll thread once all settled."""
        total = sum(len(g) for g in groups)
        if total == 0:
            done(None)
            return
        report = _BatchReport(total, done).report
        produce = self._producer.produce
        for group in groups:
            topic, headers = group.topic, group.headers
            if headers is None:  # the common case: no headers argument to parse
                for value, key in zip(group.values, group.keys, strict=True):
                    try:
                        # Positional (partition -1: the partitioner's choice): a keyword
                        # argument cost 0.3 us more per record in the argument parsing.
                        produce(topic, value, key, _ANY_PARTITION, report)
                    except BufferError:
                        self._produce(topic, value, key, on_delivery=report)
                continue
            for value, key, header in zip(group.values, group.keys, headers, strict=True):
                self._produce(topic, value, key, on_delivery=report, headers=header)

    def flush(self, timeout_s: float) -> None:
        """Block until every queued record is acknowledged or failed (and reported)."""
        deadline = time.monotonic() + timeout_s
        while len(self._producer) > 0 and time.monotonic() < deadline:
            time.sleep(0.005)

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
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=30.0).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                action = f"create topic {name!r}"
                raise broker_error(action, settings, exc) from None

"""Fake neighbours for the actor tests: no Kafka, no network.

``FakeConsumer`` and ``FakeProducer`` implement ``streamer.clients.base.ConsumerClient`` and
``ProducerClient``. ``Recorder`` is a pykka actor that stands in for a downstream stage and
hands every message it gets to a ``Mailbox`` the test waits on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pykka

from streamer.clients.base import RecordRejectedError
from streamer.core.records import TP, RecordColumns
from streamer.settings import KafkaSettings

WAIT_S = 5.0


def wait_until(
    predicate: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.01
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            msg = f"condition not met within {timeout}s: {predicate}"
            raise AssertionError(msg)
        pause.wait(interval)


class Mailbox:
    """A thread-safe list that tests can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def put(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def items(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def wait_for(self, count: int, timeout: float = WAIT_S) -> list[Any]:
        """Wait until at least ``count`` items arrived; return them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) >= count, timeout):
                msg = f"expected {count} messages within {timeout}s, got {len(self._items)}"
                raise AssertionError(msg)
            return list(self._items)


@dataclass(frozen=True)
class Sync:
    """Asked of a Recorder: the reply means every earlier message was recorded."""


class Recorder(pykka.ThreadingActor):
    """A downstream actor that records every message it is told."""

    def __init__(self, mailbox: Mailbox, ignore: tuple[type, ...] = ()) -> None:
        super().__init__()
        self.mailbox = mailbox
        self._ignore = (Sync, *ignore)

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, self._ignore):
            self.mailbox.put(message)
        return None


def sync(ref: pykka.ActorRef, timeout: float = WAIT_S) -> None:
    """Wait until ``ref`` handled every message told to it so far."""
    ref.ask(Sync(), timeout=timeout)


def start_recorder(ignore: tuple[type, ...] = ()) -> tuple[pykka.ActorRef, Mailbox]:
    """A Recorder and its mailbox; messages of the ``ignore`` types are not recorded."""
    mailbox = Mailbox()
    return Recorder.start(mailbox, ignore), mailbox


# --- the consumer side -------------------------------------------------------


@dataclass(frozen=True)
class FakeRecord:
    """The fields of a kafka-python ConsumerRecord that the pipeline reads."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def make_records(
    values: Iterable[bytes | None], *, offsets: Iterable[int] | None = None
) -> list[FakeRecord]:
    values = list(values)
    offsets = list(range(len(values))) if offsets is None else list(offsets)
    return [
        FakeRecord(offset=o, key=f"k{o}".encode(), value=v, timestamp=1_700_000_000_000 + o)
        for o, v in zip(offsets, values, strict=True)
    ]


class FakeConsumer:
    """Scripted stand-in for ``streamer.clients.base.ConsumerClient``.

    The partitions of ``records`` are assigned on the first poll, inside ``poll``
    as kafka-python does. ``poll`` honours ``max_records`` and paused partitions
    and, like a broker's long poll, waits up to ``timeout_s`` when it has nothing.
    """

    def __init__(
        self,
        records: dict[TP, list[FakeRecord]],
        topics: Iterable[str] = (),
    ) -> None:
        self._cond = threading.Condition()
        self.topics = set(topics) | {tp[0] for tp in records}
        self.records = {tp: list(recs) for tp, recs in records.items()}
        self.positions: dict[TP, int] = dict.fromkeys(records, 0)
        self.assigned: list[TP] = []
        self.paused: set[TP] = set()
        self.pause_calls: list[list[TP]] = []
        self.resume_calls: list[list[TP]] = []
        self.commits: list[dict[TP, int]] = []
        self.async_commits: list[dict[TP, int]] = []
        self.seeks: list[tuple[TP, int]] = []
        # Set to make every commit fail (as after a rebalance: CommitFailedError).
        self.commit_error: Exception | None = None
        self.polls = 0
        # With stale_highwater, highwater() only knows what refresh_end_offsets() asked
        # the "broker", as for a paused partition that is not fetched.
        self.stale_highwater = False
        self.end_offsets: dict[TP, int] = {}
        self.end_offset_refreshes = 0
        self.max_records_seen: list[int] = []
        self.closed = False
        self.subscribed: str | None = None
        self._on_assigned: Callable[[list[TP]], None] | None = None
        self._on_revoked: Callable[[list[TP]], None] | None = None
        self._to_assign: list[TP] = sorted(records)
        self._to_revoke: list[TP] = []

    # --- test controls ---

    def revoke_on_next_poll(self, tps: list[TP], *, reassign: bool = False) -> None:
        """Revoke partitions in the next poll; with ``reassign`` give them back in it,
        keeping their fetch position, as kafka-python does within one rebalance."""
        with self._cond:
            self._to_revoke.extend(tps)
            if reassign:
                self._to_assign.extend(tps)
            self._cond.notify_all()

    def append(self, tp: TP, records: list[FakeRecord]) -> None:
        """More records arrive on a partition."""
        with self._cond:
            self.records[tp].extend(records)
            self._cond.notify_all()

    def wait_for_polls(self, count: int, timeout: float = WAIT_S) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.polls >= count, timeout):
                msg = f"expected {count} polls within {timeout}s, got {self.polls}"
                raise AssertionError(msg)

    def last_commit(self) -> dict[TP, int]:
        with self._cond:
            return dict(self.commits[-1]) if self.commits else {}

    # --- GroupConsumer methods ---

    def existing_topics(self) -> set[str]:
        return set(self.topics)

    def subscribe(
        self,
        topic: str,
        on_assigned: Callable[[list[TP]], None],
        on_revoked: Callable[[list[TP]], None],
    ) -> None:
        self.subscribed = topic
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    def poll(self, timeout_s: float, max_records: int) -> dict[TP, RecordColumns]:
        assert max_records >= 1
        with self._cond:
            self.polls += 1
            self.max_records_seen.append(max_records)
            self._cond.notify_all()
            revoke, self._to_revoke = self._to_revoke, []
            assign, self._to_assign = self._to_assign, []
        if revoke:
            assert self._on_revoked is not None
            self._on_revoked(revoke)
            with self._cond:
                self.assigned = [tp for tp in self.assigned if tp not in revoke]
        if assign:
            with self._cond:
                self.assigned = sorted(set(self.assigned) | set(assign))
            assert self._on_assigned is not None
            self._on_assigned(assign)
        with self._cond:
            polled = self._take(max_records)
            if not polled and timeout_s > 0:
                self._cond.wait(timeout_s)
                polled = self._take(max_records)
            return {tp: RecordColumns.of(records) for tp, records in polled.items()}

    def _take(self, max_records: int) -> dict[TP, list[FakeRecord]]:
        polled: dict[TP, list[FakeRecord]] = {}
        budget = max_records
        for tp in self.assigned:
            if budget == 0:
                break
            if tp in self.paused:
                continue
            start = self.positions[tp]
            chunk = self.records[tp][start : start + budget]
            if chunk:
                polled[tp] = chunk
                self.positions[tp] = start + len(chunk)
                budget -= len(chunk)
        return polled

    def seek(self, tp: TP, offset: int) -> None:
        with self._cond:
            assert tp in self.assigned, f"seek on unassigned {tp}"
            self.seeks.append((tp, offset))
            self.positions[tp] = offset

    def pause(self, tps: list[TP]) -> None:
        with self._cond:
            self.pause_calls.append(list(tps))
            self.paused |= set(tps)

    def resume(self, tps: list[TP]) -> None:
        with self._cond:
            self.resume_calls.append(list(tps))
            self.paused -= set(tps)
            self._cond.notify_all()

    def highwater(self, tp: TP) -> int | None:
        if self.stale_highwater:
            return self.end_offsets.get(tp)
        recs = self.records.get(tp)
        return recs[-1].offset + 1 if recs else None

    def refresh_end_offsets(self, tps: list[TP], timeout_s: float) -> None:
        assert timeout_s > 0
        with self._cond:
            self.end_offset_refreshes += 1
            for tp in tps:
                recs = self.records.get(tp)
                if recs:
                    self.end_offsets[tp] = recs[-1].offset + 1

    def commit(self, offsets: dict[TP, int]) -> None:
        with self._cond:
            if self.commit_error is not None:
                raise self.commit_error
            self.commits.append(dict(offsets))

    def commit_async(
        self, offsets: dict[TP, int], on_done: Callable[[dict[TP, int], Exception | None], None]
    ) -> None:
        with self._cond:
            error = self.commit_error
            if error is None:
                self.async_commits.append(dict(offsets))
        on_done(offsets, error)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


# --- the producer side -------------------------------------------------------


class FakeFuture:
    """A send result with kafka-python's ``add_callback``/``add_errback``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Any], Any]] = []
        self._errbacks: list[Callable[[BaseException], Any]] = []
        self.done = False
        self.value: Any = None
        self.exception: BaseException | None = None

    def add_callback(self, fn: Callable[[Any], Any]) -> FakeFuture:
        with self._lock:
            if not self.done:
                self._callbacks.append(fn)
                return self
        if self.exception is None:
            fn(self.value)
        return self

    def add_errback(self, fn: Callable[[BaseException], Any]) -> FakeFuture:
        with self._lock:
            if not self.done:
                self._errbacks.append(fn)
                return self
        if self.exception is not None:
            fn(self.exception)
        return self

    def succeed(self, metadata: Any = "metadata") -> None:
        with self._lock:
            assert not self.done, "future resolved twice"
            self.done, self.value = True, metadata
            callbacks = self._callbacks
        for fn in callbacks:
            fn(metadata)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            assert not self.done, "future resolved twice"
            self.done, self.exception = True, exc
            errbacks = self._errbacks
        for fn in errbacks:
            fn(exc)


@dataclass
class Sent:
    """One record given to ``FakeProducer.send``."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    future: FakeFuture = field(default_factory=FakeFuture)

    @property
    def header_map(self) -> dict[str, bytes]:
        return dict(self.headers or [])


class FakeProducer:
    """Stand-in for ``streamer.clients.base.ProducerClient``.

    With ``auto_ack`` every send is acknowledged at once; otherwise the test
    resolves ``sent[i].future`` itself. ``fail_when(sent) -> exception`` makes
    chosen deliveries fail; ``raise_on_send`` makes the n-th send (0-based) raise;
    ``refuse_when(sent)`` makes ``send`` refuse chosen records at once, as a
    client's own size check does (a record-level failure).
    """

    def __init__(
        self,
        *,
        auto_ack: bool = True,
        fail_when: Callable[[Sent], BaseException | None] | None = None,
        raise_on_send: int | None = None,
        refuse_when: Callable[[Sent], bool] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.refuse_when = refuse_when
        self.refused: list[Sent] = []
        self.auto_ack = auto_ack
        self.fail_when = fail_when
        self.raise_on_send = raise_on_send
        self.sent: list[Sent] = []
        self.flushes: list[float] = []
        self.closed = False

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> FakeFuture:
        record = Sent(topic, value, key, headers)
        with self._lock:
            if self.raise_on_send is not None and len(self.sent) == self.raise_on_send:
                msg = "fake producer: send exploded"
                raise RuntimeError(msg)
            if self.refuse_when is not None and self.refuse_when(record):
                self.refused.append(record)
                msg = f"fake producer: refused a record of {len(value)} bytes"
                raise RecordRejectedError(msg)
            self.sent.append(record)
        if self.auto_ack:
            error = self.fail_when(record) if self.fail_when is not None else None
            if error is None:
                record.future.succeed()
            else:
                record.future.fail(error)
        return record.future

    def records(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)

    def flush(self, timeout_s: float) -> bool:
        with self._lock:
            self.flushes.append(timeout_s)
        return True

    def close(self) -> None:
        with self._lock:
            self.closed = True


class FakeKafka:
    """Factories for ``Pipeline(consumer_factory=..., producer_factory=...)``.

    The pipeline opens one consumer to probe the topics and one for the consumer actor.
    """

    def __init__(
        self,
        records: dict[TP, list[FakeRecord]],
        topics: Iterable[str],
        producer: FakeProducer | None = None,
        consumer_error: Exception | None = None,
    ) -> None:
        self._records = records
        self._topics = set(topics)
        self.consumers: list[FakeConsumer] = []
        self.producer = producer if producer is not None else FakeProducer()
        self.consumer_error = consumer_error
        self.producer_settings: list[KafkaSettings] = []

    def consumer_factory(self, settings: KafkaSettings, max_poll_records: int) -> FakeConsumer:
        if self.consumers and self.consumer_error is not None:
            raise self.consumer_error
        consumer = FakeConsumer(self._records, self._topics)
        self.consumers.append(consumer)
        return consumer

    def producer_factory(self, settings: KafkaSettings) -> FakeProducer:
        self.producer_settings.append(settings)
        return self.producer

    @property
    def consumer(self) -> FakeConsumer:
        """The consumer the consumer actor subscribed with."""
        subscribed = [c for c in self.consumers if c.subscribed is not None]
        assert len(subscribed) == 1, f"{len(subscribed)} consumers subscribed"
        return subscribed[0]

"""The interface every Kafka client backend implements; no client library is imported here.

A backend is three callables: a consumer factory, a producer factory and
``ensure_topics``. The actors only see :class:`ConsumerClient` and
:class:`ProducerClient`, so a backend can be swapped by a setting
(``kafka.client``) without touching them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamer.core.output import OutputGroup
from streamer.core.records import TP, RecordColumns
from streamer.errors import BrokerError
from streamer.settings import KafkaSettings

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class SendFailure:
    """One record of a batch that the client or the broker did not accept.

    ``index`` counts the records of the whole batch, group after group, in send
    order. ``record_level`` is True when the refusal is about this record alone
    (too large, an invalid timestamp or record, a key the client cannot take),
    as told by the client's error code: sending it again cannot help, but the
    rest of the pipeline is fine. Otherwise the failure is the connection's or
    the broker's (timeouts, a fenced producer, authorization), and a fresh
    client may succeed.
    """

    index: int
    error: str
    record_level: bool


# Called once per batch, when every record is acknowledged or failed for good:
# with no failures, every record of the batch was acknowledged.
DoneCallback = Callable[[Sequence[SendFailure]], None]


class RecordRejectedError(Exception):
    """Raised by a client (the file sink, a test fake) that refuses one record alone."""


class DeliveryFuture(Protocol):
    """What a send returns: callbacks run on the client's I/O thread."""

    def add_callback(self, fn: Callable[..., Any]) -> Any: ...  # noqa: D102
    def add_errback(self, fn: Callable[..., Any]) -> Any: ...  # noqa: D102


class ConsumerClient(Protocol):
    """A group member with manual commits; rebalance callbacks run inside :meth:`poll`."""

    def existing_topics(self) -> set[str]:
        """Topic names the broker knows (does not create any)."""
        ...

    def subscribe(
        self,
        topic: str | Sequence[str],
        on_assigned: Callable[[list[TP]], None],
        on_revoked: Callable[[list[TP]], None],
    ) -> None:
        """Join the group on one topic, or several (the input and the labels, co-partitioned).

        Partitions are assigned by the range assignor, so that partition p of
        every topic goes to the same member.
        """
        ...

    def poll(self, timeout_s: float, max_records: int) -> dict[TP, RecordColumns]:
        """Fetch records, grouped by partition in offset order (no empty entries)."""
        ...

    def pause(self, tps: list[TP]) -> None:
        """Stop returning records of these partitions; the membership stays."""
        ...

    def resume(self, tps: list[TP]) -> None:
        """Return records of these partitions again."""
        ...

    def seek(self, tp: TP, offset: int) -> None:
        """Fetch this assigned partition from ``offset`` next."""
        ...

    def highwater(self, tp: TP) -> int | None:
        """The partition's end offset as of the last fetch (or refresh), or None before one."""
        ...

    def refresh_end_offsets(self, tps: list[TP], timeout_s: float) -> None:
        """Ask the broker for these partitions' end offsets now (blocks up to ``timeout_s``).

        A paused partition is not fetched, so its :meth:`highwater` would stay
        where the last fetch left it; the consumer calls this while paused.
        """
        ...

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously."""
        ...

    def commit_async(
        self, offsets: dict[TP, int], on_done: Callable[[dict[TP, int], Exception | None], None]
    ) -> None:
        """Commit without blocking; ``on_done`` reports the result."""
        ...

    def close(self) -> None:
        """Leave the group and close connections (never commits on its own)."""
        ...


class ProducerClient(Protocol):
    """Sends records with acks=all and idempotence."""

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers | None = None
    ) -> DeliveryFuture:
        """Queue one record; the future resolves when the broker acknowledges it."""
        ...

    def flush(self, timeout_s: float) -> bool:
        """Block until every queued record is acknowledged or failed (at most ``timeout_s``).

        False when some were neither at the timeout.
        """
        ...

    def close(self) -> None:
        """Flush and close, bounded in time."""
        ...


class GroupReader(Protocol):
    """A topic read for a group without joining it (``replay-dlq``): partitions by hand.

    It starts at the group's committed offsets and commits synchronously, so an
    interrupted run resumes where it stopped. Each poll returns the records of
    a partition with their headers.
    """

    partitions: list[TP]
    """The topic's partitions (none when it does not exist), all assigned."""

    def end_offsets(self, timeout_s: float) -> dict[TP, int]:
        """The end of each partition now, as a fetch reports it; within ``timeout_s``.

        A partition whose end did not arrive in time is left out.
        """
        ...

    def start_at_committed(self, timeout_s: float) -> dict[TP, int]:
        """Fetch from the group's committed offsets (the beginning when none), and return them."""
        ...

    def poll(self, timeout_s: float) -> dict[TP, tuple[RecordColumns, list[Headers]]]:
        """Fetch records: per partition, in offset order, with their headers."""
        ...

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously for the group."""
        ...

    def close(self) -> None:
        """Close connections (never commits on its own)."""
        ...


class ChangelogReader(Protocol):
    """Reads a state store's compacted changelog topic: no group, partitions assigned by hand.

    It commits nothing and joins no group, so any number of readers (one per
    restore) can read the same topic.
    """

    def high_watermark(self, partition: int, timeout_s: float) -> int:
        """The partition's end offset as a fetch response reports it (0 when empty).

        Not a ListOffsets request: on Tansu it answers the last batch's base
        offset + 1. Raises BrokerError when no fetch answered within ``timeout_s``.
        """
        ...

    def read(
        self, partition: int, start: int, end: int
    ) -> Iterator[list[tuple[int, bytes, bytes | None]]]:
        """Chunks of (offset, key, value) in offset order: every offset in [start, end) that exists.

        A compacted topic has gaps, so the read stops when the position reaches
        ``end``, not when ``end - start`` records came. ``value`` is None for a
        tombstone. Raises BrokerError when nothing arrives for a while.
        """
        ...

    def close(self) -> None:
        """Close connections (there is nothing to commit)."""
        ...


def error_text(exc: BaseException) -> str:
    """An exception as one line for a log or a header: its type and message."""
    return f"{type(exc).__name__}: {exc}"


class BatchDelivery:
    """Counts the outcomes of one batch's records and calls ``done(failures)`` once.

    It starts one above the number of sends, and :meth:`arm` takes that one
    away after the last send, so it cannot fire before every send was
    registered, nor never fire when nothing was sent. Callbacks may run on any
    thread.
    """

    __slots__ = ("_done", "_failures", "_lock", "_pending")

    def __init__(self, sends: int, done: DoneCallback) -> None:
        self._pending = sends + 1
        self._failures: list[SendFailure] = []
        self._lock = threading.Lock()
        self._done = done

    def arm(self) -> None:
        """Call once after the last send."""
        self._settle()

    def ok(self, _metadata: object = None) -> None:
        """A record was acknowledged."""
        self._settle()

    def failed(self, index: int, exc: BaseException, *, record_level: bool | None = None) -> None:
        """Record ``index`` failed for good (after the client's own retries)."""
        if record_level is None:
            record_level = isinstance(exc, RecordRejectedError)
        with self._lock:
            self._failures.append(SendFailure(index, error_text(exc), record_level))
        self._settle()

    def _settle(self) -> None:
        with self._lock:
            self._pending -= 1
            finished = self._pending == 0
        if finished:
            self._done(sorted(self._failures, key=lambda f: f.index))


def send_batch(client: ProducerClient, groups: Sequence[OutputGroup], done: DoneCallback) -> None:
    """Send every record of ``groups``, in order, and call ``done(failures)`` once all settled.

    A backend with its own ``send_batch`` does it with less work per record;
    any other client (a test fake, the file sink) is driven one ``send`` at a
    time. There, a :class:`RecordRejectedError`, raised by ``send`` or given to
    the errback, is a record-level failure; any other exception from ``send``
    propagates (the producer actor dies and is restarted).
    """
    native = getattr(client, "send_batch", None)
    if native is not None:
        native(groups, done)
        return
    delivery = BatchDelivery(sum(len(g) for g in groups), done)
    index = 0
    for group in groups:
        headers = group.headers
        for row, value in enumerate(group.values):
            try:
                future = client.send(
                    group.topic, value, group.keys[row], None if headers is None else headers[row]
                )
            except RecordRejectedError as exc:
                delivery.failed(index, exc, record_level=True)
            else:
                future.add_callback(delivery.ok)
                future.add_errback(functools.partial(delivery.failed, index))
            index += 1
    delivery.arm()


ConsumerFactory = Callable[[KafkaSettings, int], ConsumerClient]


class ConsumerConstructor(Protocol):
    """A backend's ``GroupConsumer``: a :data:`ConsumerFactory` that also takes a fetch size."""

    def __call__(
        self, settings: KafkaSettings, max_poll_records: int, fetch_max_bytes: int | None = None
    ) -> ConsumerClient:
        """Open a consumer whose fetches return at most ``fetch_max_bytes`` (None: the client's)."""
        ...


ProducerFactory = Callable[[KafkaSettings], ProducerClient]
EnsureTopics = Callable[..., None]
# (settings naming the group, topic) -> its reader
GroupReaderFactory = Callable[[KafkaSettings, str], GroupReader]
# (settings, changelog topic) -> its reader
ChangelogReaderFactory = Callable[[KafkaSettings, str], ChangelogReader]
# (settings, changelog topic, input topic, setting=the key that names it): create it
# compacted, or refuse it (ConfigError naming the setting)
EnsureChangelog = Callable[..., None]
# settings -> every topic's partition count
PartitionCounts = Callable[[KafkaSettings], dict[str, int]]


@dataclass(frozen=True)
class Backend:
    """One client library (or the file backend) behind the pipeline's interface."""

    name: str
    consumer: ConsumerConstructor
    producer: ProducerFactory
    ensure_topics: EnsureTopics
    group_reader: GroupReaderFactory | None = None
    """None: the backend has no groups (the file backend)."""
    changelog_reader: ChangelogReaderFactory | None = None
    """None: the backend keeps no changelog (the file backend)."""
    ensure_changelog: EnsureChangelog | None = None
    """None: the backend keeps no changelog (the file backend)."""
    partition_counts: PartitionCounts | None = None
    """None: the backend has no topics to describe (the file backend)."""


def latest_end(fetched: int | None, refreshed: int | None) -> int | None:
    """The newer of a partition's end offset from the last fetch and from the last refresh."""
    known = [offset for offset in (fetched, refreshed) if offset is not None]
    return max(known) if known else None


def broker_error(action: str, settings: KafkaSettings, exc: BaseException) -> BrokerError:
    """A one-line BrokerError; never includes the client config (it holds the SASL password)."""
    msg = (
        f"cannot {action} at kafka.bootstrap_servers={settings.bootstrap_servers}: "
        f"{type(exc).__name__}: {exc}; check that the broker is up and reachable"
    )
    return BrokerError(msg)

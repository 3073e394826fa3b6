"""ProducerActor: write predictions and dead letters in input order; ack delivered batches."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.client import Producer
from streamer.core.output import dead_letter_headers, encode_predictions, iso_now
from streamer.core.reorder import Reorderer
from streamer.core.supervision import DeadLetterBreaker
from streamer.errors import DeadLetterRatioError, DeliveryError
from streamer.messages import BatchAcked, BatchDelivered, Flush, GetStatus, Rejection, ScoredBatch
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)


class _Delivery:
    """Counts the broker acknowledgements of one batch; callbacks run on the client's I/O thread.

    It starts one above the number of sends, and :meth:`arm` takes that one away
    after the last send, so it cannot fire before every send was registered (nor
    never fire when nothing was sent).
    """

    __slots__ = ("_done", "_error", "_lock", "_pending")

    def __init__(self, sends: int, done: Callable[[str | None], None]) -> None:
        self._pending = sends + 1
        self._error: str | None = None
        self._lock = threading.Lock()
        self._done = done

    def arm(self) -> None:
        """Call once after the last send."""
        self._settle()

    def ok(self, _metadata: object) -> None:
        """A record was acknowledged."""
        self._settle()

    def failed(self, exc: BaseException) -> None:
        """A record failed for good (after the client's own retries)."""
        with self._lock:
            if self._error is None:
                self._error = f"{type(exc).__name__}: {exc}"
        self._settle()

    def _settle(self) -> None:
        with self._lock:
            self._pending -= 1
            finished = self._pending == 0
        if finished:
            self._done(self._error)


@dataclass(frozen=True, slots=True)
class _DeliveryFailed:
    error: str


class ProducerActor(PipelineActor):
    """Produces one output record per input record, in per-partition input order.

    Model actors work in parallel, so batches can arrive out of order; a
    :class:`Reorderer` holds early batches until their predecessors arrive.
    Rows rejected upstream go to the dead-letter topic with the reason in headers.
    When the broker has acknowledged every record of a batch, the consumer gets
    a :class:`BatchAcked`; only then may it commit past the batch.
    """

    kind = "producer"

    def __init__(
        self,
        settings: KafkaSettings,
        consumer: pykka.ActorRef,
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
        client_factory: Callable[[KafkaSettings], Producer] = Producer,
        breaker: DeadLetterBreaker | None = None,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._breaker = breaker
        self._epoch = 0
        self._settings = settings
        self._consumer = consumer
        self._client_factory = client_factory
        self._client: Producer | None = None
        self._reorderer: Reorderer[ScoredBatch] = Reorderer()
        self._output_topic = settings.output_topic
        self._dead_letter_topic = settings.dead_letter_topic_name
        self._batches_produced = 0

    def open(self) -> None:
        """Open the Kafka producer on the actor's own thread."""
        self._client = self._client_factory(self._settings)

    def release(self) -> None:
        """Flush what was sent and close the client."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def receive(self, message: object) -> object:
        """Handle ScoredBatch, Flush and GetStatus."""
        match message:
            case ScoredBatch(source=source) as batch:
                if source.epoch < self._epoch:
                    return None  # sent again by a rewind; that copy is on its way
                if source.epoch > self._epoch:
                    # A rewind restarted the sequence of every partition.
                    self._epoch = source.epoch
                    self._reorderer = Reorderer()
                for ready in self._reorderer.push(
                    (source.topic, source.partition), source.seq, batch
                ):
                    self._produce(ready)
            case _DeliveryFailed(error=error):
                # Dying closes this client; the supervisor starts a fresh producer
                # (a fenced or unknown producer id needs a new one) and rewinds.
                raise DeliveryError(error)
            case Flush(timeout_s=timeout_s):
                assert self._client is not None
                self._client.flush(timeout_s)
            case GetStatus():
                return {
                    "waiting_for_order": self._reorderer.waiting,
                    "batches_produced": self._batches_produced,
                }
        return None

    def _produce(self, batch: ScoredBatch) -> None:
        client = self._client
        assert client is not None
        source = batch.source
        if self._breaker is not None and self._breaker.record(len(source), len(batch.rejections)):
            msg = (
                f"dead letters are {self._breaker.ratio:.0%} of the last {self._breaker.records} "
                f"records, above supervision.dead_letter_max_ratio={self._breaker.max_ratio:g}; "
                f"stopping before {source.topic}/{source.partition}@{source.first_offset} "
                "so that a broken model or feature config does not dead-letter the whole topic"
            )
            raise DeadLetterRatioError(msg)
        started = time.perf_counter()
        scored_at = iso_now()
        n = len(source)
        model = {"name": batch.model_name, "version": batch.model_version}
        encoded = encode_predictions(
            topic=source.topic,
            partition=source.partition,
            offsets=source.offsets,
            keys=source.keys,
            rows=batch.valid_rows,
            predictions=batch.predictions,
            output_names=batch.output_names,
            model=model,
            scored_at=scored_at,
        )
        # Walk the batch in input order so that outputs and dead letters keep it.
        outputs: list[bytes | Rejection | None] = [None] * n
        for row, value in zip(batch.valid_rows.tolist(), encoded, strict=True):
            outputs[row] = value
        for rejection in batch.rejections:
            outputs[rejection.index] = rejection
        reasons = Counter(r.reason for r in batch.rejections)
        produced = len(encoded)
        first_timestamp_ms = source.timestamps_ms[0] if source.timestamps_ms else 0

        def done(error: str | None) -> None:
            acked_at = time.time()
            if error is not None:
                detail = (
                    f"delivery failed for batch {source.batch_id} of {source.topic}/"
                    f"{source.partition} (offsets {source.first_offset}..{source.last_offset}): "
                    f"{error}"
                )
                with contextlib.suppress(pykka.ActorDeadError):
                    self.actor_ref.tell(_DeliveryFailed(detail))
                return
            try:
                self._consumer.tell(
                    BatchAcked(source.batch_id, source.topic, source.partition, None, source.epoch)
                )
            except pykka.ActorDeadError:
                return
            self._emit(
                BatchDelivered(
                    produced=produced,
                    dead_letters=dict(reasons),
                    dropped=len(batch.dropped_rows),
                    size=n,
                    batch_seconds=time.monotonic() - source.dispatched_at,
                    preprocess_seconds=batch.preprocess_seconds,
                    model_seconds=batch.model_seconds,
                    produce_seconds=produce_seconds[0],
                    end_to_end_seconds=[max(0.0, acked_at - first_timestamp_ms / 1000)]
                    if first_timestamp_ms > 0
                    else [],
                )
            )

        produce_seconds = [0.0]
        sends = produced + len(batch.rejections)
        delivery = _Delivery(sends, done)
        send = client.send
        keys = source.keys
        for index, item in enumerate(outputs):
            if item is None:
                continue  # dropped by the 'drop' policy, counted in the metrics
            if isinstance(item, bytes):
                future = send(self._output_topic, item, keys[index])
            else:
                headers = dead_letter_headers(
                    reason=item.reason,
                    detail=item.detail,
                    stage=item.stage,
                    topic=source.topic,
                    partition=source.partition,
                    offset=source.offsets[index],
                    model_version=batch.model_version,
                    failed_at=scored_at,
                )
                future = send(
                    self._dead_letter_topic, source.values[index] or b"", keys[index], headers
                )
            future.add_callback(delivery.ok)
            future.add_errback(delivery.failed)
        produce_seconds[0] = time.perf_counter() - started
        self._batches_produced += 1
        delivery.arm()

"""ProducerActor: write predictions and dead letters in input order; ack delivered batches."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.client import OutputGroup, Producer, send_batch
from streamer.core.output import dead_letter_headers, encode_predictions, iso_now
from streamer.core.reorder import Reorderer
from streamer.core.supervision import DeadLetterBreaker
from streamer.errors import DeadLetterRatioError, DeliveryError
from streamer.messages import BatchAcked, BatchDelivered, Flush, GetStatus, Rejection, ScoredBatch
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)


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
        groups = self._groups(batch, encoded, scored_at)
        reasons = Counter(r.reason for r in batch.rejections)
        produced = len(encoded)

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
                    timestamps_ms=source.timestamps_ms,
                    acked_at=acked_at,
                )
            )

        produce_seconds = [0.0]
        # One call per batch: the backend counts the acknowledgements with less
        # work per record than a future and two callbacks each (README "Performance").
        send_batch(client, groups, done)
        produce_seconds[0] = time.perf_counter() - started
        self._batches_produced += 1

    def _groups(
        self, batch: ScoredBatch, encoded: list[bytes], scored_at: str
    ) -> list[OutputGroup]:
        """The batch's outputs and dead letters as runs of one topic each, in input order."""
        source = batch.source
        keys = source.keys
        valid = batch.valid_rows.tolist()
        if not batch.rejections:
            out_keys = keys if len(valid) == len(keys) else [keys[row] for row in valid]
            return [OutputGroup(self._output_topic, encoded, out_keys)]
        items: list[tuple[int, bytes | Rejection]] = sorted(
            [*zip(valid, encoded, strict=True), *((r.index, r) for r in batch.rejections)],
            key=lambda item: item[0],
        )
        groups: list[OutputGroup] = []
        for is_output, run in itertools.groupby(items, key=lambda item: isinstance(item[1], bytes)):
            rows = list(run)
            if is_output:
                values = [cast(bytes, item) for _, item in rows]
                groups.append(
                    OutputGroup(self._output_topic, values, [keys[row] for row, _ in rows])
                )
                continue
            headers = [
                dead_letter_headers(
                    reason=r.reason,
                    detail=r.detail,
                    stage=r.stage,
                    topic=source.topic,
                    partition=source.partition,
                    offset=source.offsets[row],
                    model_version=batch.model_version,
                    failed_at=scored_at,
                )
                for row, r in cast(list[tuple[int, Rejection]], rows)
            ]
            groups.append(
                OutputGroup(
                    self._dead_letter_topic,
                    [source.values[row] or b"" for row, _ in rows],
                    [keys[row] for row, _ in rows],
                    headers,
                )
            )
        return groups

"""ProducerActor: write predictions and dead letters in input order; ack delivered batches."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.client import OutputGroup, Producer, send_batch
from streamer.clients.base import SendFailure
from streamer.core.answers import Answer, Form, SourceContext, Tally, dead_letter, next_answer
from streamer.core.output import encode_predictions, iso_now
from streamer.core.reorder import Reorderer
from streamer.core.supervision import DeadLetterBreaker
from streamer.errors import DeadLetterRatioError, DeliveryError, UnanswerableRecordError
from streamer.messages import (
    BatchAcked,
    BatchDelivered,
    BatchPartlyDelivered,
    Flush,
    GetStatus,
    ProducerStatus,
    ScoredBatch,
)
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _DeliveryFailed:
    error: str


@dataclass(frozen=True, slots=True)
class _Round:
    """One ``send_batch`` of a batch: its first answers, or those that replace refused ones.

    ``rows[i]`` is the input row that send ``i`` answers. ``answers`` is None
    for a first round without dead letters (every send is a prediction), so
    that the common case builds no object per record.
    """

    groups: list[OutputGroup]
    rows: list[int]
    answers: list[Answer] | None


@dataclass(slots=True)
class _InFlight:
    """A batch whose answers are on their way: touched by one thread at a time."""

    batch: ScoredBatch
    context: SourceContext
    tally: Tally
    produce_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Refused:
    """Some answers of a round were refused for their own content: send the next ones."""

    flight: _InFlight
    round: _Round
    failures: Sequence[SendFailure]


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
        on_unanswerable: str = "stop",
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
        self._on_unanswerable = on_unanswerable
        self._unanswerable = 0

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
            case _Refused(flight=flight, round=refused_round, failures=failures):
                self._answer_refused(flight, refused_round, failures)
            case _DeliveryFailed(error=error):
                # Dying closes this client; the supervisor starts a fresh producer
                # (a fenced or unknown producer id needs a new one) and rewinds.
                raise DeliveryError(error)
            case Flush(timeout_s=timeout_s):
                assert self._client is not None
                self._client.flush(timeout_s)
            case GetStatus():
                return ProducerStatus(
                    self._reorderer.waiting, self._batches_produced, self._unanswerable
                )
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
        context = SourceContext(
            topic=source.topic,
            partition=source.partition,
            offsets=source.offsets,
            keys=source.keys,
            values=source.values,
            model_version=batch.model_version,
            failed_at=scored_at,
            dead_letter_topic=self._dead_letter_topic,
            max_bytes=self._settings.max_request_bytes,
            prefix_bytes=self._settings.dead_letter_prefix_bytes,
        )
        first = self._first_round(batch, context, encoded)
        tally = Tally(
            produced=len(encoded),
            dead_letters=Counter(r.reason for r in batch.rejections),
            truncated=sum(a.truncated for a in first.answers or ()),
        )
        flight = _InFlight(batch, context, tally)
        self._send(flight, first)
        flight.produce_seconds = time.perf_counter() - started
        self._batches_produced += 1

    def _send(self, flight: _InFlight, sent: _Round) -> None:
        """Hand a round to the client; its ``done`` runs on a client thread, so it only tells."""
        assert self._client is not None

        def done(failures: Sequence[SendFailure]) -> None:
            if not failures:
                self._acknowledge(flight)
            elif all(f.record_level and f.index >= 0 for f in failures):
                with contextlib.suppress(pykka.ActorDeadError):
                    self.actor_ref.tell(_Refused(flight, sent, failures))
            else:
                self._failed(flight, sent, failures)

        # One call per batch: the backend counts the acknowledgements with less
        # work per record than a future and two callbacks each (README "Performance").
        send_batch(self._client, sent.groups, done)

    def _acknowledge(self, flight: _InFlight) -> None:
        source, batch, tally = flight.batch.source, flight.batch, flight.tally
        acked_at = time.time()
        try:
            self._consumer.tell(
                BatchAcked(source.batch_id, source.topic, source.partition, None, source.epoch)
            )
        except pykka.ActorDeadError:
            return
        self._emit(
            BatchDelivered(
                produced=tally.produced,
                dead_letters={reason: n for reason, n in tally.dead_letters.items() if n},
                dropped=len(batch.dropped_rows),
                size=len(source),
                batch_seconds=time.monotonic() - source.dispatched_at,
                preprocess_seconds=batch.preprocess_seconds,
                model_seconds=batch.model_seconds,
                produce_seconds=flight.produce_seconds,
                timestamps_ms=source.timestamps_ms,
                acked_at=acked_at,
                truncated=tally.truncated,
                unanswerable=len(tally.unanswerable),
            )
        )

    def _failed(self, flight: _InFlight, sent: _Round, failures: Sequence[SendFailure]) -> None:
        """A connection-level failure: tell what was answered, then die for a fresh client."""
        source = flight.batch.source
        known = [f.index for f in failures if f.index >= 0]
        first_row = min(sent.rows[i] for i in known) if len(known) == len(failures) else 0
        answered_below = source.offsets[first_row]
        with contextlib.suppress(pykka.ActorDeadError):
            if answered_below > source.first_offset:
                self._consumer.tell(
                    BatchPartlyDelivered(
                        source.batch_id, source.topic, source.partition, answered_below
                    )
                )
        first = failures[0]
        detail = (
            f"delivery failed for batch {source.batch_id} of {source.topic}/"
            f"{source.partition} (offsets {source.first_offset}..{source.last_offset}): "
            f"{first.error}"
        )
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_DeliveryFailed(detail))

    def _answer_refused(
        self, flight: _InFlight, refused_round: _Round, failures: Sequence[SendFailure]
    ) -> None:
        """Send the next answer of every refused record; an unanswerable one meets the policy."""
        context = flight.context
        following: list[Answer] = []
        for failure in failures:
            refused = self._answer_at(flight, refused_round, failure.index)
            answer = next_answer(context, refused, failure.error)
            flight.tally.replaced(refused, answer)
            if answer is not None:
                following.append(answer)
                continue
            self._unanswerable += 1
            offset = context.offsets[refused.row]
            where = f"{context.topic}/{context.partition}@{offset}"
            log.error(
                "record %s is unanswerable: its dead letter was refused even as headers only "
                "(%s); supervision.on_unanswerable=%s",
                where,
                failure.error,
                self._on_unanswerable,
                extra={"topic": context.topic, "partition": context.partition, "offset": offset},
            )
            if self._on_unanswerable == "stop":
                msg = (
                    f"record {where} is unanswerable: the dead-letter topic "
                    f"{context.dead_letter_topic!r} refused even its headers-only dead letter "
                    f"({failure.error}); nothing is committed from it on. Fix the dead-letter "
                    "topic (its existence, its ACLs, its max.message.bytes) and restart, or set "
                    "supervision.on_unanswerable = 'skip' to commit past such records"
                )
                raise UnanswerableRecordError(msg)
        if not following:
            self._acknowledge(flight)
            return
        groups = [
            OutputGroup(
                context.dead_letter_topic,
                [a.value for a in following],
                [a.key for a in following],
                [a.headers for a in following],
            )
        ]
        self._send(flight, _Round(groups, [a.row for a in following], following))

    def _answer_at(self, flight: _InFlight, sent: _Round, index: int) -> Answer:
        if sent.answers is not None:
            return sent.answers[index]
        source = flight.batch.source
        row = sent.rows[index]
        group = sent.groups[0]  # a first round without answers is one group of predictions
        key, value = source.keys[row], group.values[index]
        return Answer(row, Form.PREDICTION, group.topic, key, value, None)

    def _first_round(
        self, batch: ScoredBatch, context: SourceContext, encoded: list[bytes]
    ) -> _Round:
        """The batch's predictions and dead letters as runs of one topic each, in input order."""
        source = batch.source
        keys = source.keys
        valid = batch.valid_rows.tolist()
        if not batch.rejections:
            out_keys = keys if len(valid) == len(keys) else [keys[row] for row in valid]
            return _Round([OutputGroup(self._output_topic, encoded, out_keys)], valid, None)
        answers = [
            Answer(row, Form.PREDICTION, self._output_topic, keys[row], value, None)
            for row, value in zip(valid, encoded, strict=True)
        ]
        answers += [
            dead_letter(context, r.index, r.reason, r.detail, r.stage) for r in batch.rejections
        ]
        answers.sort(key=lambda answer: answer.row)
        groups: list[OutputGroup] = []
        for topic, run in itertools.groupby(answers, key=lambda answer: answer.topic):
            items = list(run)
            headers = None if topic == self._output_topic else [a.headers for a in items]
            groups.append(
                OutputGroup(topic, [a.value for a in items], [a.key for a in items], headers)
            )
        return _Round(groups, [a.row for a in answers], answers)

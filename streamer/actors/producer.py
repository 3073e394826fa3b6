"""ProducerActor: write predictions and dead letters in input order; ack delivered batches."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.actors.routing import Teller
from streamer.clients.base import ProducerClient, ProducerFactory, SendFailure, send_batch
from streamer.core.answers import Round, SourceContext, Tally, first_round, next_round
from streamer.core.headers import carried_headers
from streamer.core.labels.live import score_column
from streamer.core.output import (
    OutputGroup,
    encode_predictions,
    iso_now,
    state_features_json,
    with_state_features,
)
from streamer.core.reorder import Reorderer
from streamer.core.state.store import Change
from streamer.core.supervision import DeadLetterBreaker
from streamer.errors import DeadLetterRatioError, DeliveryError, UnanswerableRecordError
from streamer.messages import (
    BatchAcked,
    BatchDelivered,
    BatchPartlyDelivered,
    BatchProduced,
    BreakerTripped,
    ChallengerScored,
    Flush,
    GetStatus,
    LabelBatch,
    LabelsRevoked,
    LedgerHeld,
    PartitionsAssigned,
    PartitionsRevoked,
    ProducerStatus,
    ScoredBatch,
    SourceBatch,
    StateFlush,
    StateFlushed,
)
from streamer.settings import FormatSettings, KafkaSettings

if TYPE_CHECKING:
    from streamer.topology.labels import LedgerFlush, LedgerKeeper

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _DeliveryFailed:
    error: str


@dataclass(frozen=True, slots=True)
class _LedgerFlushed:
    """The broker acknowledged a flush of a prediction ledger (on a client thread)."""

    flush: LedgerFlush


@dataclass(slots=True)
class _InFlight:
    """A batch whose answers are on their way: touched by one thread at a time."""

    batch: ScoredBatch
    context: SourceContext
    tally: Tally
    produce_seconds: float = 0.0
    changelog_records: int = 0
    """The batch's state changelog records, sent after its answers in the first round."""


@dataclass(frozen=True, slots=True)
class _Refused:
    """Some answers of a round were refused for their own content: send the next ones."""

    flight: _InFlight
    round: Round
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
        consumer: Teller,
        client_factory: ProducerFactory,
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
        breaker: DeadLetterBreaker | None = None,
        on_unanswerable: str = "stop",
        formats: FormatSettings | None = None,
        changelog_topic: str = "",
        log_features: bool = False,
        ledger: LedgerKeeper | None = None,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._changelog_topic = changelog_topic
        # Delayed labels (docs/labels.md): each partition's prediction ledger, written as the
        # answers are sent and joined to the label batches the consumer sends here.
        self._ledger = ledger
        self._ledger_topic = "" if ledger is None else ledger.changelog_topic
        self._labels_topic = "" if ledger is None else ledger.labels_topic
        # Per revoked partition: batches dispatched before this moment send no changelog.
        self._revoked_before: dict[tuple[str, int], float] = {}
        # Per partition, the seq of the next StateFlush of the current epoch to send.
        self._flush_seq: dict[tuple[str, int], int] = {}
        self._log_features = log_features
        self._formats = formats or FormatSettings()
        self._encode: Callable[..., list[bytes]] = encode_predictions
        self._breaker = breaker
        self._epoch = 0
        self._settings = settings
        self._consumer = consumer
        self._client_factory = client_factory
        self._client: ProducerClient | None = None
        self._reorderer: Reorderer[ScoredBatch | LabelBatch] = Reorderer()
        self._output_topic = settings.output_topic
        self._dead_letter_topic = settings.dead_letter_topic_name
        self._batches_produced = 0
        self._on_unanswerable = on_unanswerable
        self._unanswerable = 0

    def open(self) -> None:
        """Open the Kafka producer on the actor's own thread."""
        self._client = self._client_factory(self._settings)
        if self._formats.output == "avro":
            from streamer.clients.registry import AvroOutputWriter  # noqa: PLC0415

            self._encode = AvroOutputWriter(self._formats, self._output_topic).encode

    def release(self) -> None:
        """Flush what was sent and close the client (and the ledger's stores)."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()
        if self._ledger is not None:
            self._ledger.close()

    def receive(self, message: object) -> object:
        """Handle ScoredBatch, LabelBatch, StateFlush, ChallengerScored, Flush and GetStatus."""
        match message:
            case ScoredBatch() | LabelBatch() as batch:
                self._arrived(batch)
            case StateFlush() as flush:
                self._flush(flush)
            case ChallengerScored() as scored:
                self._record_challenger(scored)
            case _LedgerFlushed(flush=flush):
                self._ledger_flushed(flush)
            case _Refused(flight=flight, round=refused_round, failures=failures):
                self._answer_refused(flight, refused_round, failures)
            case _DeliveryFailed(error=error):
                # Dying closes this client; the supervisor starts a fresh producer
                # (a fenced or unknown producer id needs a new one) and rewinds.
                raise DeliveryError(error)
            case PartitionsAssigned(tps=tps):
                self._prepare_ledgers(tps)
            case PartitionsRevoked() as revoked:
                self._revoke(revoked)
                return True
            case Flush(timeout_s=timeout_s):
                assert self._client is not None
                self._client.flush(timeout_s)
            case GetStatus():
                return ProducerStatus(
                    self._reorderer.waiting, self._batches_produced, self._unanswerable
                )
        return None

    def _arrived(self, batch: ScoredBatch | LabelBatch) -> None:
        """Produce the batch, and those it releases, in each partition's order."""
        source = batch.source
        if source.epoch < self._epoch:
            return  # sent again by a rewind; that copy is on its way
        if source.epoch > self._epoch:
            self._new_epoch(source.epoch)
        for ready in self._reorderer.push((source.topic, source.partition), source.seq, batch):
            if isinstance(ready, LabelBatch):
                self._join(ready)
            else:
                self._produce(ready)

    def _new_epoch(self, epoch: int) -> None:
        # A rewind restarted the sequence of every partition's batches and flushes.
        self._epoch = epoch
        self._reorderer = Reorderer()
        self._flush_seq = {}

    def _flush(self, flush: StateFlush) -> None:
        """Send a partition's gathered state changes to the changelog, in the order made.

        Dropped: a flush of an older epoch, or one whose predecessor in its epoch
        never came (it went to a producer that died): the rewind sends every
        unacknowledged flush again, in order, so none lands before an older one.
        """
        if flush.epoch < self._epoch:
            return
        if flush.epoch > self._epoch:
            self._new_epoch(flush.epoch)
        tp = (flush.topic, flush.partition)
        if flush.seq != self._flush_seq.get(tp, 0):
            return
        self._flush_seq[tp] = flush.seq + 1
        revoked_before = self._revoked_before.get(tp)
        if revoked_before is not None and flush.made_at < revoked_before:
            return  # the partition's state may be another member's now
        assert self._client is not None
        group = _changelog_group(self._changelog_topic, flush.changes, flush.partition)
        records = len(flush.changes)

        def done(failures: Sequence[SendFailure]) -> None:  # on a client thread: only tells
            if failures:
                detail = (
                    f"state changelog {self._changelog_topic!r} failed for {records} records of "
                    f"{flush.topic}/{flush.partition}: {failures[0].error}"
                )
                with contextlib.suppress(pykka.ActorDeadError):
                    self.actor_ref.tell(_DeliveryFailed(detail))
                return
            with contextlib.suppress(pykka.ActorDeadError):
                self._consumer.tell(StateFlushed(flush.topic, flush.partition, flush.flush_id))
            self._emit(_changelog_delivered(records))

        send_batch(self._client, [group], done)

    def _prepare_ledgers(self, tps: tuple[tuple[str, int], ...]) -> None:
        """Restore the prediction ledgers of assigned input partitions ahead of their batches."""
        if self._ledger is not None:
            self._ledger.prepare([p for t, p in tps if t == self._settings.input_topic])
            self._tell_resets()

    def _revoke(self, revoked: PartitionsRevoked) -> None:
        """Drop what the partitions' old batches would still send; wait for what was sent."""
        for tp in revoked.tps:
            self._revoked_before[tp] = revoked.before
        if self._ledger is not None:
            inputs = [p for t, p in revoked.tps if t == self._settings.input_topic]
            closed = self._ledger.revoke(inputs)
            if closed:
                self._emit(LabelsRevoked(tuple(closed)))
        if revoked.flush_s > 0 and self._client is not None:
            # The consumer hands the partitions over once this returns: none of their
            # changelog records may still be on its way then (messages.PartitionsRevoked).
            self._client.flush(revoked.flush_s)

    def _record_challenger(self, scored: ChallengerScored) -> None:
        """Record a challenger's scores (best effort: their changes go with the next flush)."""
        if self._ledger is not None and not self._abandoned(scored.source):
            self._ledger.record_challenger(
                scored.source,
                scored.rows,
                scored.scores,
                (scored.name, scored.version),
                scored.scored_at,
            )
            self._ledger_stepped(scored.source.partition)

    def _abandoned(self, source: SourceBatch) -> bool:
        """True for a batch dispatched before its partition was revoked (another member's now)."""
        revoked_before = self._revoked_before.get((self._settings.input_topic, source.partition))
        return revoked_before is not None and source.dispatched_at < revoked_before

    def _join(self, labels: LabelBatch) -> None:
        """Join a label batch in its partition's ledger; send its dead letters."""
        source = labels.source
        if self._ledger is None or self._abandoned(source):
            return  # revoked since: the next owner reads these labels again
        rejections = self._ledger.join(source)
        self._ledger_stepped(source.partition)
        empty = np.empty(0, dtype=np.int64)
        batch = ScoredBatch(source, empty, (), empty, rejections, (), "", "")
        self._produce(batch, label_batch=True)

    def _tell_resets(self) -> None:
        assert self._ledger is not None
        for reset in self._ledger.take_resets():
            self._emit(reset)

    def _record(self, batch: ScoredBatch, scored_at: str) -> None:
        """Record the champion's scores of a batch in its partition's ledger."""
        source = batch.source
        if self._ledger is None or self._abandoned(source):
            return
        scores = score_column(batch.predictions, batch.output_names, self._ledger.spec.score_field)
        # The columns as they are: the keeper records them without a Python object per record.
        rows = batch.valid_rows if scores is not None else np.empty(0, dtype=np.int64)
        values = scores if scores is not None else np.empty(0, dtype=np.float64)
        model = (batch.model_name, batch.model_version)
        self._ledger.record(source, rows, values, model, scored_at)
        self._ledger_stepped(source.partition)

    def _ledger_stepped(self, partition: int) -> None:
        """After a step of a partition's ledger: tell its bounds, then send a flush if due.

        The consumer gets the bounds before the batch's answers are sent, so before
        its BatchAcked: the commit never passes a prediction not in the changelog.
        """
        assert self._ledger is not None
        self._tell_resets()
        self._tell_bounds(self._ledger.moved(partition))
        for flush in self._ledger.flushes(partition):
            self._send_ledger_flush(flush)

    def _tell_bounds(self, moved: Sequence[LedgerHeld]) -> None:
        for held in moved:
            with contextlib.suppress(pykka.ActorDeadError):
                self._consumer.tell(held)

    def _send_ledger_flush(self, flush: LedgerFlush) -> None:
        """Send a ledger flush beside the batches; its acknowledgement moves the bounds."""
        assert self._client is not None
        group = _changelog_group(self._ledger_topic, flush.changes, flush.partition)

        def done(failures: Sequence[SendFailure]) -> None:  # on a client thread: only tells
            if failures:
                detail = (
                    f"ledger changelog {self._ledger_topic!r} failed for {len(flush.changes)} "
                    f"records of {self._settings.input_topic}/{flush.partition}: "
                    f"{failures[0].error}"
                )
                message: object = _DeliveryFailed(detail)
            else:
                message = _LedgerFlushed(flush)
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(message)

        send_batch(self._client, [group], done)

    def _ledger_flushed(self, flush: LedgerFlush) -> None:
        """A flush is in the changelog: the metrics get its news; the next flush goes."""
        assert self._ledger is not None
        if not self._ledger.flushed(flush.partition, flush.flush_id):
            return  # revoked since
        self._emit(flush.report)
        for following in self._ledger.flushes(flush.partition):
            self._send_ledger_flush(following)
        self._tell_bounds(self._ledger.moved(flush.partition))

    def _produce(self, batch: ScoredBatch, *, label_batch: bool = False) -> None:
        client = self._client
        assert client is not None
        source = batch.source
        # Malformed labels never trip the breaker.
        breaker = None if label_batch else self._breaker
        if breaker is not None and breaker.record(
            len(source), len(batch.rejections), ((r.reason, r.detail) for r in batch.rejections)
        ):
            cause = breaker.cause
            if cause is not None:
                self._emit(BreakerTripped(cause.reason, cause.feature.strip("'\"")))
            msg = (
                f"dead letters are {breaker.ratio:.0%} of the last {breaker.records} "
                f"records, above supervision.dead_letter_max_ratio={breaker.max_ratio:g}: "
                f"{cause}; stopping before {source.topic}/{source.partition}@{source.first_offset} "
                "so that a broken model or feature config does not dead-letter the whole topic"
            )
            raise DeadLetterRatioError(msg)
        started = time.perf_counter()
        scored_at = iso_now()
        model = {"name": batch.model_name, "version": batch.model_version}
        encoded = (
            []
            if label_batch
            else self._encode(
                topic=source.topic,
                partition=source.partition,
                offsets=source.offsets,
                keys=source.keys,
                rows=batch.valid_rows,
                predictions=batch.predictions,
                output_names=batch.output_names,
                model=model,
                scored_at=scored_at,
                reasons=batch.reasons,
            )
        )
        if not label_batch:
            self._record(batch, scored_at)
        served = source.state_values
        rows = served.rows() if self._log_features and served is not None else []
        log_features = bool(rows)
        if log_features:  # JSON outputs only (checked at start)
            encoded = with_state_features(
                encoded, batch.valid_rows.tolist(), source.state_names, rows
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
            carried=carried_headers(source.headers, self._settings.propagate_headers),
            state_features=state_features_json(source.state_names, rows) if log_features else None,
        )
        first = first_round(
            context, self._output_topic, batch.valid_rows.tolist(), encoded, batch.rejections
        )
        revoked_before = self._revoked_before.get((source.topic, source.partition))
        changelog = source.changelog
        if revoked_before is not None and source.dispatched_at < revoked_before:
            changelog = ()  # abandoned: the partition's state may be another member's now
        if changelog:
            # The batch's state changes go in the same delivery as its answers: the batch is
            # acknowledged (and may be committed) only once both are (docs/state.md).
            first.groups.append(
                _changelog_group(self._changelog_topic, changelog, source.partition)
            )
        tally = Tally(
            produced=len(encoded),
            dead_letters=Counter(r.reason for r in batch.rejections),
            truncated=sum(a.truncated for a in first.answers or ()),
        )
        flight = _InFlight(
            batch,
            context,
            tally,
            changelog_records=len(changelog),
        )
        self._send(flight, first)
        flight.produce_seconds = time.perf_counter() - started
        self._batches_produced += 1
        with contextlib.suppress(pykka.ActorDeadError):
            self._consumer.tell(BatchProduced(source.batch_id))

    def _send(self, flight: _InFlight, sent: Round) -> None:
        """Hand a round to the client; its ``done`` runs on a client thread, so it only tells."""
        assert self._client is not None
        answers = len(sent.rows)

        def done(failures: Sequence[SendFailure]) -> None:
            if not failures:
                self._acknowledge(flight)
            elif any(f.index >= answers for f in failures):
                # A state changelog record failed: whatever the cause, the batch is not
                # delivered (never a dead letter); the whole batch goes again.
                changelog = [f for f in failures if f.index >= answers]
                self._failed(flight, sent, changelog, changelog=True)
            elif all(f.record_level and f.index >= 0 for f in failures):
                with contextlib.suppress(pykka.ActorDeadError):
                    self.actor_ref.tell(_Refused(flight, sent, failures))
            else:
                self._failed(flight, sent, failures)

        # One call per batch: the backend counts the acknowledgements with less
        # work per record than a future and two callbacks each (docs/performance.md).
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
                # A label's timestamp is not a scored record's: no end-to-end latency.
                timestamps_ms=() if source.topic == self._labels_topic else source.timestamps_ms,
                acked_at=acked_at,
                truncated=tally.truncated,
                unanswerable=len(tally.unanswerable),
                changelog_records=flight.changelog_records,
                scored=source.topic != self._labels_topic,
            )
        )

    def _failed(
        self,
        flight: _InFlight,
        sent: Round,
        failures: Sequence[SendFailure],
        *,
        changelog: bool = False,
    ) -> None:
        """A connection-level failure: tell what was answered, then die for a fresh client."""
        source = flight.batch.source
        answered_below = (
            source.first_offset
            if changelog
            else source.offsets[sent.first_row([f.index for f in failures])]
        )
        with contextlib.suppress(pykka.ActorDeadError):
            if answered_below > source.first_offset:
                self._consumer.tell(
                    BatchPartlyDelivered(
                        source.batch_id, source.topic, source.partition, answered_below
                    )
                )
        first = failures[0]
        what = f"state changelog {self._changelog_topic!r}" if changelog else "delivery"
        detail = (
            f"{what} failed for batch {source.batch_id} of {source.topic}/"
            f"{source.partition} (offsets {source.first_offset}..{source.last_offset}): "
            f"{first.error}"
        )
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_DeliveryFailed(detail))

    def _answer_refused(
        self, flight: _InFlight, refused_round: Round, failures: Sequence[SendFailure]
    ) -> None:
        """Send the next answer of every refused record; an unanswerable one meets the policy."""
        context = flight.context
        refused = [(f.index, f.error) for f in failures]
        following, unanswerable = next_round(context, refused_round, refused, flight.tally)
        for answer, error in unanswerable:
            self._unanswerable += 1
            offset = context.offsets[answer.row]
            where = f"{context.topic}/{context.partition}@{offset}"
            log.error(
                "record %s is unanswerable: its dead letter was refused even as headers only "
                "(%s); supervision.on_unanswerable=%s",
                where,
                error,
                self._on_unanswerable,
                extra={"topic": context.topic, "partition": context.partition, "offset": offset},
            )
            if self._on_unanswerable == "stop":
                msg = (
                    f"record {where} is unanswerable: the dead-letter topic "
                    f"{context.dead_letter_topic!r} refused even its headers-only dead letter "
                    f"({error}); nothing is committed from it on. Fix the dead-letter "
                    "topic (its existence, its ACLs, its max.message.bytes) and restart, or set "
                    "supervision.on_unanswerable = 'skip' to commit past such records"
                )
                raise UnanswerableRecordError(msg)
        if following is None:
            self._acknowledge(flight)
        else:
            self._send(flight, following)


def _changelog_group(topic: str, changes: Sequence[Change], partition: int) -> OutputGroup:
    """A changelog's records (``(key, value)``, value None a tombstone) to the input's partition."""
    return OutputGroup(
        topic,
        [value for _key, value in changes],  # type: ignore[misc]
        [key for key, _value in changes],
        None,
        partition,
    )


def _changelog_delivered(records: int) -> BatchDelivered:
    """The metrics' news of a flush the broker acknowledged: changelog records, no batch."""
    return BatchDelivered(
        produced=0,
        dead_letters={},
        dropped=0,
        size=0,
        batch_seconds=0.0,
        preprocess_seconds=0.0,
        model_seconds=0.0,
        produce_seconds=0.0,
        changelog_records=records,
        scored=False,
    )

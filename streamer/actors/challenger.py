"""ChallengerActor: a shadow model that scores what the champion scored, off the data path.

Nothing the challenger does reaches the champion's path: it has its own
thread and its own producer client, its outputs are not acknowledged to the
consumer (so commits never wait for it), and an exception from its model is
counted and logged, never raised. The model actor sends it a batch only while
fewer than ``max_pending_batches`` wait for it (:class:`PendingSlots`), so a
slow challenger skips batches instead of holding memory or the champion.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pykka

from streamer.actors.base import PipelineActor
from streamer.actors.routing import Teller
from streamer.clients import ProducerClient, ProducerFactory
from streamer.clients.base import SendFailure, send_batch
from streamer.clients.registry import make_reader, registry_wait_logger
from streamer.core.labels.live import score_column
from streamer.core.models import Model, preparation_key
from streamer.core.monitoring.agreement import Agreement, PendingSlots
from streamer.core.output import OutputGroup, encode_predictions, iso_now
from streamer.core.preparation import Preparer
from streamer.core.scoring import score_output
from streamer.messages import ChallengeBatch, ChallengerScored, SourceBatch, SwapModel
from streamer.settings import BatchSettings, FormatSettings, KafkaSettings, PreprocessSettings

log = logging.getLogger(__name__)

LOG_EVERY_FAILURES = 100


@dataclass(frozen=True)
class LedgerLink:
    """Where a challenger's scores go for the prediction ledger (docs/labels.md), and as what."""

    producer: Teller
    name: str
    """The challenger's configured name (``[[challenger]] name``)."""
    score_field: str


class ChallengerActor(PipelineActor):
    """Scores :class:`ChallengeBatch` es with a challenger model and produces its outputs."""

    kind = "challenger"

    def __init__(
        self,
        model: Model,
        output_topic: str,
        slots: PendingSlots,
        agreement: Agreement,
        kafka: KafkaSettings,
        producer_factory: ProducerFactory,
        preprocess: PreprocessSettings,
        batch: BatchSettings,
        formats: FormatSettings | None = None,
        ledger: LedgerLink | None = None,
    ) -> None:
        super().__init__(None, None)
        self._ledger = ledger
        self._model = model
        self._spec_key = preparation_key(model.spec)
        self._output_topic = output_topic
        self._slots = slots
        self._agreement = agreement
        self._formats = formats or FormatSettings()
        self._preparer = Preparer(preprocess, batch.max_record_bytes)
        self._kafka = kafka
        self._producer_factory = producer_factory
        self._client: ProducerClient | None = None
        self.failures = 0

    def open(self) -> None:
        """Open the challenger's own producer client, and the reader of a registry format."""
        # A batch prepared for the champion's spec is prepared again, from the source
        # bytes, in the input format: the same reader as the model actor's.
        self._preparer.reader = make_reader(self._formats, on_wait=registry_wait_logger())
        self._client = self._producer_factory(self._kafka)

    def release(self) -> None:
        """Flush and close the client."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a shadow's outputs are best effort
                log.exception("challenger %s: closing its producer failed", self._model.name)

    def receive(self, message: object) -> object:
        """Score a ChallengeBatch (giving its slot back whatever happens); take a SwapModel."""
        match message:
            case ChallengeBatch():
                try:
                    self._challenge(message)
                finally:
                    self._slots.give_back()
            case SwapModel(model=model):
                log.info("challenger now scores with %s %s", model.name, model.version)
                self._model = model
                self._spec_key = preparation_key(model.spec)
        return None

    def _challenge(self, message: ChallengeBatch) -> None:
        model = self._model
        batch = message.batch
        started = time.perf_counter()
        try:
            batch = self._preparer.again_for(batch, model.spec, self._spec_key)
            predictions = np.asarray(model.predict(batch.features), dtype=np.float64)
            if predictions.ndim == 2 and predictions.shape[1] == 1:
                predictions = predictions[:, 0]
            if predictions.shape[0] != batch.features.shape[0]:
                msg = f"returned {predictions.shape[0]} rows for {batch.features.shape[0]}"
                raise ValueError(msg)  # noqa: TRY301 - counted like any model error below
        except Exception as exc:  # a challenger never fails the pipeline
            self._agreement.failed(time.perf_counter() - started)
            self.failures += 1
            if self.failures % LOG_EVERY_FAILURES == 1:
                log.warning(
                    "challenger %s failed on a batch (%d failures so far): %s: %s",
                    model.name,
                    self.failures,
                    type(exc).__name__,
                    exc,
                )
            return
        seconds = time.perf_counter() - started
        # Compare the rows both models scored.
        common, mine, theirs = np.intersect1d(
            batch.valid_rows, message.rows, assume_unique=True, return_indices=True
        )
        self._agreement.scored(
            message.champion_scores[theirs], score_output(model, predictions)[mine], seconds
        )
        self._produce(batch.source, common, predictions[mine])

    def _produce(self, source: SourceBatch, rows: np.ndarray, predictions: np.ndarray) -> None:
        client = self._client
        if client is None or rows.size == 0 or not self._output_topic:
            return
        scored_at = iso_now()
        values = encode_predictions(
            topic=source.topic,
            partition=source.partition,
            offsets=source.offsets,
            keys=source.keys,
            rows=rows,
            predictions=predictions,
            output_names=self._model.output_names,
            model={"name": self._model.name, "version": self._model.version},
            scored_at=scored_at,
        )
        keys = [source.keys[row] for row in rows.tolist()]
        done = self._delivered
        ledger = self._ledger
        scores = (
            None
            if ledger is None
            else score_column(predictions, self._model.output_names, ledger.score_field)
        )
        if ledger is not None and scores is not None:
            scored = ChallengerScored(
                source,
                tuple(rows.tolist()),
                tuple(scores.tolist()),
                ledger.name,
                self._model.version,
                scored_at,
            )
            done = functools.partial(self._delivered, scored=scored)
        try:
            # The batch path of the client (librdkafka's in C with confluent), as the producer's.
            send_batch(client, [OutputGroup(self._output_topic, values, keys)], done)
        except Exception as exc:  # best effort: counted as a failure, never raised
            self._agreement.failed(0.0)
            log.warning("challenger %s: producing its outputs failed: %s", self._model.name, exc)

    def _delivered(
        self, failures: Sequence[SendFailure], scored: ChallengerScored | None = None
    ) -> None:
        """Deliveries of one batch settled (on a client thread): log the failures, once.

        Delivered, the scores go to the producer's prediction ledger (best effort).
        """
        if not failures and scored is not None and self._ledger is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._ledger.producer.tell(scored)
        if failures:
            log.warning(
                "challenger %s: %d outputs were not delivered: %s",
                self._model.name,
                len(failures),
                failures[0].error,
            )

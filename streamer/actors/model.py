"""ModelActor: score a feature matrix, isolating rows the model cannot score."""

from __future__ import annotations

import logging
import time

import numpy as np
import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.actors.routing import Teller
from streamer.clients.registry import make_reader, registry_wait_logger
from streamer.core.features import BatchReader
from streamer.core.models import Model, preparation_key
from streamer.core.preparation import prepare_source
from streamer.core.scoring import explain, score_isolating_failures
from streamer.messages import FeatureBatch, Rejection, ScoredBatch, SwapModel
from streamer.settings import BatchSettings, FormatSettings, PreprocessSettings

log = logging.getLogger(__name__)


class ModelActor(PipelineActor):
    """Applies the model to each batch and forwards one prediction per valid row.

    A :class:`SwapModel` (a hot reload) replaces the model between two batches,
    so no batch is ever scored by a model that is half loaded or by two models.
    A batch that a preprocessor prepared for another spec (other features or
    statistics) is prepared again here, from its source bytes, for this model.
    """

    kind = "model"

    def __init__(
        self,
        model: Model,
        producer: Teller,
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
        preprocess: PreprocessSettings | None = None,
        batch: BatchSettings | None = None,
        formats: FormatSettings | None = None,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._formats = formats or FormatSettings()
        self._reader: BatchReader | None = None
        self._model = model
        self._spec_key = preparation_key(model.spec)
        self._producer = producer
        self._preprocess = preprocess or PreprocessSettings()
        self._max_record_bytes = (batch or BatchSettings()).max_record_bytes
        self.reprepared_batches = 0

    def open(self) -> None:
        """Make the reader of a schema-registry input format, to prepare a batch again."""
        self._reader = make_reader(self._formats, on_wait=registry_wait_logger())

    def receive(self, message: object) -> object:
        """Handle FeatureBatch and SwapModel."""
        match message:
            case FeatureBatch() as batch:
                self._score(batch)
            case SwapModel(model=model):
                log.info("model actor now scores with %s %s", model.name, model.version)
                self._model = model
                self._spec_key = preparation_key(model.spec)
        return None

    def _score(self, batch: FeatureBatch) -> None:
        model = self._model
        if batch.spec_key and batch.spec_key != self._spec_key:
            # Prepared with the statistics of the model before a hot reload.
            batch = prepare_source(
                batch.source,
                model.spec,
                self._preprocess,
                self._max_record_bytes,
                self._spec_key,
                self._reader,
            )
            self.reprepared_batches += 1
        started = time.perf_counter()
        outcome = score_isolating_failures(model, batch.features)
        valid_rows = batch.valid_rows
        rejections = batch.rejections
        if outcome.failed:
            failed_positions = [pos for pos, _ in outcome.failed]
            rejections = rejections + tuple(
                Rejection(int(valid_rows[pos]), "model_error", error, "model")
                for pos, error in outcome.failed
            )
            valid_rows = np.delete(valid_rows, failed_positions)
        scored = batch.features
        if outcome.failed:
            scored = np.delete(scored, failed_positions, axis=0)
        self._producer.tell(
            ScoredBatch(
                source=batch.source,
                predictions=outcome.predictions,
                output_names=model.output_names,
                valid_rows=valid_rows,
                rejections=rejections,
                dropped_rows=batch.dropped_rows,
                model_name=model.name,
                model_version=model.version,
                preprocess_seconds=batch.preprocess_seconds,
                model_seconds=time.perf_counter() - started,
                reasons=explain(model, scored),
            )
        )

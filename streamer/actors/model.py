"""ModelActor: score a feature matrix, isolating rows the model cannot score."""

from __future__ import annotations

import time

import numpy as np
import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.core.model import Model
from streamer.core.scoring import score_isolating_failures
from streamer.messages import FeatureBatch, Rejection, ScoredBatch


class ModelActor(PipelineActor):
    """Applies the model to each batch and forwards one prediction per valid row."""

    kind = "model"

    def __init__(
        self,
        model: Model,
        producer: pykka.ActorRef,
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._model = model
        self._producer = producer

    def receive(self, message: object) -> object:
        """Handle FeatureBatch."""
        match message:
            case FeatureBatch() as batch:
                started = time.perf_counter()
                outcome = score_isolating_failures(self._model, batch.features)
                valid_rows = batch.valid_rows
                rejections = batch.rejections
                if outcome.failed:
                    failed_positions = [pos for pos, _ in outcome.failed]
                    rejections = rejections + tuple(
                        Rejection(int(valid_rows[pos]), "model_error", error, "model")
                        for pos, error in outcome.failed
                    )
                    valid_rows = np.delete(valid_rows, failed_positions)
                self._producer.tell(
                    ScoredBatch(
                        source=batch.source,
                        predictions=outcome.predictions,
                        output_names=self._model.output_names,
                        valid_rows=valid_rows,
                        rejections=rejections,
                        dropped_rows=batch.dropped_rows,
                        model_name=self._model.name,
                        model_version=self._model.version,
                        preprocess_seconds=batch.preprocess_seconds,
                        model_seconds=time.perf_counter() - started,
                    )
                )
        return None

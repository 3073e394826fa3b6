"""PreprocessorActor: decode, validate and standardize a micro-batch."""

from __future__ import annotations

import itertools
import time

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.core.features import FeatureSpec, prepare_batch
from streamer.messages import FeatureBatch, Rejection, ScoreBatch
from streamer.settings import BatchSettings, PreprocessSettings


class PreprocessorActor(PipelineActor):
    """Turns raw record values into a standardized feature matrix for a model actor."""

    kind = "preprocessor"

    def __init__(
        self,
        settings: PreprocessSettings,
        batch: BatchSettings,
        spec: FeatureSpec,
        models: list[pykka.ActorRef],
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._settings = settings
        self._max_record_bytes = batch.max_record_bytes
        self._spec = spec
        self._models = itertools.cycle(models)

    def receive(self, message: object) -> object:
        """Handle ScoreBatch."""
        match message:
            case ScoreBatch(source=source):
                started = time.perf_counter()
                prepared = prepare_batch(
                    source.values,
                    self._spec,
                    missing=self._settings.missing,
                    standardize=self._settings.standardize,
                    max_record_bytes=self._max_record_bytes,
                )
                rejections = tuple(
                    Rejection(p.index, p.reason, p.detail, "preprocess") for p in prepared.rejected
                )
                next(self._models).tell(
                    FeatureBatch(
                        source=source,
                        features=prepared.features,
                        valid_rows=prepared.valid_rows,
                        rejections=rejections,
                        dropped_rows=tuple(p.index for p in prepared.dropped),
                        preprocess_seconds=time.perf_counter() - started,
                    )
                )
        return None

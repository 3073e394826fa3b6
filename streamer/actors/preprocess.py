"""PreprocessorActor: decode, validate and standardize a micro-batch."""

from __future__ import annotations

import itertools
import time

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.actors.routing import Teller
from streamer.core.features import FeatureSpec, prepare_batch
from streamer.core.models import preparation_key
from streamer.messages import FeatureBatch, Rejection, ScoreBatch, SourceBatch, SwapModel
from streamer.settings import BatchSettings, PreprocessSettings


def prepare_source(
    source: SourceBatch,
    spec: FeatureSpec,
    settings: PreprocessSettings,
    max_record_bytes: int,
    spec_key: str = "",
) -> FeatureBatch:
    """Prepare one micro-batch for a model with ``spec``; the result carries ``spec_key``.

    Standardization happens only when both ``preprocess.standardize`` and the
    spec ask for it: a model that scales inside gets raw values.
    """
    started = time.perf_counter()
    prepared = prepare_batch(
        source.values,
        spec,
        missing=settings.missing,
        standardize=settings.standardize and spec.standardize,
        max_record_bytes=max_record_bytes,
    )
    return FeatureBatch(
        source=source,
        features=prepared.features,
        valid_rows=prepared.valid_rows,
        rejections=tuple(
            Rejection(p.index, p.reason, p.detail, "preprocess") for p in prepared.rejected
        ),
        dropped_rows=tuple(p.index for p in prepared.dropped),
        preprocess_seconds=time.perf_counter() - started,
        spec_key=spec_key or preparation_key(spec),
    )


class PreprocessorActor(PipelineActor):
    """Turns raw record values into a standardized feature matrix for a model actor.

    A :class:`SwapModel` (a hot reload) changes the spec from the next batch on.
    Every :class:`FeatureBatch` names the spec it was prepared with, so that a
    model actor that already has another model prepares it again.
    """

    kind = "preprocessor"

    def __init__(
        self,
        settings: PreprocessSettings,
        batch: BatchSettings,
        spec: FeatureSpec,
        models: list[Teller],
        metrics: pykka.ActorRef | None = None,
        on_failure: FailureHandler | None = None,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._settings = settings
        self._max_record_bytes = batch.max_record_bytes
        self._spec = spec
        self._spec_key = preparation_key(spec)
        self._models = itertools.cycle(models)

    def receive(self, message: object) -> object:
        """Handle ScoreBatch and SwapModel."""
        match message:
            case ScoreBatch(source=source):
                next(self._models).tell(
                    prepare_source(
                        source, self._spec, self._settings, self._max_record_bytes, self._spec_key
                    )
                )
            case SwapModel(model=model):
                self._spec = model.spec
                self._spec_key = preparation_key(model.spec)
        return None

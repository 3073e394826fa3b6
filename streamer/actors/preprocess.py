"""PreprocessorActor: decode, validate and standardize a micro-batch."""

from __future__ import annotations

import itertools

import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.actors.routing import Teller
from streamer.clients.registry import make_reader, registry_wait_logger
from streamer.core.features import FeatureSpec
from streamer.core.models import preparation_key
from streamer.core.preparation import Preparer
from streamer.messages import ScoreBatch, SwapModel
from streamer.settings import BatchSettings, FormatSettings, PreprocessSettings


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
        formats: FormatSettings | None = None,
    ) -> None:
        super().__init__(metrics, on_failure)
        self._formats = formats or FormatSettings()
        self._preparer = Preparer(settings, batch.max_record_bytes)
        self._spec = spec
        self._spec_key = preparation_key(spec)
        self._models = itertools.cycle(models)

    def open(self) -> None:
        """Make the reader of a schema-registry input format (no request yet)."""
        self._preparer.reader = make_reader(self._formats, on_wait=registry_wait_logger())

    def receive(self, message: object) -> object:
        """Handle ScoreBatch and SwapModel."""
        match message:
            case ScoreBatch(source=source):
                next(self._models).tell(self._preparer.prepare(source, self._spec, self._spec_key))
            case SwapModel(model=model):
                self._spec = model.spec
                self._spec_key = preparation_key(model.spec)
        return None

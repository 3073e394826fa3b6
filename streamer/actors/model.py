"""ModelActor: score a feature matrix, isolating rows the model cannot score."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import pykka

from streamer.actors.base import FailureHandler, PipelineActor
from streamer.actors.routing import ChallengerLink, Teller
from streamer.clients.registry import make_reader, registry_wait_logger
from streamer.core.dead_letters import FEATURE_REASONS, MODEL_ERROR
from streamer.core.models import Model, preparation_key
from streamer.core.monitoring.drift import DriftMonitor
from streamer.core.preparation import Preparer
from streamer.core.scoring import ScoreOutcome, explain, score_isolating_failures, score_output
from streamer.messages import ChallengeBatch, FeatureBatch, Rejection, ScoredBatch, SwapModel
from streamer.settings import BatchSettings, FormatSettings, PreprocessSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Scored:
    """A batch that an asynchronous (remote) model has answered, back on the actor's thread."""

    batch: FeatureBatch
    model: Model
    future: concurrent.futures.Future[ScoreOutcome]
    started: float


class ModelActor(PipelineActor):
    """Applies the model to each batch and forwards one prediction per valid row.

    A :class:`SwapModel` (a hot reload) replaces the model between two batches,
    so no batch is ever scored by a model that is half loaded or by two models.
    A batch that a preprocessor prepared for another spec (other features or
    statistics) is prepared again here, from its source bytes, for this model.

    A model with ``submit`` (``kind = "remote"``) scores in the background: the
    actor hands it the batch and takes the next one, and finishes the batch when
    the answer comes back as a :class:`_Scored`; the producer's reorderer puts
    batches back in order. Stopping the actor abandons the requests in flight
    (their batches are not acknowledged, so not committed).
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
        monitor: DriftMonitor | None = None,
        challengers: tuple[ChallengerLink, ...] = (),
    ) -> None:
        super().__init__(metrics, on_failure)
        self._formats = formats or FormatSettings()
        self._model = model
        self._spec_key = preparation_key(model.spec)
        self._producer = producer
        self._preprocess = preprocess or PreprocessSettings()
        self._preparer = Preparer(self._preprocess, (batch or BatchSettings()).max_record_bytes)
        self.reprepared_batches = 0
        self._monitor = monitor
        self._challengers = challengers
        self._monitoring = monitor is not None and monitor.profile.features == model.spec.names
        self._pending: set[concurrent.futures.Future[ScoreOutcome]] = set()

    def open(self) -> None:
        """Make the reader of a schema-registry input format, to prepare a batch again."""
        self._preparer.reader = make_reader(self._formats, on_wait=registry_wait_logger())

    def release(self) -> None:
        """Abandon the remote requests in flight: their batches were not acknowledged."""
        pending, self._pending = self._pending, set()
        for future in pending:
            future.cancel()

    def receive(self, message: object) -> object:
        """Handle FeatureBatch and SwapModel."""
        match message:
            case FeatureBatch() as batch:
                self._score(batch)
            case _Scored(batch=batch, model=model, future=future, started=started):
                self._pending.discard(future)
                # A failure here is a bug (outages and bad rows are answers): let it kill the actor.
                self._finish(batch, model, future.result(), started)
            case SwapModel(model=model):
                log.info("model actor now scores with %s %s", model.name, model.version)
                self._model = model
                self._spec_key = preparation_key(model.spec)
                self._watch_drift_of(model)
        return None

    def _watch_drift_of(self, model: Model) -> None:
        """After a hot reload: keep the drift gauges only while the profile fits the model."""
        monitor = self._monitor
        if monitor is None:
            return
        self._monitoring = monitor.profile.features == model.spec.names
        if not self._monitoring:
            log.warning(
                "model %s %s reads other features than the drift profile: drift gauges paused",
                model.name,
                model.version,
            )
            return
        spec = model.spec
        standardized = self._preprocess.standardize and spec.standardize
        monitor.set_scaling(spec.mean if standardized else None, spec.std if standardized else None)

    def _observe_drift(
        self,
        batch: FeatureBatch,
        predictions: np.ndarray,
        failed_positions: list[int],
        output_names: tuple[str, ...],
    ) -> None:
        """Feed the drift window: every prepared row's features and score (NaN: not scored)."""
        assert self._monitor is not None
        monitor = self._monitor
        scores = predictions
        if predictions.ndim == 2:
            names = output_names
            column = (
                names.index(monitor.profile.score_output)
                if monitor.profile.score_output in names
                else 0
            )
            scores = predictions[:, column]
        if failed_positions:
            aligned = np.full(batch.features.shape[0], np.nan)
            aligned[np.delete(np.arange(batch.features.shape[0]), failed_positions)] = scores
            scores = aligned
        rejected = [(r.index, r.detail) for r in batch.rejections if r.reason in FEATURE_REASONS]
        monitor.observe(
            batch.features,
            batch.valid_rows,
            rejected,
            scores,
            time.monotonic(),
            self._model.version,
        )

    def _score(self, batch: FeatureBatch) -> None:
        model = self._model
        prepared = self._preparer.again_for(batch, model.spec, self._spec_key)
        if prepared is not batch:  # prepared for the model before a hot reload
            batch = prepared
            self.reprepared_batches += 1
        started = time.perf_counter()
        future = model.submit(batch.features)  # a remote model answers in the background
        if future is not None:
            self._pending.add(future)
            future.add_done_callback(
                lambda done: self._answered(_Scored(batch, model, done, started))
            )
            return
        self._finish(batch, model, score_isolating_failures(model, batch.features), started)

    def _answered(self, scored: _Scored) -> None:
        """On the remote loop's thread: hand the answer to the actor (unless it was abandoned)."""
        if scored.future.cancelled():
            return
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(scored)

    def _finish(
        self, batch: FeatureBatch, model: Model, outcome: ScoreOutcome, started: float
    ) -> None:
        """Forward the predictions and the rows the model failed on; feed drift and challengers."""
        failed_positions = [pos for pos, _ in outcome.failed]
        if self._monitoring:
            self._observe_drift(batch, outcome.predictions, failed_positions, model.output_names)
        valid_rows = batch.valid_rows
        rejections = batch.rejections
        if outcome.failed:
            rejections = rejections + tuple(
                Rejection(int(valid_rows[pos]), MODEL_ERROR, error, "model")
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
        if self._challengers:
            self._challenge(batch, valid_rows, score_output(model, outcome.predictions))

    def _challenge(self, batch: FeatureBatch, rows: np.ndarray, scores: np.ndarray) -> None:
        """After the champion: hand the batch to each challenger that has a free slot."""
        message = ChallengeBatch(batch, rows, scores)
        for link in self._challengers:
            if not link.slots.take():
                link.agreement.skipped()
                continue
            try:
                link.ref.tell(message)
            except pykka.ActorDeadError:
                link.slots.give_back()
                link.agreement.failed(0.0)

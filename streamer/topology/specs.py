"""The stage specs: one table, keyed by :class:`Stage`, of how each kind starts and resumes.

Broadway's ``Topology`` builds one child spec per stage and hands them to a
supervisor; :data:`SPECS` is that list. The supervisor starts the stages in the
table's order and restarts a failed one from the same spec; then the spec's
``resume`` tells the consumer what to do about the work in flight.

The order is not needed for wiring: every stage sends to the :class:`Route` of
the next one, which exists before any actor starts. The consumer comes first
and stays idle (it subscribes, but fetches nothing) until :func:`attach`, once
every stage runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import pykka

from streamer.actors.base import FailureHandler
from streamer.actors.consumer import ConsumerActor
from streamer.actors.model import ModelActor
from streamer.actors.preprocess import PreprocessorActor
from streamer.actors.producer import ProducerActor
from streamer.actors.routing import ChallengerLink, Route
from streamer.clients import ConsumerFactory, ProducerFactory
from streamer.clients.base import ChangelogReader
from streamer.core.models import Model
from streamer.core.monitoring.drift import DriftMonitor
from streamer.core.supervision import DeadLetterBreaker
from streamer.messages import Attach, Rewind
from streamer.settings import Settings
from streamer.topology.labels import LedgerKeeper
from streamer.topology.state import StateKeeper, changelog_topic_name


class Stage(StrEnum):
    """A kind of pipeline stage; the value is its actor's ``kind`` and metric label."""

    CONSUMER = "consumer"
    PRODUCER = "producer"
    MODEL = "model"
    PREPROCESSOR = "preprocessor"


Routes = Mapping[Stage, Route]


@dataclass(frozen=True)
class ChangelogReaders:
    """How the keepers open their changelog readers (None: no such changelog)."""

    state: Callable[[], ChangelogReader] | None = None
    """The state's changelog topic (declared [[state.features]])."""
    ledger: Callable[[], ChangelogReader] | None = None
    """The prediction ledger's changelog topic (``labels.topic`` set)."""


@dataclass(frozen=True)
class Wiring:
    """What every stage is started with, besides its index, epoch and failure handler."""

    settings: Settings
    routes: Routes
    metrics: pykka.ActorRef | None
    model: Callable[[], Model]
    """The model in use: a hot reload changes it, and a restarted stage gets the new one."""
    consumer_factory: ConsumerFactory
    producer_factory: ProducerFactory
    on_assigned: Callable[[], None]
    monitor: DriftMonitor | None = None
    """The drift monitor the model actors feed (``[monitoring] profile_path``), if any."""
    challengers: tuple[ChallengerLink, ...] = ()
    """The running ``[[challenger]]`` actors, scored after the champion."""
    changelogs: ChangelogReaders = field(default_factory=ChangelogReaders)
    """How the state's and the prediction ledger's changelog readers are opened."""


StartStage = Callable[[Wiring, int, int, FailureHandler], pykka.ActorRef]
"""Start one actor: ``(wiring, index, epoch, on_failure) -> ref``."""

Resume = Callable[[Routes, int], None]
"""After a restart in ``epoch``: bring the pipeline's in-flight work back in order."""


@dataclass(frozen=True)
class StageSpec:
    """How one kind of stage starts, how many of it run, and how a restart resumes."""

    route: str
    count: Callable[[Settings], int]
    start: StartStage
    resume: Resume


def new_routes() -> dict[Stage, Route]:
    """One empty Route per stage, named as in the logs."""
    return {stage: Route(spec.route) for stage, spec in SPECS.items()}


def attach(routes: Routes) -> None:
    """Consumer <- Attach(preprocessors): fetching starts (from the committed offsets)."""
    consumer = routes[Stage.CONSUMER].refs()[0]
    consumer.tell(Attach([routes[Stage.PREPROCESSOR]]))


def _reattach(routes: Routes, _epoch: int) -> None:
    # A new consumer already runs in the new epoch: it only needs its preprocessors.
    attach(routes)


def _rewind(routes: Routes, epoch: int) -> None:
    # The consumer sends every unacknowledged batch again, tagged with the new epoch.
    for consumer in routes[Stage.CONSUMER].refs():
        with contextlib.suppress(pykka.ActorDeadError):
            consumer.tell(Rewind(epoch))


def _start_consumer(
    w: Wiring, _index: int, epoch: int, on_failure: FailureHandler
) -> pykka.ActorRef:
    s = w.settings
    metrics = w.metrics
    # A restarted consumer gets a fresh keeper, which plans every partition again.
    state = (
        StateKeeper(
            s,
            w.changelogs.state,
            report=None if metrics is None else functools.partial(_tell_quietly, metrics),
        )
        if s.state_features
        else None
    )
    return ConsumerActor.start(
        s.kafka,
        s.batch,
        metrics=metrics,
        on_failure=on_failure,
        client_factory=w.consumer_factory,
        on_ready=w.on_assigned,
        epoch=epoch,
        state=state,
        producer=w.routes[Stage.PRODUCER] if state is not None or s.labels.topic else None,
        labels_topic=s.labels.topic,
    )


def _start_producer(
    w: Wiring, _index: int, _epoch: int, on_failure: FailureHandler
) -> pykka.ActorRef:
    sup = w.settings.supervision
    breaker = (
        DeadLetterBreaker(sup.dead_letter_max_ratio, sup.dead_letter_window_records)
        if sup.dead_letter_max_ratio < 1
        else None
    )
    return ProducerActor.start(
        w.settings.kafka,
        w.routes[Stage.CONSUMER],
        metrics=w.metrics,
        on_failure=on_failure,
        client_factory=w.producer_factory,
        breaker=breaker,
        on_unanswerable=sup.on_unanswerable,
        formats=w.settings.format,
        changelog_topic=changelog_topic_name(w.settings) if w.settings.state_features else "",
        log_features=w.settings.state.log_features,
        # A restarted producer gets a fresh keeper, which plans every partition's ledger again.
        ledger=LedgerKeeper(w.settings, w.changelogs.ledger) if w.settings.labels.topic else None,
    )


def _start_model(w: Wiring, _index: int, _epoch: int, on_failure: FailureHandler) -> pykka.ActorRef:
    return ModelActor.start(
        w.model(),
        w.routes[Stage.PRODUCER],
        metrics=w.metrics,
        on_failure=on_failure,
        preprocess=w.settings.preprocess,
        batch=w.settings.batch,
        formats=w.settings.format,
        monitor=w.monitor,
        challengers=w.challengers,
    )


def _start_preprocessor(
    w: Wiring, _index: int, _epoch: int, on_failure: FailureHandler
) -> pykka.ActorRef:
    return PreprocessorActor.start(
        w.settings.preprocess,
        w.settings.batch,
        w.model().spec,
        [w.routes[Stage.MODEL]],
        metrics=w.metrics,
        on_failure=on_failure,
        formats=w.settings.format,
    )


def _tell_quietly(ref: pykka.ActorRef, message: object) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


def _one(_settings: Settings) -> int:
    return 1


SPECS: Final[Mapping[Stage, StageSpec]] = MappingProxyType(
    {
        Stage.CONSUMER: StageSpec("consumer", _one, _start_consumer, _reattach),
        Stage.PRODUCER: StageSpec("producer", _one, _start_producer, _rewind),
        Stage.MODEL: StageSpec("models", lambda s: s.model.workers, _start_model, _rewind),
        Stage.PREPROCESSOR: StageSpec(
            "preprocessors", lambda s: s.preprocess.workers, _start_preprocessor, _rewind
        ),
    }
)
"""Every stage, in start order."""

"""The stage specs: what each kind starts, where it sends, and how a restart resumes."""

from __future__ import annotations

import dataclasses
import threading
import time

import orjson
import pykka
import pytest

from streamer.actors.consumer import Attach, ConsumerActor
from streamer.actors.model import ModelActor
from streamer.actors.preprocess import PreprocessorActor
from streamer.actors.producer import ProducerActor
from streamer.core.models.linear import LinearModel
from streamer.messages import (
    BatchAcked,
    BatchProduced,
    FeatureBatch,
    GetStatus,
    Rewind,
    ScoreBatch,
    ScoredBatch,
    SourceBatch,
)
from streamer.topology.specs import SPECS, Stage, Wiring, attach, new_routes
from tests.unit.fakes import FakeKafka, Mailbox, start_recorder, sync
from tests.unit.topology.helpers import INPUT, TOPICS, settings

ASK_S = 5.0


@dataclasses.dataclass
class Wired:
    """Every Route holds one recorder; ``inboxes`` holds what each was told."""

    wiring: Wiring
    inboxes: dict[Stage, Mailbox]
    kafka: FakeKafka
    failures: list[tuple[str, BaseException]]
    model: list[LinearModel]

    def start(self, stage: Stage, epoch: int = 0) -> pykka.ActorRef:
        return SPECS[stage].start(
            self.wiring, 0, epoch, lambda kind, error: self.failures.append((kind, error))
        )


@pytest.fixture
def wired(demo: LinearModel) -> Wired:
    routes = new_routes()
    inboxes = {}
    for stage, route in routes.items():
        ref, inboxes[stage] = start_recorder()
        route.set([ref])
    metrics, _ = start_recorder()
    kafka = FakeKafka({(INPUT, 0): []}, TOPICS)
    model = [demo]
    return Wired(
        Wiring(
            settings=settings(),
            routes=routes,
            metrics=metrics,
            model=lambda: model[0],
            consumer_factory=kafka.consumer_factory,
            producer_factory=kafka.producer_factory,
            on_assigned=threading.Event().set,
        ),
        inboxes,
        kafka,
        [],
        model,
    )


def source(model: LinearModel) -> SourceBatch:
    row = dict(zip(model.spec.names, [40.0, 3.0, 1, 900, 0.1], strict=True))
    return SourceBatch(
        batch_id=7,
        topic=INPUT,
        partition=0,
        seq=0,
        offsets=[0],
        keys=[b"k0"],
        values=[orjson.dumps(row)],
        timestamps_ms=[0],
        dispatched_at=time.monotonic(),
    )


class TestTheTable:
    def test_there_is_one_spec_per_stage_in_start_order(self) -> None:
        assert list(SPECS) == [Stage.CONSUMER, Stage.PRODUCER, Stage.MODEL, Stage.PREPROCESSOR]

    def test_the_counts_come_from_the_settings(self) -> None:
        config = settings(preprocessors=3, models=2)
        assert {stage: spec.count(config) for stage, spec in SPECS.items()} == {
            Stage.CONSUMER: 1,
            Stage.PRODUCER: 1,
            Stage.MODEL: 2,
            Stage.PREPROCESSOR: 3,
        }

    def test_the_routes_are_named_as_in_the_logs(self) -> None:
        assert [route.name for route in new_routes().values()] == [
            "consumer",
            "producer",
            "models",
            "preprocessors",
        ]
        assert all(route.refs() == [] for route in new_routes().values())

    def test_the_stage_is_the_actor_kind(self) -> None:
        actors = {
            Stage.CONSUMER: ConsumerActor,
            Stage.PRODUCER: ProducerActor,
            Stage.MODEL: ModelActor,
            Stage.PREPROCESSOR: PreprocessorActor,
        }
        assert {stage: actor.kind for stage, actor in actors.items()} == {
            stage: stage.value for stage in Stage
        }


class TestStart:
    def test_each_spec_starts_its_own_actor(self, wired: Wired) -> None:
        started = {stage: wired.start(stage).actor_class for stage in SPECS}
        assert started == {
            Stage.CONSUMER: ConsumerActor,
            Stage.PRODUCER: ProducerActor,
            Stage.MODEL: ModelActor,
            Stage.PREPROCESSOR: PreprocessorActor,
        }
        assert wired.failures == []

    def test_a_consumer_starts_in_the_epoch_it_is_given(self, wired: Wired) -> None:
        consumer = wired.start(Stage.CONSUMER, epoch=3)
        assert consumer.ask(GetStatus(), timeout=ASK_S).epoch == 3
        assert wired.kafka.consumer.subscribed is not None

    def test_each_stage_sends_to_the_route_of_the_next(self, wired: Wired) -> None:
        batch = source(wired.model[0])
        wired.start(Stage.PREPROCESSOR).tell(ScoreBatch(batch))
        (features,) = wired.inboxes[Stage.MODEL].wait_for(1)
        assert isinstance(features, FeatureBatch)
        wired.start(Stage.MODEL).tell(features)
        (scored,) = wired.inboxes[Stage.PRODUCER].wait_for(1)
        assert isinstance(scored, ScoredBatch)
        wired.start(Stage.PRODUCER).tell(scored)
        told = wired.inboxes[Stage.CONSUMER].wait_for(2)
        # The delivery thread's ack may overtake the producer's own BatchProduced.
        assert sorted(told, key=str) == [BatchAcked(7, INPUT, 0, None, 0), BatchProduced(7)]

    def test_a_model_stage_starts_with_the_model_in_use(self, wired: Wired) -> None:
        reloaded = dataclasses.replace(wired.model[0], version="reloaded")
        wired.model[0] = reloaded
        wired.start(Stage.PREPROCESSOR).tell(ScoreBatch(source(reloaded)))
        (features,) = wired.inboxes[Stage.MODEL].wait_for(1)
        wired.start(Stage.MODEL).tell(features)
        (scored,) = wired.inboxes[Stage.PRODUCER].wait_for(1)
        assert scored.model_version == "reloaded"


class TestResume:
    def test_attach_tells_the_consumer_to_feed_the_preprocessor_route(self, wired: Wired) -> None:
        routes = wired.wiring.routes
        attach(routes)
        (message,) = wired.inboxes[Stage.CONSUMER].wait_for(1)
        assert isinstance(message, Attach)
        assert message.preprocessors == [routes[Stage.PREPROCESSOR]]
        assert message.preprocessors[0] is routes[Stage.PREPROCESSOR]

    def test_a_restarted_consumer_is_attached_again(self, wired: Wired) -> None:
        SPECS[Stage.CONSUMER].resume(wired.wiring.routes, 2)
        (message,) = wired.inboxes[Stage.CONSUMER].wait_for(1)
        assert isinstance(message, Attach)

    def test_any_other_restart_rewinds_the_consumer_in_the_new_epoch(self, wired: Wired) -> None:
        for stage in (Stage.PRODUCER, Stage.MODEL, Stage.PREPROCESSOR):
            SPECS[stage].resume(wired.wiring.routes, 5)
        consumer = wired.wiring.routes[Stage.CONSUMER].refs()[0]
        sync(consumer)
        assert wired.inboxes[Stage.CONSUMER].items() == [Rewind(5)] * 3

    def test_a_rewind_for_a_dead_consumer_is_dropped(self, wired: Wired) -> None:
        wired.wiring.routes[Stage.CONSUMER].refs()[0].stop()
        SPECS[Stage.MODEL].resume(wired.wiring.routes, 1)
        assert wired.inboxes[Stage.CONSUMER].items() == []

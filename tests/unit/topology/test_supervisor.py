"""The supervisor: restarts with rewind, restart intensity, giving up; alone and in a topology."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pykka
import pytest

from streamer.actors.base import FailureHandler
from streamer.core.models.linear import LinearModel, load_linear
from streamer.errors import DeadLetterRatioError
from streamer.messages import ActorRestarted
from streamer.settings import SupervisionSettings
from streamer.topology.heap import freeze_startup_heap
from streamer.topology.specs import Resume, Routes, Stage, StageSpec, StartStage, Wiring, new_routes
from streamer.topology.supervisor import Supervisor
from tests.unit.fakes import FakeKafka, FakeProducer, Mailbox, Sent, start_recorder, wait_until
from tests.unit.topology.helpers import (
    OUTPUT,
    PARTITIONS,
    PER_PARTITION,
    TP,
    CrashingModel,
    ModelCrash,
    assert_no_commit_passes_undelivered_work,
    dataset,
    settings,
    source_of,
    start,
)

COUNTS = {Stage.CONSUMER: 1, Stage.PRODUCER: 1, Stage.MODEL: 2, Stage.PREPROCESSOR: 3}


class Children:
    """Stage specs whose actors are recorders; they note every start and resume."""

    def __init__(self) -> None:
        self.started: list[tuple[Stage, int, int]] = []
        self.resumed: list[tuple[Stage, int]] = []
        self.handlers: dict[tuple[Stage, int], FailureHandler] = {}
        self.refuse_restarts = False

    def specs(self) -> dict[Stage, StageSpec]:
        return {
            stage: StageSpec(
                stage.value, lambda _s, n=count: n, self._starter(stage), self._resumer(stage)
            )
            for stage, count in COUNTS.items()
        }

    def _starter(self, stage: Stage) -> StartStage:
        def start(_w: Wiring, index: int, epoch: int, on_failure: FailureHandler) -> pykka.ActorRef:
            if self.refuse_restarts and epoch > 0:
                msg = "the broker is gone"
                raise RuntimeError(msg)
            self.started.append((stage, index, epoch))
            self.handlers[(stage, index)] = on_failure
            return start_recorder()[0]

        return start

    def _resumer(self, stage: Stage) -> Resume:
        def resume(_routes: Routes, epoch: int) -> None:
            self.resumed.append((stage, epoch))

        return resume

    def fail(self, stage: Stage, index: int, error: BaseException) -> None:
        """What a dying actor's on_failure does."""
        self.handlers[(stage, index)](stage.value, error)


@dataclasses.dataclass
class Supervised:
    supervisor: Supervisor
    children: Children
    routes: Routes
    metrics: Mailbox
    gave_up: threading.Event


@contextlib.contextmanager
def supervised(**supervision: float) -> Iterator[Supervised]:
    """A running supervisor over :class:`Children`, with a recorder for the metrics actor."""
    children = Children()
    gave_up = threading.Event()
    config = dataclasses.replace(
        SupervisionSettings(backoff_initial_s=0.01, backoff_max_s=0.05), **supervision
    )
    supervisor = Supervisor(config, gave_up.set, specs=children.specs(), clock=lambda: 0.0)
    metrics, mailbox = start_recorder()
    routes = new_routes()
    kafka = FakeKafka({}, ())
    model = load_linear(None)
    supervisor.start_children(
        Wiring(
            settings=settings(),
            routes=routes,
            metrics=metrics,
            model=lambda: model,
            consumer_factory=kafka.consumer_factory,
            producer_factory=kafka.producer_factory,
            on_assigned=lambda: None,
        )
    )
    supervisor.run()
    try:
        yield Supervised(supervisor, children, routes, mailbox, gave_up)
    finally:
        supervisor.close()


@pytest.fixture
def sup() -> Iterator[Supervised]:
    with supervised() as running:
        yield running


class TestSupervisor:
    def test_it_starts_every_stage_in_the_table_order_into_its_route(self, sup: Supervised) -> None:
        assert [(stage, index) for stage, index, _ in sup.children.started] == [
            (stage, i) for stage, count in COUNTS.items() for i in range(count)
        ]
        assert {stage: len(route.refs()) for stage, route in sup.routes.items()} == COUNTS
        assert sup.supervisor.epoch == 0

    def test_a_failed_stage_is_restarted_into_its_route_in_a_new_epoch_and_resumed(
        self, sup: Supervised
    ) -> None:
        old = sup.routes[Stage.MODEL].refs()
        sup.children.fail(Stage.MODEL, 1, RuntimeError("boom"))
        wait_until(lambda: sup.children.resumed)
        assert sup.children.started[-1] == (Stage.MODEL, 1, 1)
        assert sup.children.resumed == [(Stage.MODEL, 1)]
        new = sup.routes[Stage.MODEL].refs()
        assert new[0] is old[0]
        assert new[1] is not old[1]
        assert sup.supervisor.restarts == {"model": 1}
        assert sup.metrics.wait_for(1) == [ActorRestarted(actor="model")]
        assert sup.supervisor.failure is None
        assert not sup.gave_up.is_set()

    def test_a_restart_gives_the_frozen_start_up_heap_back_to_the_collector(
        self, sup: Supervised
    ) -> None:
        freeze_startup_heap()
        try:
            assert gc.get_freeze_count() > 0
            sup.children.fail(Stage.MODEL, 0, RuntimeError("boom"))
            wait_until(lambda: sup.children.resumed)
            assert gc.get_freeze_count() == 0  # the dead actor's cycles can be collected
        finally:
            gc.unfreeze()

    def test_each_restart_is_a_new_epoch(self, sup: Supervised) -> None:
        sup.children.fail(Stage.PRODUCER, 0, RuntimeError("boom"))
        wait_until(lambda: len(sup.children.resumed) == 1)
        sup.children.fail(Stage.CONSUMER, 0, RuntimeError("boom"))
        wait_until(lambda: len(sup.children.resumed) == 2)
        assert sup.children.resumed == [(Stage.PRODUCER, 1), (Stage.CONSUMER, 2)]
        assert sup.supervisor.restarts == {"producer": 1, "consumer": 1}

    def test_an_error_that_is_not_restartable_gives_up_at_once(self, sup: Supervised) -> None:
        sup.children.fail(Stage.PRODUCER, 0, DeadLetterRatioError("too many dead letters"))
        assert sup.gave_up.wait(5)
        assert sup.supervisor.failure == (
            "producer actor died: DeadLetterRatioError: too many dead letters"
        )
        assert isinstance(sup.supervisor.error, DeadLetterRatioError)
        assert sup.supervisor.restarts == {}
        assert sup.children.resumed == []

    def test_failures_beyond_the_restart_intensity_give_up_with_the_policy_reason(self) -> None:
        with supervised(max_restarts=1) as sup:
            sup.children.fail(Stage.MODEL, 0, RuntimeError("boom"))
            wait_until(lambda: sup.children.resumed)
            sup.children.fail(Stage.MODEL, 0, RuntimeError("again"))
            assert sup.gave_up.wait(5)
            assert sup.supervisor.failure == (
                "model actor died: RuntimeError: again; "
                "2 failures within 60s exceed supervision.max_restarts=1"
            )
            assert sup.supervisor.restarts == {"model": 1}

    def test_a_restart_that_fails_gives_up_instead_of_hanging(self, sup: Supervised) -> None:
        sup.children.refuse_restarts = True
        sup.children.fail(Stage.CONSUMER, 0, RuntimeError("boom"))
        assert sup.gave_up.wait(5)
        assert sup.supervisor.failure == (
            "could not restart the consumer actor: RuntimeError: the broker is gone"
        )

    def test_closing_during_the_backoff_drops_the_restart(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="streamer.topology.supervisor")
        with supervised(backoff_initial_s=30.0, backoff_max_s=30.0) as sup:
            sup.children.fail(Stage.MODEL, 0, RuntimeError("boom"))
            wait_until(lambda: "restarting it in 30.0s" in caplog.text)
            sup.supervisor.close()
            assert sup.supervisor.restarts == {}
            assert len(sup.children.started) == sum(COUNTS.values())
            assert sup.supervisor.failure is None


class TestFailuresAtStart:
    def test_the_first_queued_failure_fails_the_start_and_is_kept(self) -> None:
        gave_up = threading.Event()
        supervisor = Supervisor(SupervisionSettings(), gave_up.set)
        supervisor.handler(Stage.CONSUMER, 0)("consumer", RuntimeError("cannot connect"))
        supervisor.handler(Stage.PRODUCER, 0)("producer", RuntimeError("later"))
        supervisor.fail_queued()
        assert gave_up.is_set()
        assert supervisor.failure == "consumer actor died: RuntimeError: cannot connect"
        assert str(supervisor.error) == "cannot connect"
        assert supervisor.restarts == {}

    def test_nothing_queued_is_no_failure(self) -> None:
        gave_up = threading.Event()
        supervisor = Supervisor(SupervisionSettings(), gave_up.set)
        supervisor.fail_queued()
        assert supervisor.failure is None
        assert not gave_up.is_set()


class FlakyModel(CrashingModel):
    """Crashes (BaseException) on each listed call number, scores otherwise."""

    def __init__(self, model: LinearModel, crash_on_calls: set[int]) -> None:
        super().__init__(model, crash_on_call=-1)
        self._crash_calls = crash_on_calls

    def predict(self, features: np.ndarray) -> np.ndarray:
        with self._lock:
            self._calls += 1
            crash = self._calls in self._crash_calls
        if crash:
            self.crashed.set()
            msg = "model crashed"
            raise ModelCrash(msg)
        return self._model.predict(features)


def assert_every_input_delivered_in_order(sent: list[Sent], data_records: dict[TP, list]) -> None:
    """Every input has an output; per partition, the last copy of each offset is in order."""
    sources = [source_of(s) for s in sent]
    expected = {(tp, r.offset) for tp, recs in data_records.items() for r in recs}
    assert set(sources) == expected
    for tp in data_records:
        offsets = [o for t, o in sources if t == tp]
        # A rewind resends from the first unacknowledged batch: every resend
        # starts at or below where the previous copy stopped and then ascends.
        runs = [[offsets[0]]]
        for offset in offsets[1:]:
            if offset > runs[-1][-1]:
                runs[-1].append(offset)
            else:
                runs.append([offset])
        for run in runs:
            assert run == sorted(run)
        assert runs[-1][-1] == PER_PARTITION - 1


class TestRestarts:
    def test_a_model_that_crashes_is_restarted_and_its_batch_is_retried(
        self, demo: LinearModel
    ) -> None:
        data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
        model = FlakyModel(demo, crash_on_calls={3})
        pipeline, kafka, registry = start(data, settings(), model=model)
        ends = dict.fromkeys(data.records, PER_PARTITION)
        wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=15)
        report = pipeline.stop()
        assert (report.exit_code, report.failure) == (0, None)
        assert pipeline.restarts == {"model": 1}
        assert report.committed == ends
        assert registry.get_sample_value("streamer_actor_failures_total", {"actor": "model"}) == 1.0
        assert_every_input_delivered_in_order(kafka.producer.records(), data.records)

    def test_a_producer_whose_send_raises_once_is_restarted_and_nothing_is_lost(
        self, demo: LinearModel
    ) -> None:
        data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
        producer = FakeProducer(raise_on_send=650)
        pipeline, kafka, _registry = start(data, settings(), producer=producer)
        ends = dict.fromkeys(data.records, PER_PARTITION)
        wait_until(lambda: pipeline.restarts.get("producer") == 1, timeout=10)
        producer.raise_on_send = None
        wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=15)
        report = pipeline.stop()
        assert (report.exit_code, report.committed) == (0, ends)
        assert_every_input_delivered_in_order(kafka.producer.records(), data.records)

    def test_a_failed_delivery_restarts_the_producer_and_resends_in_order(
        self, demo: LinearModel
    ) -> None:
        data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
        failed_once = threading.Event()

        def fail_once(sent: Sent) -> BaseException | None:
            if source_of(sent) == (("events", 1), 250) and not failed_once.is_set():
                failed_once.set()
                return TimeoutError("delivery timed out")
            return None

        producer = FakeProducer(fail_when=fail_once)
        pipeline, kafka, _registry = start(data, settings(), producer=producer)
        ends = dict.fromkeys(data.records, PER_PARTITION)
        wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=15)
        report = pipeline.stop()
        assert (report.exit_code, report.committed) == (0, ends)
        assert pipeline.restarts == {"producer": 1}
        assert_every_input_delivered_in_order(kafka.producer.records(), data.records)
        copies = Counter(source_of(s) for s in kafka.producer.records())
        assert copies[(("events", 1), 250)] == 2

    def test_too_many_restarts_stop_the_pipeline_without_committing_unacked_work(
        self, demo: LinearModel
    ) -> None:
        data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
        model = FlakyModel(demo, crash_on_calls=set(range(3, 1000)))
        pipeline, kafka, _registry = start(data, settings(max_restarts=2), model=model)
        wait_until(lambda: pipeline.failure is not None, timeout=10)
        report = pipeline.stop(timeout_s=3.0)
        assert report.exit_code == 1
        assert "exceed supervision.max_restarts=2" in (report.failure or "")
        assert pipeline.restarts == {"model": 2}
        assert_no_commit_passes_undelivered_work(kafka, data)


class TestDeadLetterCircuitBreaker:
    def test_a_topic_of_bad_records_trips_the_breaker_and_stops_the_pipeline(
        self, demo: LinearModel
    ) -> None:
        data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
        for tp, recs in data.records.items():
            data.records[tp] = [dataclasses.replace(r, value=b"not json") for r in recs]
        config = dataclasses.replace(
            settings(),
            supervision=SupervisionSettings(
                dead_letter_max_ratio=0.5, dead_letter_window_records=300
            ),
        )
        pipeline, kafka, _registry = start(data, config)
        wait_until(lambda: pipeline.failure is not None, timeout=10)
        report = pipeline.stop(timeout_s=3.0)
        assert report.exit_code == 1
        assert "DeadLetterRatioError: dead letters are 100% of the last 300 records" in (
            report.failure or ""
        )
        dead = [s for s in kafka.producer.records() if s.topic != OUTPUT]
        assert len(dead) < 300  # stopped before the batch that filled the window
        assert sum(report.committed.values()) <= len(dead)

"""The terminator: the numbered shutdown steps, against scripted stages and in a topology."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from streamer.core.models.linear import LinearModel, load_linear
from streamer.errors import BrokerError
from streamer.messages import (
    BatchAcked,
    CommitNow,
    GetInFlight,
    GetStatus,
    InFlight,
    StopFetching,
)
from streamer.topology.specs import SPECS, Stage, Wiring, attach, new_routes
from streamer.topology.terminator import CLOSE_RESERVE_S, STOP_ORDER, Terminator, close_reserve
from tests.unit.fakes import FakeKafka, Mailbox, make_records, start_recorder, wait_until
from tests.unit.topology.helpers import (
    INPUT,
    PARTITIONS,
    PER_PARTITION,
    TOPICS,
    dataset,
    settings,
    start,
)

COMMITTED = {("events", 0): 40}


class Scripted(pykka.ThreadingActor):
    """A stage that writes every message it gets, and its stop, into a shared journal."""

    def __init__(
        self, name: str, journal: Mailbox, answers: dict[type, Callable[[], Any]] | None = None
    ) -> None:
        super().__init__()
        self.name = name
        self.journal = journal
        self.answers = answers or {}

    def on_receive(self, message: Any) -> Any:
        self.journal.put((self.name, type(message).__name__))
        answer = self.answers.get(type(message))
        return answer() if answer is not None else None

    def on_stop(self) -> None:
        self.journal.put((self.name, "stopped"))


def in_flight(counts: list[int]) -> Callable[[], InFlight]:
    """Answers GetInFlight with each count in turn, then the last one for ever."""
    it: Iterator[int] = iter(counts)
    last = [counts[0]]

    def answer() -> InFlight:
        last[0] = next(it, last[0])
        return InFlight(last[0], 10 * last[0], 100 * last[0])

    return answer


def raises(error: Exception) -> Callable[[], Any]:
    def answer() -> Any:
        raise error

    return answer


class Shutdown:
    """Scripted stages in their Routes, a terminator over them, and the journal."""

    def __init__(self, consumer_answers: dict[type, Callable[[], Any]] | None = None) -> None:
        self.journal = Mailbox()
        self.failure: str | None = None
        self.routes = new_routes()
        answers: dict[type, Callable[[], Any]] = {
            StopFetching: lambda: None,
            GetInFlight: in_flight([0]),
            CommitNow: lambda: COMMITTED,
        }
        answers.update(consumer_answers or {})
        self.consumer = Scripted.start("consumer", self.journal, answers)
        self.routes[Stage.CONSUMER].set([self.consumer])
        self.routes[Stage.PRODUCER].set([Scripted.start("producer", self.journal)])
        self.routes[Stage.MODEL].set([Scripted.start("model-0", self.journal)])
        self.routes[Stage.PREPROCESSOR].set(
            [Scripted.start(f"preprocessor-{i}", self.journal) for i in range(2)]
        )
        self.metrics = Scripted.start("metrics", self.journal)
        self.terminator = Terminator(
            self.routes,
            lambda: self.failure,
            before_stop=lambda: self.journal.put(("supervisor", "closed")),
        )

    def steps(self) -> list[tuple[str, str]]:
        """The journal, with repeated GetInFlight asks written once."""
        steps: list[tuple[str, str]] = []
        for entry in self.journal.items():
            if not steps or entry != steps[-1] or entry[1] != "GetInFlight":
                steps.append(entry)
        return steps


STOPS = [
    ("supervisor", "closed"),
    ("preprocessor-0", "stopped"),
    ("preprocessor-1", "stopped"),
    ("model-0", "stopped"),
    ("producer", "stopped"),
    ("consumer", "stopped"),
    ("metrics", "stopped"),
]


class TestTerminator:
    def test_a_clean_shutdown_drains_flushes_commits_and_stops_in_flow_order(self) -> None:
        s = Shutdown({GetInFlight: in_flight([2, 1, 0])})
        report = s.terminator.shutdown(5.0, s.metrics)
        assert (report.exit_code, report.drained, report.failure) == (0, True, None)
        assert report.committed == COMMITTED
        assert s.steps() == [
            ("consumer", "StopFetching"),
            ("consumer", "GetInFlight"),
            ("producer", "Flush"),
            ("consumer", "CommitNow"),
            *STOPS,
        ]
        assert s.journal.items().count(("consumer", "GetInFlight")) == 3

    def test_the_stop_order_is_the_flow_order_with_the_consumer_last(self) -> None:
        assert STOP_ORDER == (Stage.PREPROCESSOR, Stage.MODEL, Stage.PRODUCER, Stage.CONSUMER)

    def test_work_that_does_not_drain_within_the_budget_fails_but_is_still_committed(
        self,
    ) -> None:
        s = Shutdown({GetInFlight: in_flight([1])})
        report = s.terminator.shutdown(0.2, s.metrics)
        assert (report.exit_code, report.drained) == (1, False)
        assert report.failure == "in-flight batches did not drain within shutdown.timeout_s=0.2"
        assert report.committed == COMMITTED
        assert ("producer", "Flush") not in s.steps()
        assert s.steps()[-len(STOPS) - 1 :] == [("consumer", "CommitNow"), *STOPS]

    def test_a_failure_ends_the_drain_wait_and_is_the_reported_failure(self) -> None:
        s = Shutdown({GetInFlight: in_flight([1])})
        s.failure = "model actor died: ModelCrash: model crashed"
        report = s.terminator.shutdown(30.0, s.metrics)
        assert (report.exit_code, report.drained) == (1, False)
        assert report.failure == s.failure
        assert report.seconds < 10
        assert s.steps() == [("consumer", "StopFetching"), ("consumer", "CommitNow"), *STOPS]

    def test_a_commit_that_raises_is_reported_not_raised(self) -> None:
        s = Shutdown({CommitNow: raises(RuntimeError("CommitFailedError: the group rebalanced"))})
        report = s.terminator.shutdown(5.0, s.metrics)
        assert (report.exit_code, report.drained, report.committed) == (1, True, {})
        assert report.failure == (
            "final commit failed: RuntimeError: CommitFailedError: the group rebalanced"
        )
        assert s.steps()[-len(STOPS) :] == STOPS

    def test_a_step_that_fails_is_reported_and_the_stages_still_stop(self) -> None:
        s = Shutdown({StopFetching: raises(BrokerError("the broker is gone"))})
        report = s.terminator.shutdown(5.0, s.metrics)
        assert (report.exit_code, report.drained) == (1, False)
        assert report.failure == "shutdown step failed: BrokerError: the broker is gone"
        assert s.steps() == [("consumer", "StopFetching"), *STOPS]

    def test_an_earlier_failure_wins_over_a_failed_step(self) -> None:
        s = Shutdown({StopFetching: raises(BrokerError("the broker is gone"))})
        s.failure = "producer actor died: DeliveryError: timed out"
        report = s.terminator.shutdown(5.0, s.metrics)
        assert report.failure == s.failure

    def test_a_dead_consumer_skips_the_drain(self) -> None:
        s = Shutdown()
        s.consumer.stop()
        report = s.terminator.shutdown(5.0, s.metrics)
        assert (report.exit_code, report.drained, report.committed) == (1, False, {})
        assert report.failure == "in-flight batches did not drain within shutdown.timeout_s=5.0"
        assert s.steps() == [("consumer", "stopped"), *[x for x in STOPS if x[0] != "consumer"]]

    def test_the_stages_are_stopped_only_once(self) -> None:
        s = Shutdown()
        s.terminator.stop_stages(s.metrics)
        s.terminator.stop_stages(s.metrics)
        report = s.terminator.shutdown(5.0, s.metrics)
        assert s.steps() == STOPS
        assert report.exit_code == 1


class TestBudget:
    def test_a_model_busy_with_a_deep_inbox_is_left_behind_and_the_budget_is_kept(self) -> None:
        s = Shutdown({GetInFlight: in_flight([1])})
        release = threading.Event()
        slow = Scripted.start("model-0", s.journal, {str: lambda: release.wait(10)})
        s.routes[Stage.MODEL].set([slow])
        for _ in range(20):  # one being scored, 19 queued: 200 s of work
            slow.tell("batch")
        queued_ask = slow.ask("batch", block=False)

        started = time.monotonic()
        report = s.terminator.shutdown(1.0, s.metrics)
        seconds = time.monotonic() - started

        assert seconds < 1.5
        assert (report.exit_code, report.committed) == (1, COMMITTED)
        assert ("producer", "stopped") in s.steps()
        assert ("consumer", "stopped") in s.steps()
        with pytest.raises(pykka.ActorDeadError):
            queued_ask.get(timeout=1)
        release.set()
        wait_until(lambda: not slow.is_alive(), timeout=5)
        assert s.journal.items().count(("model-0", "str")) == 1, "a queued batch was handled"

    def test_the_drain_leaves_the_close_reserve_of_the_budget(self) -> None:
        assert close_reserve(30.0) == CLOSE_RESERVE_S
        assert close_reserve(1.5) == 0.5


class TestInFlight:
    def test_the_consumer_answers_with_its_unacknowledged_work(self) -> None:
        kafka = FakeKafka({(INPUT, 0): make_records([b"{}"] * 250)}, TOPICS)
        routes = new_routes()
        preprocessor, batches = start_recorder()
        routes[Stage.PREPROCESSOR].set([preprocessor])
        wiring = Wiring(
            settings=settings(max_records=100),
            routes=routes,
            metrics=None,
            model=lambda: load_linear(None),
            consumer_factory=kafka.consumer_factory,
            producer_factory=kafka.producer_factory,
            on_assigned=lambda: None,
        )
        consumer = SPECS[Stage.CONSUMER].start(wiring, 0, 0, lambda _kind, _error: None)
        routes[Stage.CONSUMER].set([consumer])
        attach(routes)
        sources = [m.source for m in batches.wait_for(3)]
        in_flight = consumer.ask(GetInFlight(), timeout=5)
        assert isinstance(in_flight, InFlight)
        assert (in_flight.batches_in_flight, in_flight.records_in_flight) == (3, 250)
        assert in_flight.bytes_in_flight == consumer.ask(GetStatus(), timeout=5).bytes_in_flight
        for source in sources:
            consumer.tell(BatchAcked(source.batch_id, source.topic, source.partition))
        assert consumer.ask(GetInFlight(), timeout=5) == InFlight(0, 0, 0)


class TestCommitErrors:
    def test_failing_commits_never_crash_the_pipeline_and_are_retried(
        self, demo: LinearModel
    ) -> None:
        data = dataset(demo.spec, PARTITIONS, PER_PARTITION)
        pipeline, kafka, _registry = start(data, settings())
        consumer = kafka.consumer
        consumer.commit_error = RuntimeError("CommitFailedError: the group rebalanced")
        ends = dict.fromkeys(data.records, PER_PARTITION)
        wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=15)
        assert pipeline.failure is None
        assert all(ref.is_alive() for ref in [pipeline.consumer_ref, pipeline.producer_ref])
        assert pipeline.consumer_status().committed != ends
        consumer.commit_error = None
        report = pipeline.stop()
        assert (report.exit_code, report.committed) == (0, ends)
        assert consumer.last_commit() == ends

    def test_a_final_commit_that_fails_is_reported_not_raised(self, demo: LinearModel) -> None:
        data = dataset(demo.spec, 1, 100)
        pipeline, kafka, _registry = start(data, settings())
        ends = dict.fromkeys(data.records, 100)
        wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=15)
        kafka.consumer.commit_error = RuntimeError("CommitFailedError: the group rebalanced")
        report = pipeline.stop()
        assert report.exit_code == 1
        assert report.failure is not None
        assert "CommitFailedError: the group rebalanced" in report.failure
        assert report.committed == {}

"""Supervision: restarts with rewind, restart intensity, the dead-letter breaker."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

import numpy as np
import pytest

from streamer.core.model import LinearModel, load_linear
from streamer.core.supervision import DeadLetterBreaker, RestartPolicy
from streamer.settings import SupervisionSettings
from tests.unit.fakes import FakeProducer, Sent, wait_until
from tests.unit.test_pipeline import (
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


@pytest.fixture
def demo() -> LinearModel:
    return load_linear(None)


class TestRestartPolicy:
    def test_restarts_are_allowed_up_to_the_intensity_with_doubling_backoff(self) -> None:
        policy = RestartPolicy(max_restarts=3, window_s=60, initial_s=0.5, max_s=1.5)
        delays = [policy.on_failure(now=float(t)).delay_s for t in range(3)]
        assert delays == [0.5, 1.0, 1.5]
        refused = policy.on_failure(now=3.0)
        assert refused.restart is False
        assert refused.reason == ("4 failures within 60s exceed supervision.max_restarts=3")

    def test_failures_older_than_the_window_are_forgotten(self) -> None:
        policy = RestartPolicy(max_restarts=2, window_s=10, initial_s=1, max_s=8)
        assert policy.on_failure(0.0).restart
        assert policy.on_failure(5.0).restart
        later = policy.on_failure(14.0)
        assert later.restart is True
        assert later.delay_s == 2.0  # the failure at 5.0 is still inside the window
        assert policy.recent_restarts == 2

    def test_zero_restarts_refuses_the_first_failure(self) -> None:
        assert RestartPolicy(0, 60, 0.1, 1).on_failure(0.0).restart is False


class TestDeadLetterBreaker:
    def test_it_judges_only_a_full_window(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=100)
        assert breaker.record(50, 50) is False  # 100% but only half a window
        assert breaker.record(50, 10) is True  # 60 of 100
        assert breaker.ratio == 0.6

    def test_old_batches_slide_out_of_the_window(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=100)
        assert breaker.record(100, 100) is True
        for _ in range(4):
            breaker.record(100, 0)
        assert breaker.records == 100
        assert breaker.ratio == 0.0

    def test_a_ratio_at_the_threshold_does_not_trip(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=10)
        assert breaker.record(10, 5) is False


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

"""Fault injection on the real broker: nothing is ever lost, duplicates stay bounded.

Each test checks that the set of input offsets equals the set of output offsets
plus dead-lettered offsets, and counts the duplicates.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamer.clients.kafka_python import ensure_topics
from streamer.core.demo_data import make_record
from streamer.core.models import ModelDefaults
from streamer.core.models.linear import LinearModel, load_linear
from streamer.devtools.broker import EmbeddedBroker, free_port
from streamer.devtools.verify import Reconciliation, source_of_output
from streamer.replay import replay_dead_letters
from streamer.settings import KafkaSettings, build_settings, to_toml
from streamer.topology import Pipeline

from .helpers import (
    BACKENDS,
    HEARTBEAT_INTERVAL_S,
    PROCESS_TIMEOUT_S,
    SESSION_TIMEOUT_S,
    Cluster,
    FlakyModel,
    PipelineStarter,
    Topics,
    end_offsets,
    running_daemon,
    wait_for,
    wait_until_delivered,
)

pytestmark = pytest.mark.integration

FAULT_REPORT = Path(
    os.environ.get("STREAMER_FAULT_REPORT")
    or Path(tempfile.gettempdir()) / "streamer-fault-report.txt"
)


def records(count: int, seed: int, bad_ratio: float = 0.0) -> list[tuple[bytes | None, bytes]]:
    rng = random.Random(seed)
    return [make_record(rng, bad_ratio=bad_ratio) for _ in range(count)]


def check_no_loss(cluster: Cluster, topics: Topics, name: str) -> Reconciliation:
    """Reconcile the topics, record the line for the closing note, and assert nothing is lost."""
    result = cluster.reconcile(topics)
    with FAULT_REPORT.open("a") as report:
        report.write(
            f"{name}: in {result.inputs}, out {result.scored}, dead-lettered "
            f"{result.dead_lettered}, duplicates {result.duplicates}, lost {result.lost}\n"
        )
    assert result.lost == 0, f"{result.lost} inputs have no output: {result.lost_ranges[:10]}"
    assert result.scored + result.dead_lettered == result.inputs
    return result


# --- actors that fail --------------------------------------------------------


class PoisonModel(ModelDefaults):
    """Raises for any batch holding a row whose raw amount is 666: a poison record."""

    # No file behind it: nothing to watch, and a reload never counts as unchanged.
    digest = ""
    watch_paths = ()

    def __init__(self, inner: LinearModel, always: bool = False) -> None:
        self._inner = inner
        self.name, self.version = inner.name, inner.version
        self.spec, self.output_names = inner.spec, inner.output_names
        self._always = always
        self._poison = (666.0 - inner.spec.mean[0]) / inner.spec.std[0]

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self._always or bool(np.any(features[:, 0] == self._poison)):
            msg = "cannot score amount 666"
            raise ValueError(msg)
        return self._inner.predict(features)


def test_a_model_actor_killed_twice_is_restarted_and_every_record_is_scored_in_order(
    cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=4)
    produced = cluster.produce(topics.input, records(4000, seed=1))
    settings = cluster.settings(
        topics,
        batch={"max_records": 100},
        supervision={"backoff_initial_s": 0.05},
    )
    pipeline = start_pipeline(settings, model=FlakyModel(load_linear(None), {5, 12}))
    wait_until_delivered(pipeline, topics.input, produced)
    report = pipeline.stop()
    assert (report.exit_code, report.failure) == (0, None)
    assert pipeline.restarts == {"model": 2}
    assert (
        pipeline.registry.get_sample_value("streamer_actor_failures_total", {"actor": "model"})
        == 2.0
    )
    result = check_no_loss(cluster, topics, "model actor killed twice")
    assert result.dead_lettered == 0
    # The last copy of each input comes after every earlier offset of its partition.
    outputs = cluster.read(topics.output)
    last_seen: dict[int, dict[int, int]] = {}
    for (out_partition, out_offset), (_k, value, _h) in sorted(outputs.records.items()):
        doc = orjson.loads(value or b"{}")
        last_seen.setdefault(doc["partition"], {})[doc["offset"]] = (out_partition, out_offset)
    assert {p: len(v) for p, v in last_seen.items()} == end_offsets(produced)


def test_poison_records_are_isolated_by_bisection_and_dead_lettered(
    cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=2)
    batch = records(2000, seed=2)
    poison_at = {17, 999, 1500}
    for index in poison_at:
        key, value = batch[index]
        doc = orjson.loads(value)
        doc["amount"] = 666
        batch[index] = (key, orjson.dumps(doc))
    produced = cluster.produce(topics.input, batch)
    pipeline = start_pipeline(
        cluster.settings(topics, batch={"max_records": 500}), model=PoisonModel(load_linear(None))
    )
    wait_until_delivered(pipeline, topics.input, produced)
    assert pipeline.stop().exit_code == 0
    result = check_no_loss(cluster, topics, "poison records (model raises)")
    assert (result.dead_lettered, result.duplicates) == (3, 0)
    dead = cluster.read(topics.dead_letter)
    for _key, value, headers in dead.records.values():
        h = dict(headers)
        assert h["streamer.reason"] == b"model_error"
        assert h["streamer.stage"] == b"model"
        assert h["streamer.error"] == b"ValueError: cannot score amount 666"
        assert orjson.loads(value or b"{}")["amount"] == 666


def test_a_model_that_fails_everything_trips_the_breaker_before_the_topic_is_dead_lettered(
    cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=2)
    produced = cluster.produce(topics.input, records(3000, seed=3))
    settings = cluster.settings(
        topics,
        batch={"max_records": 100},
        supervision={"dead_letter_max_ratio": 0.5, "dead_letter_window_records": 500},
    )
    pipeline = start_pipeline(settings, model=PoisonModel(load_linear(None), always=True))
    wait_for(lambda: pipeline.failure is not None, 30, "the breaker to trip")
    report = pipeline.stop()
    assert report.exit_code == 1
    assert "dead letters are 100% of the last 500 records" in (report.failure or "")
    dead = cluster.read(topics.dead_letter)
    assert len(dead) < 500
    committed = cluster.committed(topics.group, topics.input, 2)
    assert sum(o or 0 for o in committed.values()) <= len(dead)
    assert sum(end_offsets(produced).values()) == 3000


@pytest.mark.parametrize("client", BACKENDS)
def test_dead_letters_replayed_after_a_fix_are_scored(
    cluster: Cluster, start_pipeline: PipelineStarter, client: str
) -> None:
    topics = cluster.new_topics(partitions=2)
    good = records(300, seed=4)
    missing = [
        (b"card-x", orjson.dumps({"amount": 10.0 + i, "merchant_risk": 0.2})) for i in range(40)
    ]
    produced = cluster.produce(topics.input, good + missing)
    first = start_pipeline(cluster.settings(topics, kafka={"client": client}))
    wait_until_delivered(first, topics.input, produced)
    assert first.stop().exit_code == 0
    assert len(cluster.read(topics.dead_letter)) == 40

    # The fix: impute missing features with the fitted means; then replay (on the same client).
    fixed = cluster.settings(topics, kafka={"client": client}, preprocess={"missing": "impute"})
    replayed = replay_dead_letters(fixed)
    assert (replayed.replayed, replayed.by_reason) == (40, {"missing_feature": 40})
    assert replay_dead_letters(fixed).replayed == 0  # the replay group committed
    second = start_pipeline(fixed)
    inputs = cluster.read(topics.input)
    assert len(inputs) == 380
    wait_for(
        lambda: _committed_total(cluster, topics) == 380,
        PROCESS_TIMEOUT_S,
        "the replayed records to be delivered and committed",
    )
    assert second.stop().exit_code == 0
    outputs = cluster.read(topics.output)
    scored_amounts = sorted(
        doc["amount"]
        for _p, (_k, value, headers) in inputs.records.items()
        if dict(headers).get("streamer.replayed_from")
        for doc in [orjson.loads(value or b"{}")]
    )
    assert scored_amounts == [10.0 + i for i in range(40)]
    assert len(outputs) == 340


# --- the broker --------------------------------------------------------------


class _LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_broker_absent_at_start_is_retried_and_the_pipeline_is_not_ready_meanwhile(
    tmp_path: Path,
) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    settings = build_settings(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "input_topic": "late-in",
                "output_topic": "late-out",
                "group_id": "late",
                "session_timeout_s": SESSION_TIMEOUT_S,
                "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
                "bootstrap_timeout_s": 5.0,
            },
            "supervision": {"broker_retry_s": 2.0},
            "metrics": {"enabled": False},
        },
        environ={},
    )
    lines = _LogLines()
    logging.getLogger("streamer.topology").addHandler(lines)
    pipeline = Pipeline(settings)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            pipeline.start()
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        wait_for(
            lambda: any("broker not reachable (attempt 1)" in x for x in lines.lines),
            20,
            "the first retry line",
        )
        ready, details = pipeline.readiness()
        assert ready is False
        assert "broker_connected" in details["failing"]
        with EmbeddedBroker(port=port, log_path=tmp_path / "late.log") as broker:
            ensure_topics(
                KafkaSettings(bootstrap_servers=broker.bootstrap_servers),
                {"late-in": 2, "late-out": 2, "late-in.dlq": 1},
            )
            starter.join(timeout=30)
            assert not starter.is_alive()
            assert errors == []
            assert pipeline.wait_until_assigned(30)
            cluster = Cluster(broker)
            produced = cluster.produce("late-in", records(500, seed=5))
            wait_until_delivered(pipeline, "late-in", produced)
            assert pipeline.readiness()[0] is True
            assert pipeline.stop().exit_code == 0
            late = Topics("late-in", "late-out", "late-in.dlq", "late", 2)
            check_no_loss(cluster, late, "broker absent at start")
    finally:
        logging.getLogger("streamer.topology").removeHandler(lines)
        if pipeline.consumer_ref is not None and pipeline.consumer_ref.is_alive():
            pipeline.stop(timeout_s=5)


def test_a_broker_lost_mid_run_causes_no_crash_and_no_busy_loop_and_work_resumes(
    tmp_path: Path,
) -> None:
    with EmbeddedBroker(log_path=tmp_path / "frozen.log") as broker:
        cluster = Cluster(broker)
        topics = cluster.new_topics(partitions=2)
        produced = cluster.produce(topics.input, records(6000, seed=6))
        settings = cluster.settings(topics, batch={"max_records": 200, "max_in_flight": 4})
        pipeline = Pipeline(settings)
        pipeline.start()
        try:
            assert pipeline.wait_until_assigned(30)
            wait_for(
                lambda: sum(pipeline.consumer_status().watermarks.values()) > 0,
                30,
                "the first commits",
            )
            assert broker._process is not None
            os.kill(broker._process.pid, signal.SIGSTOP)  # the broker vanishes from the network
            cpu_before, wall_before = time.process_time(), time.monotonic()
            try:
                time.sleep(8.0)  # the outage itself, not a synchronisation
            finally:
                os.kill(broker._process.pid, signal.SIGCONT)
            cpu = time.process_time() - cpu_before
            wall = time.monotonic() - wall_before
            assert pipeline.failure is None
            assert cpu < 0.5 * wall, f"{cpu:.1f}s of CPU in {wall:.1f}s of outage: a busy loop"
            wait_until_delivered(pipeline, topics.input, produced, timeout_s=90)
            report = pipeline.stop()
            assert report.exit_code == 0
        finally:
            if pipeline.consumer_ref is not None and pipeline.consumer_ref.is_alive():
                pipeline.stop(timeout_s=5)
        check_no_loss(cluster, topics, "broker frozen 8 s mid-run")


# --- the process -------------------------------------------------------------


def _config(tmp_path: Path, cluster: Cluster, topics: Topics, name: str, **extra: Any) -> Path:
    document: dict[str, dict[str, Any]] = {
        "kafka": {**cluster.kafka_section(topics), "client_id": name},
        "batch": {"max_records": 200, "max_in_flight": 4},
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": 15.0},
    }
    for section, values in extra.items():
        document.setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(document))
    return path


def _committed_total(cluster: Cluster, topics: Topics) -> int:
    return sum(
        o or 0 for o in cluster.committed(topics.group, topics.input, topics.partitions).values()
    )


def test_after_a_kill_9_of_one_of_two_daemons_the_survivor_loses_nothing_and_repeats_only_in_flight(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two daemons split the partitions; one is killed -9 mid-stream and the other takes
    its partitions over from their commits: nothing lost, and only records at or past the
    commits at the kill repeat, at most the killed daemon's in-flight work.

    A fresh process resuming after a kill -9 is in test_state.py (step 3) and
    test_labels.py; restarts after SIGTERM in test_cli.py and test_shutdown_budget.py.
    """
    topics = cluster.new_topics(partitions=4)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    configs = [
        _config(tmp_path, cluster, topics, name, batch={"max_records": 50, "max_in_flight": 1})
        for name in ("a", "b")
    ]
    with running_daemon(configs[0], logs[0]) as a, running_daemon(configs[1], logs[1]) as b:
        wait_for(
            lambda: all("partitions assigned" in log.read_text() for log in logs),
            PROCESS_TIMEOUT_S,
            "both daemons to get partitions",
        )
        # Produced once both hold partitions: the second member's join takes about 3 s on
        # Tansu, time enough for the first to finish its half alone. 8,000 records, batches
        # of 50, one in flight: the killed daemon has done about a quarter of its half when
        # it dies (asserted below), the rest is the survivor's.
        produced = cluster.produce(topics.input, records(8_000, seed=8))
        ends = end_offsets(produced)
        total = sum(ends.values())
        wait_for(
            lambda: _committed_total(cluster, topics) >= 2000,
            PROCESS_TIMEOUT_S,
            "2000 committed records",
        )
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        committed_at_kill = cluster.committed(topics.group, topics.input, topics.partitions)
        wait_for(
            lambda: _committed_total(cluster, topics) == total,
            120,
            "the survivor to take over and commit everything",
        )
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=30) == 0, logs[1].read_text()[-3000:]
    assigned_b = [
        line for line in logs[1].read_text().splitlines() if "partitions assigned" in line
    ]
    # The killed daemon's partitions (its last assignment) still had records to score.
    (held_by_a,) = re.findall(r"partitions assigned: (.*)", logs[0].read_text())[-1:]
    left = {
        p: ends[p] - (committed_at_kill[p] or 0)
        for p in (int(tp.rsplit("/", 1)[1]) for tp in held_by_a.split(", ") if tp)
    }
    assert left, "the killed daemon held no partition"
    assert all(left.values()), f"the killed daemon's partitions were done at the kill: {left}"
    assert len(assigned_b) >= 2, "the survivor was never reassigned the killed daemon's partitions"
    result = check_no_loss(cluster, topics, "two daemons, one killed -9")
    # Only records at or past the commit at the kill can repeat, and at most
    # the in-flight work: (max_in_flight + one partial batch per partition) x max_records.
    # The default commits keep it there: kafka.commit_early commits once a full in-flight
    # window (max_in_flight x max_records records) was acknowledged, whatever is left of
    # kafka.commit_interval_s.
    bound = (1 + 4) * 50
    assert result.duplicates <= bound
    copies = Counter(
        source_of_output(value) for _k, value, _h in cluster.read(topics.output).records.values()
    )
    repeated = [source for source, times in copies.items() if times > 1]
    assert sum(times - 1 for times in copies.values()) <= result.duplicates
    for partition, offset in repeated:
        assert offset >= (committed_at_kill[partition] or 0)

"""The real ``streamer`` command as a subprocess: config errors, SIGTERM and restart, the demo."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from streamer.core.demo_data import make_record
from streamer.devtools.verify import reconcile
from streamer.settings import to_toml

from .helpers import (
    PROCESS_TIMEOUT_S,
    Cluster,
    DemoRun,
    Topics,
    end_offsets,
    running_daemon,
    streamer_command,
    wait_for,
)

pytestmark = pytest.mark.integration

SHUTDOWN_BUDGET_S = 15.0
# Closing the clients after the drain: consumer and producer close take up to 5 s each.
CLOSE_SLACK_S = 12.0


def _write_config(tmp_path: Path, cluster: Cluster, topics: Topics, **extra: Any) -> Path:
    document: dict[str, dict[str, Any]] = {
        "kafka": cluster.kafka_section(topics),
        "batch": {"max_records": 200},
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": SHUTDOWN_BUDGET_S},
    }
    for section, values in extra.items():
        document.setdefault(section, {}).update(values)
    path = tmp_path / f"{topics.group}.toml"
    path.write_text(to_toml(document))
    return path


def _run_cli(*args: str, timeout_s: float = PROCESS_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*streamer_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _terminate(process: subprocess.Popen[bytes], log_path: Path) -> tuple[int, float]:
    """SIGTERM the daemon; return its exit code and how long it took to exit."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=SHUTDOWN_BUDGET_S + CLOSE_SLACK_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon did not exit after SIGTERM; log:\n{log_path.read_text()}")
    return code, time.monotonic() - started


class _Highwater:
    """The summed highwater of a topic's partitions, as seen by an assigned reader."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        partitions = self._consumer.partitions_for_topic(topic) or set()
        self._tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)

    def total(self) -> int:
        self._consumer.poll(timeout_ms=50)
        return sum(self._consumer.highwater(tp) or 0 for tp in self._tps)

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=5000)


class TestConfigErrors:
    def test_a_missing_input_topic_exits_2_with_one_line_naming_kafka_input_topic(
        self, cluster: Cluster, tmp_path: Path
    ) -> None:
        topics = cluster.new_topics(partitions=1, create_input=False)
        config = _write_config(tmp_path, cluster, topics)

        result = _run_cli("run", "--config", str(config))

        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("streamer: config error: kafka.input_topic"), lines[0]
        assert topics.input in lines[0]

    def test_an_unknown_key_exits_2_naming_the_key(self, cluster: Cluster, tmp_path: Path) -> None:
        topics = cluster.new_topics(partitions=1)
        config = _write_config(tmp_path, cluster, topics, batch={"max_recrods": 7})

        result = _run_cli("run", "--config", str(config))

        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "batch.max_recrods" in lines[0]

    def test_check_config_accepts_a_good_file(self, cluster: Cluster, tmp_path: Path) -> None:
        topics = cluster.new_topics(partitions=1)
        config = _write_config(tmp_path, cluster, topics)

        result = _run_cli("check-config", str(config))

        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


def test_sigterm_then_restart_loses_nothing_and_only_repeats_records_past_the_commit(
    cluster: Cluster, tmp_path: Path
) -> None:
    topics = cluster.new_topics(partitions=4)
    rng = random.Random(42)
    produced = cluster.produce(
        topics.input, [make_record(rng, bad_ratio=0.005) for _ in range(20_000)]
    )
    ends = end_offsets(produced)
    config = _write_config(tmp_path, cluster, topics, batch={"max_records": 200})
    log_path = tmp_path / "daemon.log"

    # Run 1: stopped by SIGTERM as soon as outputs appear, in the middle of the input.
    outputs_seen = _Highwater(cluster.bootstrap_servers, topics.output)
    try:
        with running_daemon(config, log_path) as first:
            wait_for(
                lambda: first.poll() is not None or outputs_seen.total() > 0,
                PROCESS_TIMEOUT_S,
                "the first outputs",
            )
            assert first.poll() is None, f"the daemon exited early:\n{log_path.read_text()}"
            code, seconds = _terminate(first, log_path)
    finally:
        outputs_seen.close()
    assert code == 0, log_path.read_text()
    assert seconds < SHUTDOWN_BUDGET_S, f"SIGTERM took {seconds:.1f}s"
    committed_first = cluster.committed(topics.group, topics.input, topics.partitions)
    assert sum(o or 0 for o in committed_first.values()) > 0, "run 1 committed nothing"
    assert sum(o or 0 for o in committed_first.values()) < len(produced), (
        "run 1 finished the whole input before SIGTERM: the restart is not exercised"
    )

    # Run 2: resumes from the commit and covers the rest.
    with (
        running_daemon(config, log_path) as second,
        cluster.committed_reader(topics.group) as committed,
    ):
        wait_for(
            lambda: (
                second.poll() is not None
                or all(committed(topics.input, p) == end for p, end in ends.items())
            ),
            PROCESS_TIMEOUT_S,
            f"the group's commits to reach {ends}",
            interval_s=0.2,
        )
        assert second.poll() is None, f"the daemon exited early:\n{log_path.read_text()}"
        code, _seconds = _terminate(second, log_path)
    assert code == 0, log_path.read_text()

    inputs = cluster.read(topics.input)
    outputs = cluster.read(topics.output)
    dead_letters = cluster.read(topics.dead_letter)
    result = reconcile(inputs, outputs, dead_letters)
    assert result.lost == 0, result.lost_ranges[:10]
    assert result.scored + result.dead_lettered == len(produced)

    times_covered: Counter[tuple[int, int]] = Counter()
    for _key, value, _headers in outputs.records.values():
        doc = orjson.loads(value or b"null")
        times_covered[(doc["partition"], doc["offset"])] += 1
    for _key, _value, headers in dead_letters.records.values():
        h = dict(headers)
        times_covered[(int(h["streamer.source.partition"]), int(h["streamer.source.offset"]))] += 1
    repeated = sorted(source for source, times in times_covered.items() if times > 1)
    below_commit = [(p, o) for p, o in repeated if o < (committed_first[p] or 0)]
    assert below_commit == [], f"records below run 1's commit {committed_first} were repeated"
    assert result.duplicates == sum(times - 1 for times in times_covered.values())


def test_the_demo_command_runs_its_own_broker_and_loses_nothing(drifting_demo: DemoRun) -> None:
    result = drifting_demo.done

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last_line = result.stdout.strip().splitlines()[-1]
    assert "lost 0;" in last_line, last_line
    assert "shutdown clean" in last_line, last_line
    (labels,) = [line for line in result.stdout.splitlines() if line.startswith("labels: ")]
    assert re.fullmatch(
        r"labels: [1-9]\d* sent, [1-9]\d* joined( \(.*\))?; champion \S+ \S+ over the last "
        r"[1-9]\d* labelled records: precision (-|[01]\.\d{3}) recall (-|[01]\.\d{3})",
        labels,
    ), labels


SUMMARY = re.compile(
    r"^summary: records in (?P<inputs>\d+), scored (?P<scored>\d+), "
    r"dead-lettered (?P<dead>\d+), duplicates (?P<duplicates>\d+), lost (?P<lost>\d+); "
    r".* shutdown clean$"
)


def test_a_demo_of_two_hundred_thousand_records_reconciles_by_offsets(
    drifting_demo: DemoRun,
) -> None:
    """About 200,000 records at 8,000/s: the closing summary streams all three topics."""
    result = drifting_demo.done

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last_line = result.stdout.strip().splitlines()[-1]
    match = SUMMARY.match(last_line)
    assert match is not None, last_line
    counts = {name: int(value) for name, value in match.groupdict().items()}
    assert counts["inputs"] >= 180_000, last_line
    assert counts["scored"] + counts["dead"] == counts["inputs"], last_line
    assert counts["dead"] > 0, "the generator's malformed records are dead-lettered"
    assert (counts["duplicates"], counts["lost"]) == (0, 0), last_line
    assert "reconciling: reading back transactions, scores and transactions.dlq" in result.stderr
    assert re.search(r"reconciling: done, \d+k records in [\d.]+s", result.stderr), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert drifting_demo.seconds < 120, f"the demo took {drifting_demo.seconds:.0f}s"

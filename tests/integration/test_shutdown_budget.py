"""SIGTERM keeps ``shutdown.timeout_s`` whatever is queued in the actors' inboxes."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.core.demo_data import make_record
from streamer.devtools.verify import reconcile
from streamer.settings import to_toml

from .helpers import PROCESS_TIMEOUT_S, Cluster, Topics, end_offsets, running_daemon, wait_for

pytestmark = pytest.mark.integration

SLOW_MODEL = Path(__file__).parents[2] / "benchmarks" / "slow_model.py"
BUDGET_S = 5.0
# The bound the docs promise: the budget plus the interpreter's own exit.
EXIT_SLACK_S = 2.0
RECORDS = 3000
# 100 records at 5 ms each: 0.5 s a batch, 16 batches queued = 8 s of work, beyond the budget.
MAX_RECORDS = 100


def _config(tmp_path: Path, cluster: Cluster, topics: Topics) -> Path:
    document: dict[str, dict[str, Any]] = {
        "kafka": cluster.kafka_section(topics),
        "batch": {"max_records": MAX_RECORDS, "max_in_flight": 16},
        "model": {"kind": "python", "path": f"{SLOW_MODEL}:predict", "chunk_rows": 0},
        "preprocess": {"standardize": False},
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": BUDGET_S},
    }
    path = tmp_path / "streamer.toml"
    path.write_text(to_toml(document))
    return path


def _terminate(process: subprocess.Popen[bytes], log_path: Path) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {PROCESS_TIMEOUT_S}s after SIGTERM; log:\n{log_path.read_text()}")
    return code, time.monotonic() - started


def test_sigterm_with_a_slow_model_and_a_deep_queue_exits_within_the_budget_and_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    topics = cluster.new_topics(partitions=1)
    rng = random.Random(26)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(RECORDS)])
    config = _config(tmp_path, cluster, topics)
    log_path = tmp_path / "daemon.log"

    with running_daemon(config, log_path, env={"BENCH_SECONDS_PER_ROW": "0.005"}) as slow:
        # Wait until the model actor's inbox is deep: the consumer paused at max_in_flight.
        wait_for(
            lambda: slow.poll() is not None or "pipeline started" in log_path.read_text(),
            PROCESS_TIMEOUT_S,
            "the daemon to start",
        )
        # A group join takes 3 s or more on Tansu: the queue fills once the partition is in.
        wait_for(
            lambda: slow.poll() is not None or "partitions assigned" in log_path.read_text(),
            PROCESS_TIMEOUT_S,
            "the daemon to get its partition",
        )
        time.sleep(1.5)
        assert slow.poll() is None, f"the daemon exited early:\n{log_path.read_text()}"
        code, seconds = _terminate(slow, log_path)
    log = log_path.read_text()
    assert seconds <= BUDGET_S + EXIT_SLACK_S, f"SIGTERM to exit took {seconds:.1f}s:\n{log}"
    assert code == 1, log  # the drain did not finish within the budget: the documented 1
    assert "did not drain within shutdown.timeout_s=5.0" in log, log
    committed = cluster.committed(topics.group, topics.input, 1)[0] or 0
    assert 0 < committed < RECORDS, f"committed {committed}: the test did not cut the stream"

    # A restart with a fast model re-reads everything past the commit.
    ends = end_offsets(produced)
    with (
        running_daemon(config, log_path, env={"BENCH_SECONDS_PER_ROW": "0"}) as fast,
        cluster.committed_reader(topics.group) as committed_now,
    ):
        wait_for(
            lambda: fast.poll() is not None or committed_now(topics.input, 0) == ends[0],
            PROCESS_TIMEOUT_S,
            f"the commit to reach {ends[0]}",
            interval_s=0.2,
        )
        assert fast.poll() is None, f"the daemon exited early:\n{log_path.read_text()}"
        code, _seconds = _terminate(fast, log_path)
    assert code == 0, log_path.read_text()

    result = reconcile(
        cluster.read(topics.input), cluster.read(topics.output), cluster.read(topics.dead_letter)
    )
    assert result.lost == 0, result.lost_ranges[:10]
    assert result.scored + result.dead_lettered == RECORDS

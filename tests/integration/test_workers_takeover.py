"""``streamer run --workers 2``: after its parent is killed, a new parent's workers take over.

The parent gets SIGKILL (it cannot forward anything); its orphaned workers see
it gone, drain and leave the group, while a restarted parent starts two new
workers in the same group. The new workers must own every partition, and so
commit records produced after the restart, within TAKEOVER_BOUND_S: the
orphans' own shutdown budget, a rebalance, and the group join.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.core.demo_data import make_record
from streamer.settings import to_toml

from .helpers import PROCESS_TIMEOUT_S, Cluster, end_offsets, streamer_command, wait_for

pytestmark = pytest.mark.integration

BUDGET_S = 3.0
KILLS = 3
# The orphans drain within BUDGET_S + 2 s after they notice (1 s), the new members' join
# takes about half the session timeout (3 s), and one more rebalance when the orphans leave.
TAKEOVER_BOUND_S = 25.0


def _start_parent(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [*streamer_command(), "run", "--config", str(config), "--workers", "2"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )


def test_after_the_parent_is_killed_a_new_parent_takes_over_every_partition_in_bound(
    cluster: Cluster, tmp_path: Path
) -> None:
    topics = cluster.new_topics(partitions=4)
    document: dict[str, dict[str, Any]] = {
        "kafka": cluster.kafka_section(topics),
        "batch": {"max_records": 100},
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": BUDGET_S},
    }
    config = tmp_path / "streamer.toml"
    config.write_text(to_toml(document))
    rng = random.Random(5)
    log_path = tmp_path / "parents.log"
    produced = cluster.produce(
        topics.input, [make_record(rng) for _ in range(400)], partition_of=lambda i: i % 4
    )
    parents: list[subprocess.Popen[bytes]] = []
    takeovers: list[float] = []
    try:
        with cluster.committed_reader(topics.group) as committed:

            def caught_up() -> bool:
                ends = end_offsets(produced)
                return all(committed(topics.input, p) == end for p, end in ends.items())

            parents.append(_start_parent(config, log_path))
            wait_for(caught_up, PROCESS_TIMEOUT_S, "the first parent's workers to catch up")
            for _ in range(KILLS):
                parents[-1].send_signal(signal.SIGKILL)
                parents[-1].wait(timeout=10)
                started = time.monotonic()
                parents.append(_start_parent(config, log_path))
                produced.update(
                    cluster.produce(
                        topics.input,
                        [make_record(rng) for _ in range(400)],
                        partition_of=lambda i: i % 4,
                    )
                )
                wait_for(
                    caught_up,
                    TAKEOVER_BOUND_S,
                    "the new workers to commit every partition",
                    interval_s=0.2,
                    describe=lambda: log_path.read_text()[-4000:],
                )
                takeovers.append(time.monotonic() - started)
        parents[-1].send_signal(signal.SIGTERM)
        assert parents[-1].wait(timeout=PROCESS_TIMEOUT_S) == 0, log_path.read_text()[-4000:]
    finally:
        for parent in parents:
            if parent.poll() is None:
                parent.kill()
                parent.wait(timeout=10)
    print(f"takeover seconds: {[round(t, 1) for t in takeovers]}")
    assert max(takeovers) < TAKEOVER_BOUND_S

"""CPU time per record of ``streamer run``, by thread kind: Python's and librdkafka's.

The wall-clock rates of ``make bench`` move by 15% with the load of this shared
machine; the CPU time a run spends per record moves much less. This runs
streamer over a preloaded topic until every record is committed, then reads
each thread's utime + stime from ``/proc/PID/task/*/stat``: librdkafka names
its threads ``rdk:*``, every other thread runs Python (the actors, the
delivery poller, the metrics server). Repeated rounds, medians.

    .venv/bin/python benchmarks/cpu.py --records 200000 --rounds 3 --backend confluent
    .venv/bin/python benchmarks/cpu.py --py-spy /path/to/py-spy   # also a profile per round
    .venv/bin/python benchmarks/cpu.py --state-features --settings '{"state": {"dir": "/tmp/st"}}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import STATE_FEATURES, Cluster, Streamer, wait_until

from streamer.devtools.broker import EmbeddedBroker

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the process's threads, summed by kind: 'python' or 'librdkafka'."""
    totals = {"python": 0.0, "librdkafka": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds = (int(fields[11]) + int(fields[12])) / TICKS
            totals["librdkafka" if comm.startswith("rdk:") else "python"] += seconds
    return totals


def one_round(
    cluster: Cluster, workdir: Path, args: argparse.Namespace, topic: str, round_: int
) -> dict[str, Any]:
    output = cluster.topic("cpu-out")
    sections: dict[str, dict[str, Any]] = json.loads(args.settings)
    process = Streamer(
        workdir,
        cluster.bootstrap,
        args.backend,
        topic,
        output,
        sections=sections,
        extra_toml=STATE_FEATURES if args.state_features else "",
    )
    spy = None
    try:
        wait_until(process.ready, 120, "streamer to be ready")
        before = thread_cpu(process.process.pid)
        if args.py_spy:
            spy = subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "--pid",
                    str(process.process.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--output",
                    str(Path(args.profile_dir) / f"profile-{round_}.txt"),
                    *(["--gil"] if args.gil else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        started = time.perf_counter()
        wait_until(
            lambda: cluster.committed(process.group, topic) >= args.records,
            600,
            "every record committed",
            interval_s=0.05,
        )
        elapsed = time.perf_counter() - started
        after = thread_cpu(process.process.pid)
    finally:
        if spy is not None:
            spy.send_signal(2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(20)
        process.stop()
        cluster.forget(process.group)
        cluster.delete(output)
    per = {k: 1e6 * (after[k] - before[k]) / args.records for k in after}
    return {"rate": args.records / elapsed, **{f"{k}_us": v for k, v in per.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="confluent")
    parser.add_argument("--settings", default="{}", help="streamer sections as JSON")
    parser.add_argument(
        "--state-features",
        action="store_true",
        help="declare the bench's three 1 h features (section (s)); give state.dir in --settings",
    )
    parser.add_argument("--py-spy", default="", help="a py-spy binary: a raw profile per round")
    parser.add_argument("--gil", action="store_true", help="py-spy --gil")
    parser.add_argument("--profile-dir", default=".")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamer-cpu-") as tmp, EmbeddedBroker() as broker:
        cluster = Cluster(broker.bootstrap_servers)
        topic = cluster.topic("cpu-in", dlq=True)
        cluster.preload(topic, args.records)
        results = [one_round(cluster, Path(tmp), args, topic, r) for r in range(args.rounds)]
    for r in results:
        print(json.dumps({k: round(v, 2) for k, v in r.items()}), file=sys.stderr)
    summary = {k: round(float(np.median([r[k] for r in results])), 2) for k in results[0]}
    print(json.dumps({"median": summary, "rounds": len(results), "records": args.records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

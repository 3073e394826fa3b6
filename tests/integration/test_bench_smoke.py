"""`make bench` with tiny counts, so that the benchmark cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.devtools.broker import EmbeddedBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("confluent_kafka") is None,
        reason="the benchmark compares both backends: pip install 'streamer[confluent]'",
    ),
]

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


def test_the_benchmark_runs_every_section_and_every_pipeline_stops_cleanly(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--smoke",
            "--bootstrap",
            broker.bootstrap_servers,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,  # 100-106 s at load 7-10 (2026-12-06); the bound only stops a hung run
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())

    assert {row["section"] for row in rows} == set("abcdefmh")
    for row in rows:
        assert row["value"] == row["value"], f"{row['name']} is NaN"  # NaN != NaN
        if row["unit"] == "records/s":
            assert row["value"] > 0, row
        if "exit" in row["note"]:
            assert row["note"].endswith("exit 0"), row
    workers = [r for r in rows if r["section"] == "b"]
    assert {r["extra"]["workers"] for r in workers} == {1, 2}
    assert "records/s" in result.stdout

"""``streamer run``: the hidden flags a worker process is started with."""

from __future__ import annotations

import os
import sys

import pytest

from streamer.commands import build_parser
from streamer.settings import build_settings
from streamer.workers import Worker, WorkerPool


def test_the_worker_flags_parse_and_stay_out_of_the_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["run", "--parent-pid", "41", "--worker-index", "2"])
    assert (args.parent_pid, args.worker_index) == (41, 2)
    assert build_parser().parse_args(["run"]).parent_pid is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_text = capsys.readouterr().out
    assert "--workers" in help_text
    assert "--parent-pid" not in help_text
    assert "--worker-index" not in help_text


def test_a_worker_is_python_m_streamer_run_with_the_hidden_flags() -> None:
    settings = build_settings(
        {"kafka": {"input_topic": "in", "output_topic": "out"}, "metrics": {"port": 9400}},
        environ={},
    )
    pool = WorkerPool(settings, 2, log_level="DEBUG", log_format="json")
    command = pool._worker_command(Worker(1, 9402))
    assert command == [
        sys.executable,
        "-m",
        "streamer",
        "run",
        "--parent-pid",
        str(os.getpid()),
        "--worker-index",
        "1",
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
    ]
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.parent_pid, args.worker_index) == ("run", os.getpid(), 1)

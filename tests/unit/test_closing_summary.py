"""The demo's closing summary and every command end in one line, never in a traceback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from streamer import cli, demo
from streamer.commands import config as config_command
from streamer.commands import demo as demo_command
from streamer.core.reconcile import Reconciliation
from streamer.errors import BrokerError
from streamer.topology import ShutdownReport

CLEAN = ShutdownReport(
    exit_code=0,
    drained=True,
    committed={("transactions", 0): 750_000, ("transactions", 1): 749_000},
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    thread_name = threading.current_thread().name
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    threading.current_thread().name = thread_name


def _summary(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> int:
    def fake_reconcile_topics(*_args: Any, on_progress: Any, **_kwargs: Any) -> Reconciliation:
        on_progress(1_200_000, 3_000_000)
        if isinstance(outcome, BaseException):
            raise outcome
        result: Reconciliation = outcome
        return result

    monkeypatch.setattr(demo, "reconcile_topics", fake_reconcile_topics)
    return demo._summary("127.0.0.1:1", "transactions.dlq", CLEAN, started=0.0, idle_timeout_s=30.0)


class TestTheDemoSummary:
    def test_a_reconciled_run_prints_the_counts_and_exits_0(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        result = Reconciliation(
            inputs=1_499_000, scored=1_498_500, dead_lettered=500, duplicates=0, lost=0
        )
        assert _summary(monkeypatch, result) == 0
        out, err = capsys.readouterr()
        assert out.startswith(
            "summary: records in 1499000, scored 1498500, dead-lettered 500, duplicates 0, lost 0;"
        )
        assert out.rstrip().endswith("shutdown clean")
        assert "reconciling: 1.2M of 3.0M records" in err

    def test_a_lost_record_makes_it_exit_1(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        result = Reconciliation(
            inputs=10, scored=9, dead_lettered=0, duplicates=0, lost=1, lost_ranges=((0, 3, 4),)
        )
        assert _summary(monkeypatch, result) == 1
        assert "lost 1;" in capsys.readouterr().out

    @pytest.mark.parametrize(
        ("outcome", "reason"),
        [
            (
                BrokerError("could not read scores to the end: no progress for 30s"),
                "could not read scores to the end: no progress for 30s",
            ),
            (KeyboardInterrupt(), "interrupted"),
            (ValueError("an output is not a streamer prediction"), "an output is not"),
        ],
    )
    def test_a_summary_that_cannot_finish_says_so_in_one_line_pointing_at_the_commits(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        outcome: BaseException,
        reason: str,
    ) -> None:
        assert _summary(monkeypatch, outcome) == 1
        out, err = capsys.readouterr()
        assert out.count("\n") == 1
        assert out.startswith(f"summary: not finished ({reason}")
        assert "committed 1499000 offsets of transactions (partition: offset 0: 750000" in out
        assert "Traceback" not in out + err


class TestEveryCommandEndsInOneLine:
    def test_an_unexpected_error_is_one_line_on_stderr_and_exit_1(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def broken(_args: Any) -> int:
            raise RuntimeError("something\nunexpected")

        monkeypatch.setattr(config_command, "cmd_config_reference", broken)
        assert cli.main(["config-reference"]) == 1
        out, err = capsys.readouterr()
        assert (out, err) == (
            "",
            "streamer: unexpected error: RuntimeError: something unexpected\n",
        )

    def test_the_hint_names_the_log_level_where_the_command_has_one(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def broken(_args: Any) -> int:
            raise OSError("disk full")

        monkeypatch.setattr(demo_command, "cmd_produce_demo", broken)
        assert cli.main(["produce-demo"]) == 1
        assert capsys.readouterr().err == (
            "streamer: unexpected error: OSError: disk full; "
            "--log-level DEBUG shows the traceback\n"
        )

    def test_ctrl_c_outside_a_handled_stop_is_one_line_and_exit_130(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def interrupted(_args: Any) -> int:
            raise KeyboardInterrupt

        monkeypatch.setattr(config_command, "cmd_config_reference", interrupted)
        assert cli.main(["config-reference"]) == 130
        assert capsys.readouterr().err == "streamer: interrupted\n"

    def test_the_demo_takes_the_summary_timeout(self, monkeypatch: pytest.MonkeyPatch) -> None:
        seen: dict[str, Any] = {}
        monkeypatch.setattr(demo, "run_demo", lambda **kwargs: seen.update(kwargs) or 0)
        assert cli.main(["demo", "--duration", "5", "--summary-timeout", "90"]) == 0
        assert seen["summary_timeout_s"] == 90.0
        assert seen["duration_s"] == 5.0

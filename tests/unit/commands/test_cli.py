"""The ``streamer`` command line: exit codes and one-line errors."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.cli import main

GOOD = '[kafka]\ninput_topic = "events"\noutput_topic = "scores"\n'


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No STREAMER_* variables leak in; the root logger and thread name are restored."""
    for name in list(os.environ):
        if name.startswith("STREAMER_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    kafka_level = logging.getLogger("kafka").level
    thread_name = threading.current_thread().name
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(kafka_level)
    threading.current_thread().name = thread_name


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamer.toml"
    path.write_text(text)
    return path


def test_check_config_of_a_good_file_returns_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok; model demo-fraud ")
    assert "features amount, distance_from_home_km" in out
    assert err == ""


def test_check_config_show_prints_the_settings_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD + 'sasl_password = "hunter2"\n')
    assert main(["check-config", str(path), "--show"]) == 0
    out = capsys.readouterr().out
    assert "input_topic = 'events'" in out
    assert "sasl_password = ***" in out
    assert "hunter2" not in out


def test_check_config_with_an_unknown_key_exits_2_with_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD + "max_recordz = 5\n")
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1
    assert err.startswith("streamer: config error: unknown key kafka.max_recordz (known keys in [")


def test_check_config_reads_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("STREAMER_BATCH__MAX_RECORDS", "abc")
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        "streamer: config error: batch.max_records must be int, got 'abc' "
        "(set by the environment variable STREAMER_BATCH__MAX_RECORDS)\n"
    )


def test_check_config_of_a_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent.toml"
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == f"streamer: config error: file {path} does not exist\n"


def test_check_config_with_an_unreadable_model_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "missing-model.json"
    path = write(tmp_path, GOOD + f'[model]\npath = "{model}"\n')
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"streamer: model error: cannot read model.path={model}: No such file or directory\n"
    )


def test_an_unknown_command_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_config_reference_lists_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-reference"]) == 0
    out = capsys.readouterr().out
    for section in ("kafka", "batch", "preprocess", "model", "metrics", "shutdown"):
        assert f"[{section}]" in out
    assert "max_records (int, default 1000): Most records in one micro-batch." in out


def test_run_flags_override_the_file_and_the_environment(tmp_path: Path) -> None:
    from streamer.commands import build_parser
    from streamer.commands.common import overrides
    from streamer.settings import load_settings

    path = write(tmp_path, GOOD + "[batch]\nmax_records = 10\n")
    args = build_parser().parse_args(
        ["run", "--config", str(path), "--input-topic", "flag-events", "--max-records", "5"]
    )
    settings = load_settings(
        args.config,
        environ={"STREAMER_KAFKA__INPUT_TOPIC": "env-events", "STREAMER_BATCH__MAX_IN_FLIGHT": "3"},
        overrides=overrides(args),
    )
    assert settings.kafka.input_topic == "flag-events"
    assert settings.batch.max_records == 5
    assert settings.batch.max_in_flight == 3
    assert settings.kafka.output_topic == "scores"

"""``streamer evaluate`` end to end on small files: the exact lines, the report, the exit codes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from streamer.cli import main
from streamer.core.labels.join import TASKS
from streamer.settings import LabelsSettings
from tests.unit.commands.test_cli import _isolated  # noqa: F401 - the same autouse isolation


def _output(
    key: str, partition: int, offset: int, score: float, model: str, version: str, at: str
) -> bytes:
    return orjson.dumps(
        {
            "key": key,
            "topic": "events",
            "partition": partition,
            "offset": offset,
            "score": score,
            "model": {"name": model, "version": version},
            "scored_at": f"2026-12-01T{at}Z",
        }
    )


CHAMPION = [
    _output("t1", 0, 0, 0.9, "demo", "1", "00:00:00.000"),
    _output("t2", 0, 1, 0.2, "demo", "1", "00:00:01.000"),
    _output("t3", 1, 0, 0.6, "demo", "1", "00:00:02.000"),
    _output("t4", 1, 1, 0.8, "demo", "1", "00:00:03.000"),
    b"not json",
]
CANDIDATE = [
    _output("t1", 0, 0, 0.7, "candidate", "2", "00:00:00.500"),
    _output("t2", 0, 1, 0.1, "candidate", "2", "00:00:01.500"),
    _output("t3", 1, 0, 0.3, "candidate", "2", "00:00:02.500"),
]
LABELS_CSV = """topic,partition,offset,label,labelled_at
events,1,0,1,2026-12-01T04:00:00Z
events,0,0,1,2026-12-01T01:00:00Z
events,0,1,0,2026-12-01T02:00:00Z
events,1,0,0,2026-12-01T03:00:00Z
events,9,9,1,2026-12-01T04:00:00Z
events,0,1,yes,2026-12-01T04:00:00Z
events,,1,1,2026-12-01T04:00:00Z
"""
CONFIG = """
[labels]
time_field = "labelled_at"

[[challenger]]
name = "candidate"
"""


def _files(tmp_path: Path, config: str = CONFIG) -> tuple[str, str, str, str]:
    champion, candidate = tmp_path / "predictions.jsonl", tmp_path / "candidate.jsonl"
    champion.write_bytes(b"\n".join(CHAMPION) + b"\n")
    candidate.write_bytes(b"\n".join(CANDIDATE) + b"\n")
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS_CSV)
    toml = tmp_path / "streamer.toml"
    toml.write_text(config)
    return str(champion), str(candidate), str(labels), str(toml)


def test_it_prints_each_models_metrics_and_the_challengers_deltas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, candidate, labels, toml = _files(tmp_path)
    report = tmp_path / "report.json"
    code = main(["evaluate", champion, candidate, labels, "-c", toml, "-o", str(report)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"read 8 outputs of {champion}, {candidate}: 7 predictions (rejected: malformed 1)",
        f"read 7 labels of {labels}: 3 joined "
        "(not joined: duplicate 1, missing_id 1, unmatched 1, wrong_type 1)",
        "unlabelled predictions: 1 within the horizon, 0 expired",
        "window: 3 joined records (at most 10,000), threshold 0.5",
        "model                 version  records  precision  recall  f1      "
        "roc_auc  pr_auc  log_loss  brier",
        "champion demo         1        3        0.5000     1.0000  0.6667  "
        "1.0000   1.0000  0.4149    0.1367",
        "challenger candidate  2        3        1.0000     1.0000  1.0000  "
        "1.0000   1.0000  0.2729    0.0633",
        "candidate 2 vs demo 1 on 3 records both scored: precision +0.5000, recall +0.0000, "
        "f1 +0.3333, roc_auc +0.0000, pr_auc +0.0000, log_loss -0.1420, brier -0.0733",
        "label latency over 3 labels: mean 7199s, p50 7199s, p95 10438.1s, max 10798s",
        f"wrote {report}",
    ]
    doc = orjson.loads(report.read_bytes())
    assert doc["labels"] == {
        "read": 7,
        "joined": 3,
        "rejected": {"duplicate": 1, "missing_id": 1, "unmatched": 1, "wrong_type": 1},
    }
    champion_metrics = doc["window"]["models"][0]
    assert champion_metrics["precision"] == 0.5
    assert champion_metrics["brier"] == (0.1**2 + 0.2**2 + 0.6**2) / 3
    assert [b["records"] for b in champion_metrics["calibration"]] == [
        0,
        1,
        0,
        0,
        0,
        1,
        0,
        0,
        1,
        0,
    ]  # an edge score falls below


def test_the_first_label_by_time_wins_not_the_first_in_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """events/1/0 has a label 1 at 04:00 (first in the file) and 0 at 03:00: 0 joins."""
    champion, candidate, labels, toml = _files(tmp_path)
    report = tmp_path / "report.json"
    assert main(["evaluate", champion, candidate, labels, "-c", toml, "-o", str(report)]) == 0
    capsys.readouterr()
    models = orjson.loads(report.read_bytes())["window"]["models"]
    assert models[0]["positives"] == 1


def test_a_short_horizon_and_a_regression_by_record_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_bytes(b"\n".join(CHAMPION[:4]) + b"\n")
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(
        b'{"key": "t1", "value": 1.5, "at": "2026-12-01T00:00:30Z"}\n'
        b'{"key": "t2", "value": -0.5, "at": "2026-12-01T00:00:31Z"}\n'
        b'{"key": "t3", "value": 2, "at": "2026-12-01T00:05:00Z"}\n'
    )
    toml = tmp_path / "streamer.toml"
    toml.write_text(
        '[labels]\nid_field = "$key"\nvalue_field = "value"\ntime_field = "at"\n'
        'task = "regression"\nhorizon_s = 60.0\n'
    )
    assert main(["evaluate", str(outputs), str(labels), "-c", str(toml)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"read 4 outputs of {outputs}: 4 predictions",
        f"read 3 labels of {labels}: 2 joined (not joined: past_horizon 1)",
        "unlabelled predictions: 0 within the horizon, 2 expired",
        "window: 2 joined records (at most 10,000), threshold 0.5",
        "model          version  records  mae     rmse",
        "champion demo  1        2        0.6500  0.6519",
        "label latency over 2 labels: mean 30s, p50 30s, p95 30s, max 30s",
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[labels]\nwindow_records = 0\n", "labels.window_records must be > 0, got 0"),
        (
            "[labels]\ntask = 'ranking'\n",
            "labels.task must be one of 'classification', 'regression'",
        ),
        ("[labels]\nid_field = '$offset'\n", "labels.id_field must be a field path or '$key'"),
        ("[labels]\nvalue_field = ''\n", "labels.value_field must name a field"),
        ("[labels]\ntime_field = '$timestamp'\n", "labels.time_field must be a field path"),
        ("[labels]\nhorizon_s = -1.0\n", "labels.horizon_s must be > 0, got -1.0"),
        ("[labels]\nwindo_records = 5\n", "unknown key labels.windo_records"),
        (
            "[kafka]\ninput_topic = 'events'\noutput_topic = 'scores'\n"
            "[labels]\ntopic = 'scores'\n",
            "labels.topic 'scores' must differ from the input, output",
        ),
        ("[labels]\nid_field = '$key'\n", "labels.id_field = '$key' reads the 'key' column"),
    ],
)
def test_a_bad_labels_setting_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    champion, _, labels, toml = _files(tmp_path, config)
    assert main(["evaluate", champion, labels, "-c", toml]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("streamer: config error: ")
    assert message in err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    champion, _, _, toml = _files(tmp_path)
    assert main(["evaluate", champion, str(tmp_path / "none.csv"), "-c", toml]) == 2
    assert (
        capsys.readouterr().err
        == f"streamer: config error: input file {tmp_path / 'none.csv'} does not exist\n"
    )


def test_the_task_choices_are_the_ones_the_join_reads() -> None:
    """settings.py keeps its own tuple: it must not import the join (and numpy) to validate."""
    (task,) = [f for f in dataclasses.fields(LabelsSettings) if f.name == "task"]
    assert task.metadata["choices"] == TASKS

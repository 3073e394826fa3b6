"""File mode (``score-file``) and ``fit-stats``: the actor pipeline over files, no Kafka."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from streamer.cli import main
from streamer.clients.file import jsonl_values
from streamer.core.stats import load_stats
from streamer.filemode import (
    default_rejects_path,
    detect_format,
    file_settings,
    render_progress,
    score_file,
)
from tests import model_zoo as zoo


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("filemode")
    zoo.save_joblib(zoo.estimator("logreg"), directory / "logreg.joblib")
    (directory / "config.toml").write_text(
        f'[model]\nkind = "sklearn"\npath = "{directory / "logreg.joblib"}"\n'
    )
    frame = zoo.records().copy()
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    frame = frame.astype(object)
    frame.loc[3, "mean radius"] = None  # an empty cell: missing_feature
    frame.loc[5, "mean texture"] = "abc"  # non_numeric_feature
    frame.to_csv(directory / "input.csv", index=False)
    with (directory / "input.jsonl").open("wb") as out:
        for value in zoo.record_values(zoo.records()[:300]):
            out.write(value + b"\n")
        out.write(b"\n")  # blank lines are not rows
        out.write(b"{not json\n")
    return directory


def offline(rows: pd.DataFrame) -> np.ndarray:
    return zoo.estimator("logreg").predict_proba(rows)[:, 1]


class TestScoreFile:
    def test_a_csv_file_gets_one_prediction_per_valid_row_and_the_rejects_with_reasons(
        self, workdir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = workdir / "predictions.csv"
        code = main(
            [
                "score-file",
                str(workdir / "input.csv"),
                "-o",
                str(out),
                "-c",
                str(workdir / "config.toml"),
                "--key-column",
                "id",
                "--max-records",
                "128",
            ]
        )
        assert code == 0
        printed = capsys.readouterr()
        assert "2,000 rows" in printed.out
        assert "missing_feature 1, non_numeric_feature 1" in printed.out
        assert "100.0%" in printed.err  # the progress line
        predictions = pd.read_csv(out)
        assert list(predictions.columns) == ["row", "key", "score", "model", "version"]
        assert len(predictions) == 1998
        assert predictions["row"].tolist() == [i for i in range(2000) if i not in (3, 5)]
        assert predictions["key"].tolist() == [f"r{i}" for i in predictions["row"]]
        assert set(predictions["model"]) == {"logreg"}
        expected = offline(zoo.records().iloc[predictions["row"].to_numpy()])
        np.testing.assert_allclose(predictions["score"].to_numpy(), expected, rtol=0, atol=1e-12)
        rejects = pd.read_csv(default_rejects_path(out))
        assert rejects[["row", "reason", "stage"]].to_numpy().tolist() == [
            [3, "missing_feature", "preprocess"],
            [5, "non_numeric_feature", "preprocess"],
        ]
        assert rejects["error"][1] == "feature 'mean texture' is the string 'abc', not a number"
        assert orjson.loads(rejects["record"][1])["id"] == "r5"

    def test_the_same_file_scores_bit_identically_whatever_the_batch_size(
        self, workdir: Path
    ) -> None:
        scores = []
        for size in (7, 2000):
            out = workdir / f"p{size}.csv"
            settings = file_settings(
                str(workdir / "config.toml"),
                workdir / "input.csv",
                out,
                workdir / f"r{size}.csv",
                {"batch.max_records": size},
                environ={},
            )
            report = score_file(
                settings, workdir / "input.csv", out, workdir / f"r{size}.csv", fmt="csv"
            )
            assert (report.exit_code, report.rows, report.predictions, report.rejects) == (
                0,
                2000,
                1998,
                2,
            )
            scores.append(pd.read_csv(out, dtype={"score": str})["score"].tolist())
        assert scores[0] == scores[1]

    def test_json_lines_in_and_out(self, workdir: Path) -> None:
        out = workdir / "predictions.jsonl"
        rejects = workdir / "rejects.jsonl"
        code = main(
            [
                "score-file",
                str(workdir / "input.jsonl"),
                "-o",
                str(out),
                "--rejects",
                str(rejects),
                "-c",
                str(workdir / "config.toml"),
                "--no-progress",
            ]
        )
        assert code == 0
        lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert [doc["offset"] for doc in lines] == list(range(300))
        expected = offline(zoo.records()[:300])
        assert [doc["score"] for doc in lines] == pytest.approx(expected.tolist(), abs=1e-12)
        assert lines[0]["model"]["name"] == "logreg"
        (reject,) = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
        assert (reject["row"], reject["reason"]) == (301, "invalid_json")

    def test_a_missing_model_exits_2_with_the_load_error(
        self, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = main(
            [
                "score-file",
                str(workdir / "input.csv"),
                "-o",
                str(tmp_path / "p.csv"),
                "-c",
                str(workdir / "config.toml"),
                "--model-path",
                str(tmp_path / "gone.joblib"),
            ]
        )
        assert code == 2
        assert capsys.readouterr().err.strip() == (
            f"streamer: model error: cannot read model.path={tmp_path / 'gone.joblib'}: "
            "No such file or directory"
        )

    def test_a_missing_input_file_exits_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = main(["score-file", str(tmp_path / "none.csv"), "-o", str(tmp_path / "p.csv")])
        assert code == 2
        assert "input file" in capsys.readouterr().err


class TestReading:
    def test_formats_come_from_the_names(self, tmp_path: Path) -> None:
        assert detect_format("a.CSV") == "csv"
        assert detect_format("a.ndjson") == "jsonl"
        assert default_rejects_path(tmp_path / "p.csv") == tmp_path / "p.rejects.csv"

    def test_the_progress_line(self) -> None:
        line = render_progress(500, 50, 100, 3, 2.0, width=10)
        assert line == "[#####.....]  50.0%  500 rows  250 rows/s  rejected 3"


class TestFitStats:
    def test_it_writes_the_population_mean_and_std_of_every_numeric_column(
        self, workdir: Path, tmp_path: Path
    ) -> None:
        out = tmp_path / "stats.json"
        code = main(
            ["fit-stats", str(workdir / "input.csv"), "-o", str(out), "--exclude", "id",
             "--chunk-rows", "333"]
        )  # fmt: skip
        assert code == 0
        stats = load_stats(out)
        assert list(stats.names) == zoo.feature_names()
        frame = pd.read_csv(workdir / "input.csv")
        column = pd.to_numeric(frame["mean texture"], errors="coerce")
        assert stats.count.tolist()[:2] == [1999, 1999]
        np.testing.assert_allclose(stats.mean[1], column.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats.std[1], column.std(ddof=0), rtol=1e-10)

    def test_an_unknown_feature_column_exits_2(
        self, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = main(
            ["fit-stats", str(workdir / "input.csv"), "-o", str(tmp_path / "s.json"),
             "--features", "mean radius,colour"]
        )  # fmt: skip
        assert code == 2
        assert "has no column colour" in capsys.readouterr().err


def test_file_mode_reads_no_labels_topic(tmp_path: Path) -> None:
    """A config shared with the daemon may name a labels topic: a file has none to read."""
    config = tmp_path / "streamer.toml"
    config.write_text(
        '[kafka]\ninput_topic = "tx"\noutput_topic = "out"\n[labels]\ntopic = "tx.l"\n'
    )
    settings = file_settings(str(config), "in.csv", "out.csv", "rejects.csv", environ={})
    assert settings.labels.topic == ""


def test_a_jsonl_line_keeps_its_key_beside_a_number_beyond_a_double() -> None:
    # orjson refuses the whole line for 1e400; the live path reads it as inf
    # (loads_json), so the line is keyed as a Kafka record of the same bytes would be.
    lines = io.BytesIO(b'{"card": "c7", "note": 1e400}\n\n{"card": 12}\nnot json\n')
    assert list(jsonl_values(lines, "card")) == [
        (0, b"c7", b'{"card": "c7", "note": 1e400}'),
        (2, b"12", b'{"card": 12}'),
        (3, None, b"not json"),
    ]

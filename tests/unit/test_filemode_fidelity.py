"""``streamer score-file`` scores like the user's own offline call, at every batch size.

The fidelity matrix of tests/unit/core/models/test_fidelity.py, through the
whole actor pipeline on the file backend: a JSON Lines file of 5,000 events
whose feature names have spaces, scored at batch sizes 1 to 5,000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from streamer.filemode import file_settings, score_file
from tests import model_zoo as zoo

EVENTS = 5000
SIZES = (1, 7, 64, 1000, 5000)
SMALL_BATCH_EVENTS = 700
"""Batches of 1 and 7 read a 700-event file: the pipeline's cost per batch dominates there."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("filemode-fidelity")
    events = zoo.record_values(zoo.records(EVENTS))
    for name, count in (("all", EVENTS), ("head", SMALL_BATCH_EVENTS)):
        (directory / f"{name}.jsonl").write_bytes(b"\n".join(events[:count]) + b"\n")
    zoo.save_joblib(zoo.estimator("logreg"), directory / "logreg.joblib")
    zoo.xgboost_file("binary", directory)
    return directory


def _offline(kind: str, workdir: Path, frame: pd.DataFrame) -> np.ndarray:
    names = zoo.feature_names()
    if kind == "sklearn":
        return zoo.estimator("logreg").predict_proba(frame[names])[:, 1]
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(workdir / "xgb-binary.json"))
    return np.asarray(booster.predict(xgb.DMatrix(frame[names])), np.float64)


@pytest.mark.parametrize(
    ("kind", "file"), [("sklearn", "logreg.joblib"), ("xgboost", "xgb-binary.json")]
)
def test_score_file_equals_the_offline_dataframe_call_at_every_batch_size(
    kind: str, file: str, workdir: Path
) -> None:
    config = workdir / f"{kind}.toml"
    config.write_text(f'[model]\nkind = "{kind}"\npath = "{workdir / file}"\n')
    lines = (workdir / "all.jsonl").read_bytes().splitlines()
    expected = _offline(kind, workdir, pd.DataFrame([orjson.loads(v) for v in lines]))
    for size in SIZES:
        source = workdir / ("head.jsonl" if size < 64 else "all.jsonl")
        out, rejects = workdir / f"{kind}-{size}.jsonl", workdir / f"{kind}-{size}-r.jsonl"
        settings = file_settings(
            str(config), source, out, rejects, {"batch.max_records": size}, environ={}
        )
        report = score_file(settings, source, out, rejects, fmt="jsonl")
        assert (report.exit_code, report.rejects) == (0, 0)
        docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        got = np.array([d["score"] for d in sorted(docs, key=lambda d: d["offset"])])
        assert len(got) == report.rows
        equal = int(np.sum(got == expected[: len(got)]))
        assert equal == len(got), f"batch size {size}: {equal}/{len(got)} bit-identical"

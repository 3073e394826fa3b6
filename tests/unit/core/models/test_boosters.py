"""``kind = "xgboost"`` and ``kind = "lightgbm"``: native booster files, no pickle.

Small real boosters are trained for each objective and saved in the library's
own format; the streamed outputs must equal ``Booster.predict`` on a DataFrame
of the same events, and the reason codes the library's own TreeSHAP
contributions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from streamer.core.models import ModelOptions, load_model
from streamer.core.scoring import explain
from streamer.errors import ModelLoadError
from tests import model_zoo as zoo
from tests.unit.core.models.test_fidelity import SIZES

NAMES = tuple(zoo.feature_names())
EXPECTED_OUTPUTS = {
    "binary": ("score",),
    "multiclass": ("proba_0", "proba_1", "proba_2"),
    "regression": ("score",),
}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boosters")


@pytest.fixture(scope="module")
def events() -> list[bytes]:
    return zoo.record_values(zoo.records(5000))


@pytest.fixture(scope="module")
def frame(events: list[bytes]) -> pd.DataFrame:
    return pd.DataFrame([orjson.loads(v) for v in events])


def _xgboost_offline(path: Path, frame: pd.DataFrame, *, contribs: bool = False) -> np.ndarray:
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(path))
    return np.asarray(
        booster.predict(xgb.DMatrix(frame[list(NAMES)]), pred_contribs=contribs), np.float64
    )


def _lightgbm_offline(path: Path, frame: pd.DataFrame, *, contribs: bool = False) -> np.ndarray:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(path))
    return np.asarray(booster.predict(frame[list(NAMES)], pred_contrib=contribs), np.float64)


@pytest.mark.parametrize("objective", zoo.OBJECTIVES)
@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_every_batch_size_gives_booster_predict_bit_for_bit(
    library: str, objective: str, directory: Path, events: list[bytes], frame: pd.DataFrame
) -> None:
    if library == "xgboost":
        path = zoo.xgboost_file(objective, directory)
        expected = _xgboost_offline(path, frame)
        options = ModelOptions()
    else:
        path = zoo.lightgbm_file(objective, directory)
        expected = _lightgbm_offline(path, frame)
        options = ModelOptions(features=NAMES)  # LightGBM stored "mean_radius"
    model = load_model(library, str(path), options)
    assert model.spec.names == NAMES
    assert model.output_names == EXPECTED_OUTPUTS[objective]
    assert model.watch_paths == (path,)
    values: list[bytes | None] = list(events)
    for size in SIZES:
        subset = values[:700] if size < 64 else values
        got = zoo.stream_scores(model, subset, size)
        assert np.array_equal(got, expected[: len(subset)]), f"batch size {size}"


def test_an_xgboost_ubj_file_loads_like_json(directory: Path, frame: pd.DataFrame) -> None:
    path = zoo.xgboost_file("binary", directory, ".ubj")
    model = load_model("xgboost", str(path))
    matrix = frame[list(NAMES)].to_numpy()[:100]
    assert np.array_equal(model.predict(matrix), _xgboost_offline(path, frame)[:100])


@pytest.mark.parametrize("objective", zoo.OBJECTIVES)
@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_reason_codes_are_the_librarys_own_contributions(
    library: str, objective: str, directory: Path, frame: pd.DataFrame
) -> None:
    rows = frame.iloc[:200]
    if library == "xgboost":
        path = zoo.xgboost_file(objective, directory)
        contribs = _xgboost_offline(path, rows, contribs=True)
        scores = _xgboost_offline(path, rows)
        options = ModelOptions(explain_top_k=3)
    else:
        path = zoo.lightgbm_file(objective, directory)
        contribs = _lightgbm_offline(path, rows, contribs=True)
        scores = _lightgbm_offline(path, rows)
        options = ModelOptions(explain_top_k=3, features=NAMES)
        if objective == "multiclass":
            contribs = contribs.reshape(len(rows), 3, len(NAMES) + 1)
    if objective == "multiclass":  # the likeliest class's contributions
        contribs = contribs[np.arange(len(rows)), np.argmax(scores, axis=1)]
    per_feature = contribs[:, :-1]
    model = load_model(library, str(path), options)
    reasons = [orjson.loads(r) for r in explain(model, rows[list(NAMES)].to_numpy())]
    for row, got in enumerate(reasons):
        order = np.argsort(-np.abs(per_feature[row]), kind="stable")[:3]
        assert got == [
            {"feature": NAMES[col], "contribution": float(per_feature[row, col])} for col in order
        ]


def test_a_file_that_is_not_a_booster_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text('{"not": "a booster"}')
    with pytest.raises(ModelLoadError, match=r"model.path=.* is not an XGBoost booster"):
        load_model("xgboost", str(path))
    text = tmp_path / "model.txt"
    text.write_text("hello\n")
    with pytest.raises(ModelLoadError, match=r"model.path=.* is not a LightGBM text model"):
        load_model("lightgbm", str(text))


def test_configured_features_must_match_the_boosters(directory: Path) -> None:
    path = zoo.xgboost_file("binary", directory)
    with pytest.raises(ModelLoadError, match=r"preprocess\.features does not match"):
        load_model("xgboost", str(path), ModelOptions(features=("amount", *NAMES[1:])))

"""Native XGBoost and LightGBM boosters through the real broker, with reason codes.

2,000 events are streamed; each output must equal ``Booster.predict`` on a
DataFrame of the same events, and its ``reasons`` the library's own TreeSHAP
contributions (the three largest by magnitude).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import model_zoo as zoo

from .helpers import Cluster, PipelineStarter
from .test_models import stream

pytestmark = pytest.mark.integration

NAMES = zoo.feature_names()


def _expected_reasons(contributions: np.ndarray) -> list[list[dict[str, object]]]:
    per_feature = contributions[:, :-1]
    return [
        [
            {"feature": NAMES[col], "contribution": float(row[col])}
            for col in np.argsort(-np.abs(row), kind="stable")[:3]
        ]
        for row in per_feature
    ]


def test_an_xgboost_booster_streams_booster_predict_and_its_treeshap_reasons(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    import xgboost as xgb

    path = zoo.xgboost_file("binary", tmp_path)
    outputs = stream(
        cluster, start_pipeline, {"kind": "xgboost", "path": str(path), "explain_top_k": 3}
    )
    booster = xgb.Booster(model_file=str(path))
    matrix = xgb.DMatrix(zoo.records()[NAMES])
    scores = np.asarray(booster.predict(matrix), np.float64)
    reasons = _expected_reasons(np.asarray(booster.predict(matrix, pred_contribs=True), np.float64))
    for i, doc in enumerate(outputs):
        assert doc["score"] == scores[i]
        assert doc["reasons"] == reasons[i]


def test_a_lightgbm_multiclass_booster_streams_one_probability_per_class(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    import lightgbm as lgb

    path = zoo.lightgbm_file("multiclass", tmp_path)
    outputs = stream(
        cluster,
        start_pipeline,
        {"kind": "lightgbm", "path": str(path)},
        preprocess={"features": ",".join(NAMES)},
    )
    expected = lgb.Booster(model_file=str(path)).predict(zoo.records()[NAMES])
    for i, doc in enumerate(outputs):
        assert [doc["proba_0"], doc["proba_1"], doc["proba_2"]] == expected[i].tolist()
        assert "reasons" not in doc


def test_a_lightgbm_booster_reads_its_underscored_names_from_the_original_keys_unconfigured(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    import lightgbm as lgb

    assert "mean radius" in NAMES  # LightGBM stored it as "mean_radius"
    path = zoo.lightgbm_file("binary", tmp_path)
    booster = lgb.Booster(model_file=str(path))
    assert "mean_radius" in booster.feature_name()

    outputs = stream(cluster, start_pipeline, {"kind": "lightgbm", "path": str(path)})

    expected = booster.predict(zoo.records()[NAMES])
    assert [doc["score"] for doc in outputs] == expected.tolist()

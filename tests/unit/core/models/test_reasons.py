"""Reason codes (``model.explain_top_k``): the k features that pushed each score most."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.core.models import ModelOptions, load_model
from streamer.core.models.reasons import top_reasons
from streamer.core.output import encode_predictions
from streamer.core.scoring import explain
from streamer.errors import ModelLoadError
from tests import model_zoo as zoo


def test_the_largest_contributions_by_magnitude_come_first_and_ties_keep_column_order() -> None:
    contributions = np.array([[0.5, -2.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    first, second = (orjson.loads(r) for r in top_reasons(contributions, "abcd", 3))
    assert first == [
        {"feature": "b", "contribution": -2.0},
        {"feature": "d", "contribution": 1.0},
        {"feature": "a", "contribution": 0.5},
    ]
    assert [r["feature"] for r in second] == ["a", "b", "c"]
    assert top_reasons(contributions, "abcd", 9)[0].count(b"feature") == 4


def test_linear_reasons_are_weight_times_standardized_value(tmp_path: Path) -> None:
    zoo.linear_model(tmp_path)
    model = load_model("linear", str(tmp_path / "linear.json"), ModelOptions(explain_top_k=2))
    standardized = np.array([[1.0, 2.0, -4.0, 0.5, 0.1, 3.0]])
    # weights 0.8, -0.3, 0.25, 1.1, -0.7, 0.05 -> 0.8, -0.6, -1.0, 0.55, -0.07, 0.15
    assert orjson.loads(explain(model, standardized)[0]) == [
        {"feature": model.spec.names[2], "contribution": -4.0 * 0.25},
        {"feature": model.spec.names[0], "contribution": 1.0 * 0.8},
    ]


def test_a_scaler_and_logistic_regression_pipeline_explains_with_its_own_scaler(
    tmp_path: Path,
) -> None:
    estimator = zoo.estimator("logreg")
    path = zoo.save_joblib(estimator, tmp_path / "logreg.joblib")
    model = load_model("sklearn", str(path), ModelOptions(explain_top_k=3))
    frame = zoo.records().iloc[:50]
    scaler, logreg = estimator.steps[0][1], estimator.steps[-1][1]
    expected = scaler.transform(frame) * logreg.coef_[0]
    for row, got in enumerate(explain(model, frame.to_numpy())):
        order = np.argsort(-np.abs(expected[row]), kind="stable")[:3]
        names = zoo.feature_names()
        assert orjson.loads(got) == [
            {"feature": names[c], "contribution": float(expected[row, c])} for c in order
        ]


def test_a_model_that_cannot_explain_is_refused_when_reasons_are_asked(tmp_path: Path) -> None:
    path = zoo.save_joblib(zoo.estimator("forest"), tmp_path / "forest.joblib")
    with pytest.raises(ModelLoadError, match=r"model.explain_top_k=3: .*set model.explain_top_k"):
        load_model("sklearn", str(path), ModelOptions(explain_top_k=3))
    assert explain(load_model("sklearn", str(path)), np.zeros((2, 30))) == ()


def test_each_output_carries_its_rows_reasons() -> None:
    encoded = encode_predictions(
        topic="t",
        partition=1,
        offsets=[10, 11, 12],
        keys=[b"a", None, b"c"],
        rows=np.array([0, 2]),
        predictions=np.array([0.25, 0.75]),
        output_names=("score",),
        model={"name": "m", "version": "1"},
        scored_at="now",
        reasons=[b'[{"feature":"x","contribution":1.5}]', b"[]"],
    )
    assert [orjson.loads(e) for e in encoded] == [
        {
            "key": "a",
            "topic": "t",
            "partition": 1,
            "offset": 10,
            "score": 0.25,
            "reasons": [{"feature": "x", "contribution": 1.5}],
            "model": {"name": "m", "version": "1"},
            "scored_at": "now",
        },
        {
            "key": "c",
            "topic": "t",
            "partition": 1,
            "offset": 12,
            "score": 0.75,
            "reasons": [],
            "model": {"name": "m", "version": "1"},
            "scored_at": "now",
        },
    ]

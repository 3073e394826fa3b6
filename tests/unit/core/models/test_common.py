"""Batch invariance: a record's prediction never depends on the records around it.

The same 2,000 records are prepared and scored in batches of 1, 7, 64 and
2,000, by the same code the actors run (``prepare_source`` then
``score_isolating_failures``), and the outputs must be bit-identical to each
other and to the offline prediction: the loaded model's ``predict`` on the
whole matrix at once. For scikit-learn, the offline prediction is also checked
against the estimator's own ``predict_proba``, exactly (test_fidelity.py
compares every kind with the user's own offline call).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.core.models import Model, ModelOptions, load_model
from streamer.core.preparation import prepare_source
from streamer.settings import PreprocessSettings
from tests import model_zoo as zoo

SIZES = (1, 7, 64, 2000)
SETTINGS = PreprocessSettings()


def offline(model: Model, values: list[bytes | None]) -> np.ndarray:
    prepared = prepare_source(zoo.source_batch(values, 0), model.spec, SETTINGS, 1 << 20)
    return model.predict(prepared.features)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("invariance")


def linear_model(directory: Path) -> Model:
    frame, _ = zoo.dataset()
    names = zoo.feature_names()[:6]
    doc = {
        "features": names,
        "mean": frame[names].mean().tolist(),
        "std": frame[names].std(ddof=0).tolist(),
        "weights": [0.8, -0.3, 0.25, 1.1, -0.7, 0.05],
        "bias": -0.4,
    }
    path = directory / "linear.json"
    path.write_bytes(orjson.dumps(doc))
    return load_model("linear", str(path))


def build(kind: str, directory: Path) -> Model:
    features = ModelOptions(features=tuple(zoo.feature_names()))
    if kind == "linear":
        return linear_model(directory)
    if kind.startswith("sklearn-"):
        name = kind.removeprefix("sklearn-")
        path = zoo.save_joblib(zoo.estimator(name), directory / f"{name}.joblib")
        return load_model("sklearn", str(path))
    if kind.startswith("onnx-"):
        name = kind.removeprefix("onnx-")
        path = directory / f"{name}.onnx"
        path.write_bytes(zoo.onnx_bytes(name))
        return load_model("onnx", str(path), features)
    path = zoo.write_python_model(directory)
    return load_model("python", f"{path}:score")


KINDS = ["linear", "sklearn-logreg", "sklearn-forest", "onnx-logreg", "onnx-forest", "python"]


@pytest.mark.parametrize("kind", KINDS)
def test_batches_of_1_7_64_and_2000_give_bit_identical_offline_predictions(
    kind: str, directory: Path
) -> None:
    model = build(kind, directory)
    values: list[bytes | None] = list(zoo.record_values())
    expected = offline(model, values)
    assert expected.shape == (len(values),)
    for size in SIZES:
        # A 100-tree forest costs ~6 ms per call whatever the rows: size 1 on a slice.
        subset = values[:250] if kind == "sklearn-forest" and size == 1 else values
        got = zoo.stream_scores(model, subset, size)
        assert np.array_equal(got, expected[: len(subset)]), f"batch size {size} changed a score"


@pytest.mark.parametrize("name", ["logreg", "forest"])
def test_the_offline_prediction_is_sklearns_predict_proba(name: str, directory: Path) -> None:
    model = build(f"sklearn-{name}", directory)
    values: list[bytes | None] = list(zoo.record_values())
    expected = zoo.estimator(name).predict_proba(zoo.records())[:, 1]
    # Exact for both: the chunks are column-major, as np.asarray(DataFrame) is.
    assert np.array_equal(offline(model, values), expected)


def test_without_fixed_chunks_a_blas_model_may_depend_on_the_batch_size(directory: Path) -> None:
    # Documents why chunk_rows exists: scikit-learn's own predict_proba on batches
    # of 1 differs in the last bits from one call on all rows (on this machine's BLAS).
    estimator = zoo.estimator("logreg")
    frame = zoo.records()
    whole = estimator.predict_proba(frame)[:, 1]
    ones = np.concatenate([estimator.predict_proba(frame[i : i + 1])[:, 1] for i in range(200)])
    np.testing.assert_allclose(ones, whole[:200], rtol=0, atol=1e-12)
    if np.array_equal(ones, whole[:200]):
        pytest.skip("this BLAS happens to sum the same way for every batch size")

"""Loading the linear model and scoring with it."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamer.core.models import load_model
from streamer.core.models.linear import DEMO_MODEL, LinearModel, load_linear
from streamer.errors import ModelLoadError

VALID: dict[str, Any] = {
    "name": "tiny",
    "version": "7",
    "features": ["a", "b"],
    "mean": [1.0, 2.0],
    "std": [0.5, 4.0],
    "weights": [0.25, -1.5],
    "bias": 0.125,
}


def write_model(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "model.json"
    path.write_bytes(orjson.dumps(doc))
    return path


@pytest.fixture(scope="module")
def demo() -> LinearModel:
    return load_linear(None)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    rng = np.random.default_rng(20240601)
    x = rng.normal(0.0, 2.0, size=(2000, 5))
    x[::97] *= 40  # a few extreme logits, saturating the sigmoid
    return x


class TestDemoModel:
    def test_the_packaged_demo_model_loads(self, demo: LinearModel) -> None:
        raw = resources.files("streamer.core.models").joinpath(DEMO_MODEL).read_bytes()
        doc = orjson.loads(raw)
        assert demo.name == "demo-fraud"
        assert demo.version == hashlib.sha256(raw).hexdigest()[:12]
        assert demo.spec.names == (
            "amount",
            "distance_from_home_km",
            "transactions_last_hour",
            "account_age_days",
            "merchant_risk",
        )
        assert demo.spec.mean.tolist() == doc["mean"]
        assert demo.spec.std.tolist() == doc["std"]
        assert demo.weights.tolist() == doc["weights"]
        assert demo.bias == doc["bias"]
        assert demo.output_names == ("score",)

    @pytest.mark.parametrize("path", [None, ""])
    def test_load_model_with_no_path_loads_the_demo_model(
        self, path: str | None, demo: LinearModel
    ) -> None:
        model = load_model("linear", path)
        assert (model.name, model.version) == (demo.name, demo.version)

    def test_predict_equals_the_offline_reference(
        self, demo: LinearModel, rows: np.ndarray
    ) -> None:
        scores = demo.predict(rows)
        reference = np.array([demo.predict_one(row) for row in rows.tolist()])
        assert scores.shape == (2000,)
        assert scores.dtype == np.float64
        np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-12)

    def test_predict_is_bit_identical_whatever_the_batch_size(
        self, demo: LinearModel, rows: np.ndarray
    ) -> None:
        whole = demo.predict(rows)
        for size in (1, 7, 64, 2000):
            parts = np.concatenate(
                [demo.predict(rows[i : i + size]) for i in range(0, len(rows), size)]
            )
            assert np.array_equal(parts, whole), f"batch size {size} changed a score"

    def test_predict_of_no_rows_is_empty(self, demo: LinearModel) -> None:
        assert demo.predict(np.empty((0, 5))).shape == (0,)

    def test_a_zero_row_scores_the_sigmoid_of_the_bias(self, demo: LinearModel) -> None:
        expected = 1.0 / (1.0 + np.exp(4.2))
        assert demo.predict(np.zeros((1, 5))).tolist() == [expected]


class TestLoadingAFile:
    def test_a_valid_file_loads_with_its_name_and_version(self, tmp_path: Path) -> None:
        model = load_linear(write_model(tmp_path, VALID))
        assert (model.name, model.version) == ("tiny", "7")
        assert model.spec.names == ("a", "b")
        assert model.predict(np.array([[2.0, 0.0]])).tolist() == [model.predict_one([2.0, 0.0])]

    def test_a_file_without_name_or_version_gets_the_file_stem_and_a_content_hash(
        self, tmp_path: Path
    ) -> None:
        doc = {k: v for k, v in VALID.items() if k not in ("name", "version")}
        path = write_model(tmp_path, doc)
        model = load_linear(path)
        assert model.name == "model"
        assert model.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    def test_a_missing_file_names_the_path(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.json"
        with pytest.raises(ModelLoadError) as info:
            load_linear(path)
        assert str(info.value) == (
            f"model error: cannot read model.path={path}: No such file or directory"
        )

    def test_a_file_that_is_not_json_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "model.json"
        path.write_text("{not json")
        with pytest.raises(
            ModelLoadError, match=re.escape(f"model error: {path} is not valid JSON: ")
        ):
            load_linear(path)

    @pytest.mark.parametrize("doc", [[1, 2], "text", 3])
    def test_a_file_that_is_not_an_object_is_named(self, tmp_path: Path, doc: object) -> None:
        path = write_model(tmp_path, doc)
        with pytest.raises(ModelLoadError) as info:
            load_linear(path)
        assert str(info.value) == f"model error: {path} must hold a JSON object"

    @pytest.mark.parametrize("key", ["mean", "std", "weights"])
    def test_a_vector_of_the_wrong_length_is_named(self, tmp_path: Path, key: str) -> None:
        path = write_model(tmp_path, {**VALID, key: [1.0, 2.0, 3.0]})
        with pytest.raises(ModelLoadError) as info:
            load_linear(path)
        assert str(info.value) == (
            f"model error: {path}: {key!r} must be a list of 2 numbers, one per feature"
        )

    def test_a_vector_that_is_not_a_list_is_named(self, tmp_path: Path) -> None:
        path = write_model(tmp_path, {**VALID, "weights": 1.0})
        with pytest.raises(ModelLoadError, match="'weights' must be a list of 2 numbers"):
            load_linear(path)

    @pytest.mark.parametrize("key", ["features", "mean", "std", "weights", "bias"])
    def test_a_missing_field_is_named(self, tmp_path: Path, key: str) -> None:
        path = write_model(tmp_path, {k: v for k, v in VALID.items() if k != key})
        with pytest.raises(ModelLoadError) as info:
            load_linear(path)
        assert str(info.value) == (
            f"model error: {path} has no {key!r} field; "
            "a linear model needs features, mean, std, weights and bias"
        )

    @pytest.mark.parametrize("std", [0.0, -0.5])
    def test_a_non_positive_std_is_refused(self, tmp_path: Path, std: float) -> None:
        path = write_model(tmp_path, {**VALID, "std": [1.0, std]})
        with pytest.raises(ModelLoadError) as info:
            load_linear(path)
        assert str(info.value) == (
            f"model error: {path}: every fitted std must be a positive finite number"
        )

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("mean", ["x", 2.0]),
            ("weights", [None, 1.0]),
            ("bias", "high"),
            ("bias", [0.5]),
            ("features", 2),
        ],
    )
    def test_a_non_numeric_or_malformed_value_raises_model_load_error_naming_it(
        self, tmp_path: Path, field: str, value: object
    ) -> None:
        path = write_model(tmp_path, {**VALID, field: value})
        with pytest.raises(ModelLoadError, match=re.escape(f"model error: {path}")):
            load_linear(path)

"""The ``python`` model kind: a callable that takes a DataFrame."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamer.core.models import ModelOptions, load_model
from streamer.errors import ModelLoadError
from tests import model_zoo as zoo


@pytest.fixture
def module_file(tmp_path: Path) -> Path:
    return zoo.write_python_model(tmp_path)


def error_of(reference: str, **options: object) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model("python", reference, ModelOptions(**options))  # type: ignore[arg-type]
    return str(info.value)


def offline(frame: pd.DataFrame) -> np.ndarray:
    z = -0.9 * frame["mean radius"] - 0.4 * frame["mean texture"] + 0.3
    return (1.0 / (1.0 + np.exp(-z))).to_numpy()


class TestLoading:
    def test_a_file_callable_with_a_features_attribute(self, module_file: Path) -> None:
        model = load_model("python", f"{module_file}:score")
        assert model.spec.names == ("mean radius", "mean texture")
        assert (model.name, model.output_names) == ("score", ("score",))
        frame = zoo.records()[["mean radius", "mean texture"]]
        assert np.array_equal(model.predict(frame.to_numpy()), offline(frame))

    def test_a_module_callable_is_imported_by_name(
        self, module_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.syspath_prepend(str(module_file.parent))
        model = load_model("python", "pymodel:score")
        assert model.output_names == ("score",)
        assert "pymodel" not in sys.modules  # loaded as a private copy

    def test_a_dataframe_result_gives_one_field_per_column(self, module_file: Path) -> None:
        model = load_model(
            "python", f"{module_file}:both", ModelOptions(features=("mean radius", "mean texture"))
        )
        assert model.output_names == ("low", "high")
        rows = np.array([[2.0, 3.0]])
        assert model.predict(rows).tolist() == [[1.0, 6.0]]

    def test_the_version_is_a_hash_of_the_source(self, module_file: Path) -> None:
        import hashlib

        model = load_model("python", f"{module_file}:score")
        assert model.version == hashlib.sha256(module_file.read_bytes()).hexdigest()[:12]


class TestErrors:
    def test_a_reference_without_a_callable(self) -> None:
        assert error_of("pkg.module") == (
            "model error: model.path='pkg.module' must be 'package.module:callable' or "
            "'path/to/file.py:callable' for model.kind='python'"
        )

    def test_a_module_that_does_not_exist(self) -> None:
        assert error_of("no_such_module_xyz:score") == (
            "model error: cannot import no_such_module_xyz "
            "(model.path=no_such_module_xyz:score): no such module"
        )

    def test_a_file_that_does_not_exist(self, tmp_path: Path) -> None:
        path = tmp_path / "gone.py"
        assert error_of(f"{path}:score") == (
            f"model error: model.path={path}:score: {path} does not exist"
        )

    def test_a_module_that_raises_on_import(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.py"
        path.write_text("raise RuntimeError('no weights here')\n")
        assert error_of(f"{path}:score") == (
            f"model error: cannot import {path} (model.path={path}:score): "
            "RuntimeError: no weights here"
        )

    def test_a_missing_attribute(self, module_file: Path) -> None:
        assert error_of(f"{module_file}:nope") == (
            f"model error: model.path={module_file}:nope: {module_file} has no attribute 'nope'"
        )

    def test_an_attribute_that_is_not_callable(self, module_file: Path) -> None:
        assert error_of(f"{module_file}:features") == (
            f"model error: model.path={module_file}:features: features is a list, not a callable"
        )

    def test_no_features_anywhere(self, module_file: Path) -> None:
        assert error_of(f"{module_file}:both") == (
            f"model error: model.path={module_file}:both has no feature names; set "
            "preprocess.features (comma-separated, in column order) or preprocess.stats_path"
        )

    def test_a_callable_that_fails_its_test_prediction(self, module_file: Path) -> None:
        assert error_of(f"{module_file}:score", features=("x", "y")) == (
            f"model error: model.path={module_file}:score: preprocess.features does not match "
            "score.features (missing: mean radius, mean texture; unexpected: x, y)"
        )
        message = error_of(f"{module_file}:both", features=("a", "b"))
        assert message == (
            f"model error: model.path={module_file}:both: a test prediction on one row failed: "
            "KeyError: 'mean radius'"
        )

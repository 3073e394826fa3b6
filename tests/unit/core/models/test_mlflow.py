"""``kind = "mlflow"``: local model directories and a local (SQLite) model registry.

No server here: the registry is a SQLite file, which MLflow's client reads
directly. tests/integration/test_mlflow_registry.py runs a real ``mlflow server``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from streamer.core.models import ModelOptions, load_model
from streamer.core.models.common import ChunkedModel
from streamer.errors import ModelLoadError
from tests import model_zoo as zoo
from tests.unit.core.models.test_fidelity import SIZES

mlflow = pytest.importorskip("mlflow")

NAMES = tuple(zoo.feature_names())
# Declared, so that saving a model does not infer them in a subprocess (~5 s a save).
REQUIREMENTS = ["scikit-learn", "xgboost", "cloudpickle"]


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.DataFrame([orjson.loads(v) for v in zoo.record_values(zoo.records(5000))])


def _signature() -> Any:
    from mlflow.models import infer_signature

    train, _ = zoo.dataset()
    return infer_signature(train.iloc[:5])


@pytest.fixture(scope="module")
def sklearn_dir(directory: Path) -> Path:
    import mlflow.sklearn

    path = directory / "logreg"
    mlflow.sklearn.save_model(
        zoo.estimator("logreg"), str(path), signature=_signature(), pip_requirements=REQUIREMENTS
    )
    return path


class _Doubler(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return pd.DataFrame(
            {"low": model_input["mean radius"] * 0.5, "high": model_input["mean texture"] * 2.0}
        )


def test_a_local_sklearn_model_scores_like_its_own_predict_proba(
    sklearn_dir: Path, frame: pd.DataFrame
) -> None:
    model = load_model("mlflow", str(sklearn_dir))
    assert isinstance(model, ChunkedModel)
    assert (model.name, model.kind, model.spec.names) == ("logreg", "sklearn", NAMES)
    assert model.watch_paths == (sklearn_dir / "model.skops",)  # mlflow 3 saves with skops
    import mlflow.sklearn

    expected = mlflow.sklearn.load_model(str(sklearn_dir)).predict_proba(frame[list(NAMES)])[:, 1]
    values: list[bytes | None] = list(zoo.record_values(zoo.records(5000)))
    for size in SIZES:
        subset = values[:700] if size < 64 else values
        assert np.array_equal(zoo.stream_scores(model, subset, size), expected[: len(subset)]), size


def test_a_pyfunc_model_writes_one_field_per_column_equal_to_its_predict(
    directory: Path, frame: pd.DataFrame
) -> None:
    from mlflow.models import infer_signature

    path = directory / "pyfunc"
    inputs = frame[["mean radius", "mean texture"]].iloc[:5]
    mlflow.pyfunc.save_model(
        str(path),
        python_model=_Doubler(),
        signature=infer_signature(inputs),
        pip_requirements=REQUIREMENTS,
    )
    model = load_model("mlflow", str(path))
    assert model.output_names == ("low", "high")
    expected = mlflow.pyfunc.load_model(str(path)).predict(frame[["mean radius", "mean texture"]])
    got = model.predict(frame[["mean radius", "mean texture"]].to_numpy())
    assert np.array_equal(got, expected.to_numpy())


def test_the_signature_must_match_the_configured_features(sklearn_dir: Path) -> None:
    options = ModelOptions(features=("amount", *NAMES[1:]))
    with pytest.raises(ModelLoadError) as info:
        load_model("mlflow", str(sklearn_dir), options)
    assert str(info.value) == (
        f"model error: model.path={sklearn_dir}: preprocess.features does not match the "
        "model's signature (missing: mean radius; unexpected: amount)"
    )


def test_an_xgboost_flavour_scores_like_booster_predict(
    directory: Path, frame: pd.DataFrame
) -> None:
    import mlflow.xgboost
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(zoo.xgboost_file("binary", directory)))
    path = directory / "xgb-mlflow"
    mlflow.xgboost.save_model(
        booster, str(path), signature=_signature(), pip_requirements=REQUIREMENTS
    )
    model = load_model("mlflow", str(path), ModelOptions(explain_top_k=2))
    assert model.kind == "xgboost"
    expected = booster.predict(xgb.DMatrix(frame[list(NAMES)]))
    assert np.array_equal(model.predict(frame[list(NAMES)].to_numpy()), expected)


@pytest.fixture(scope="module")
def registry(directory: Path) -> str:
    uri = f"sqlite:///{directory}/registry.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=str(directory / "artifacts"))
    import mlflow.sklearn as mlflow_sklearn

    for name in ("logreg", "logreg-raw"):
        with mlflow.start_run(experiment_id=experiment):
            mlflow_sklearn.log_model(
                zoo.estimator(name),
                name="model",
                signature=_signature(),
                registered_model_name="fraud",
                pip_requirements=REQUIREMENTS,
            )
    mlflow.MlflowClient(uri).set_registered_model_alias("fraud", "champion", "1")
    mlflow.set_tracking_uri("")
    return uri


def test_a_registry_alias_loads_its_version_and_polls_it(registry: str) -> None:
    options = ModelOptions(tracking_uri=registry)
    model = load_model("mlflow", "models:/fraud@champion", options)
    assert isinstance(model, ChunkedModel)
    assert (model.name, model.version, model.watch_paths) == ("fraud", "1@champion", ())
    assert model.source_poll is not None
    assert model.poll_source() == "1"
    client = mlflow.MlflowClient(registry)
    client.set_registered_model_alias("fraud", "champion", "2")
    try:
        assert model.poll_source() == "2"
        moved = load_model("mlflow", "models:/fraud@champion", options)
        assert moved.version == "2@champion"
    finally:
        client.set_registered_model_alias("fraud", "champion", "1")
    numbered = load_model("mlflow", "models:/fraud/2", options)
    assert (numbered.name, numbered.version) == ("fraud", "2")
    assert isinstance(numbered, ChunkedModel)
    assert numbered.source_poll is None
    assert numbered.poll_source() is None


def test_the_tracking_uri_falls_back_to_the_environment(
    registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    assert load_model("mlflow", "models:/fraud/1").version == "1"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("models:/fraud@nobody", "models:/fraud@nobody: the registry at tracking URI"),
        ("models:/ghost/1", "models:/ghost/1: the registry at tracking URI"),
        ("models:/fraud", "models:/fraud is not models:/name@alias or models:/name/<version>"),
        ("s3://bucket/model", "is neither a local MLflow model directory nor an MLflow URI"),
    ],
)
def test_a_bad_uri_alias_or_name_is_one_line(registry: str, path: str, error: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("mlflow", path, ModelOptions(tracking_uri=registry))
    assert error in str(info.value)
    assert "\n" not in str(info.value)


def test_a_directory_without_mlmodel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="has no MLmodel file"):
        load_model("mlflow", str(tmp_path))

"""Real models for the model-kind tests, trained on data that ships with scikit-learn.

Everything is trained once per process (``lru_cache``) on ``load_breast_cancer``:
no download. The feature names have spaces ("mean radius"), which JSON keys and
CSV headers carry as they are.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

RECORDS = 2000


@functools.lru_cache(maxsize=1)
def dataset() -> tuple[pd.DataFrame, np.ndarray]:
    """The breast cancer features (a DataFrame with named columns) and the labels."""
    from sklearn.datasets import load_breast_cancer

    frame, target = load_breast_cancer(return_X_y=True, as_frame=True)
    return frame, target.to_numpy()


def feature_names() -> list[str]:
    return list(dataset()[0].columns)


@functools.lru_cache(maxsize=2)
def records(count: int = RECORDS) -> pd.DataFrame:
    """``count`` records like the training data: resampled rows with a little noise."""
    frame, _ = dataset()
    rng = np.random.default_rng(7)
    rows = frame.to_numpy()[rng.integers(0, len(frame), count)]
    noisy = rows * rng.normal(1.0, 0.03, size=rows.shape)
    return pd.DataFrame(noisy, columns=frame.columns)


def record_values(frame: pd.DataFrame | None = None) -> list[bytes]:
    """One JSON object per record, as a producer would send it."""
    frame = records() if frame is None else frame
    names = list(frame.columns)
    return [orjson.dumps(dict(zip(names, row, strict=True))) for row in frame.to_numpy().tolist()]


def source_batch(values: list[bytes | None], first: int) -> Any:
    """A SourceBatch of one partition holding ``values`` from offset ``first``."""
    import time

    from streamer.messages import SourceBatch

    offsets = list(range(first, first + len(values)))
    return SourceBatch(
        batch_id=first,
        topic="t",
        partition=0,
        seq=first,
        offsets=offsets,
        keys=[None] * len(values),
        values=values,
        timestamps_ms=[0] * len(values),
        dispatched_at=time.monotonic(),
    )


def stream_scores(model: Any, values: list[bytes | None], size: int) -> np.ndarray:
    """The scores of ``values``, prepared and scored as the actors do, ``size`` at a time."""
    from streamer.core.preparation import prepare_source
    from streamer.core.scoring import score_isolating_failures
    from streamer.settings import PreprocessSettings

    settings = PreprocessSettings()
    parts = []
    for start in range(0, len(values), size):
        prepared = prepare_source(
            source_batch(values[start : start + size], start), model.spec, settings, 1 << 20
        )
        assert not prepared.rejections
        outcome = score_isolating_failures(model, prepared.features)
        assert not outcome.failed
        parts.append(outcome.predictions)
    return np.concatenate(parts)


@functools.cache
def estimator(kind: str) -> Any:
    """``logreg`` (StandardScaler + LogisticRegression), ``forest`` (100 trees), or
    ``logreg-raw`` (a LogisticRegression fitted on a bare array, so without feature names)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, target = dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "logreg":
            return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
                frame, target
            )
        if kind == "forest":
            return RandomForestClassifier(n_estimators=100, random_state=0).fit(frame, target)
        if kind == "logreg-raw":
            standardized = (frame - frame.mean()) / frame.std(ddof=0)
            return LogisticRegression(max_iter=1000).fit(standardized.to_numpy(), target)
    msg = f"unknown estimator {kind!r}"
    raise ValueError(msg)


def linear_model(directory: Path) -> Any:
    """A ``kind = "linear"`` JSON model of six features, loaded."""
    from streamer.core.models import load_model

    frame, _ = dataset()
    names = feature_names()[:6]
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


def save_joblib(obj: Any, path: Path) -> Path:
    import joblib

    joblib.dump(obj, path)
    return path


@functools.cache
def onnx_bytes(kind: str) -> bytes:
    """The estimator converted with skl2onnx (float input, no ZipMap)."""
    from skl2onnx import to_onnx

    frame, _ = dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = to_onnx(
            estimator(kind),
            frame.to_numpy()[:1].astype(np.float32),
            options={"zipmap": False},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    return converted.SerializeToString()


def write_stats(path: Path) -> Path:
    """A stats file of the training data, as ``streamer fit-stats`` writes it."""
    from streamer.core.stats import fit_stats

    frame, _ = dataset()
    stats = fit_stats(list(frame.columns), [frame.to_numpy()])
    path.write_bytes(stats.to_json())
    return path


PYTHON_MODEL = '''
"""A plain-Python model: a logistic function of two standardized features."""
import numpy as np

features = ["mean radius", "mean texture"]


def score(frame):
    z = -0.9 * frame["mean radius"] - 0.4 * frame["mean texture"] + 0.3
    return 1.0 / (1.0 + np.exp(-z))


score.features = features


def both(frame):
    import pandas as pd

    return pd.DataFrame({"low": frame["mean radius"] * 0.5, "high": frame["mean texture"] * 2})
'''


def write_python_model(directory: Path, name: str = "pymodel.py") -> Path:
    path = directory / name
    path.write_text(PYTHON_MODEL)
    return path


OBJECTIVES = ("binary", "multiclass", "regression")


def _booster_labels(objective: str) -> np.ndarray:
    frame, target = dataset()
    if objective == "binary":
        return target
    if objective == "multiclass":
        big = (frame["mean area"] > frame["mean area"].median()).to_numpy()
        return target + big.astype(int)  # three classes: 0, 1, 2
    return frame["worst area"].to_numpy() / 100.0


@functools.cache
def xgboost_file(objective: str, directory: Path, suffix: str = ".json") -> Path:
    """A small XGBoost booster trained on the named features, saved natively."""
    import xgboost as xgb

    frame, _ = dataset()
    params: dict[str, Any] = {"max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 0}
    params["objective"] = {
        "binary": "binary:logistic",
        "multiclass": "multi:softprob",
        "regression": "reg:squarederror",
    }[objective]
    if objective == "multiclass":
        params["num_class"] = 3
    booster = xgb.train(params, xgb.DMatrix(frame, label=_booster_labels(objective)), 20)
    path = directory / f"xgb-{objective}{suffix}"
    booster.save_model(path)
    return path


@functools.cache
def lightgbm_file(objective: str, directory: Path) -> Path:
    """A small LightGBM booster trained on the named features, saved as model.txt."""
    import lightgbm as lgb

    frame, _ = dataset()
    params: dict[str, Any] = {
        "objective": objective,
        "num_leaves": 7,
        "learning_rate": 0.3,
        "num_threads": 1,
        "verbose": -1,
        "seed": 0,
    }
    if objective == "multiclass":
        params["num_class"] = 3
    booster = lgb.train(params, lgb.Dataset(frame, label=_booster_labels(objective)), 20)
    path = directory / f"lgb-{objective}.txt"
    booster.save_model(path)
    return path

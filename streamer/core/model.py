"""Models: load once, score a standardized feature matrix.

The ``linear`` kind is a logistic regression whose weights and fitted
standardization statistics live in one JSON file. Its arithmetic is done
column by column in a fixed order so that a row's score is bit-identical
whatever the batch size (a BLAS matrix product may sum in a size-dependent order).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from streamer.core.features import FeatureSpec
from streamer.errors import ModelLoadError

DEMO_MODEL = "demo_fraud.json"


class Model(Protocol):
    """What a model actor needs from a model."""

    name: str
    version: str
    spec: FeatureSpec
    output_names: tuple[str, ...]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Score an (n, d) standardized matrix; return shape (n,) or (n, len(output_names))."""
        ...


@dataclass(frozen=True)
class LinearModel:
    """Logistic regression: ``score = 1 / (1 + exp(-(bias + x . weights)))``."""

    name: str
    version: str
    spec: FeatureSpec
    weights: np.ndarray
    bias: float
    output_names: tuple[str, ...] = ("score",)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return the probability of the positive class for each row."""
        logits = np.full(features.shape[0], self.bias, dtype=np.float64)
        for col, weight in enumerate(self.weights.tolist()):
            logits += features[:, col] * weight
        return 1.0 / (1.0 + np.exp(-logits))

    def predict_one(self, standardized_row: list[float]) -> float:
        """Score one row with plain floats: the offline reference the tests compare with."""
        logit = self.bias
        for value, weight in zip(standardized_row, self.weights.tolist(), strict=True):
            logit += value * weight
        return 1.0 / (1.0 + math.exp(-logit))


def _require(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        msg = (
            f"model error: {where} has no {key!r} field; "
            "a linear model needs features, mean, std, weights and bias"
        )
        raise ModelLoadError(msg)
    return doc[key]


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        msg = f"model error: {where}: {key!r} must be a finite number, got {value!r}"
        raise ModelLoadError(msg)
    return float(value)


def load_linear(path: str | Path | None) -> LinearModel:
    """Load a JSON-weights logistic regression; ``None`` or ``""`` loads the packaged demo model.

    Raises:
        ModelLoadError: The file is missing or malformed, or its vectors disagree in length.
    """
    if path:
        where = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            msg = f"model error: cannot read model.path={where}: {exc.strerror}"
            raise ModelLoadError(msg) from None
    else:
        where = f"packaged {DEMO_MODEL}"
        raw = resources.files("streamer.models").joinpath(DEMO_MODEL).read_bytes()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"model error: {where} is not valid JSON: {exc}"
        raise ModelLoadError(msg) from None
    if not isinstance(doc, dict):
        msg = f"model error: {where} must hold a JSON object"
        raise ModelLoadError(msg)
    names = _require(doc, "features", where)
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        msg = f"model error: {where}: 'features' must be a list of non-empty feature names"
        raise ModelLoadError(msg)
    vectors = {}
    for key in ("mean", "std", "weights"):
        value = _require(doc, key, where)
        if not isinstance(value, list) or len(value) != len(names):
            msg = (
                f"model error: {where}: {key!r} must be a list of "
                f"{len(names)} numbers, one per feature"
            )
            raise ModelLoadError(msg)
        try:
            vectors[key] = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            msg = f"model error: {where}: {key!r} holds a value that is not a number"
            raise ModelLoadError(msg) from None
        if not np.all(np.isfinite(vectors[key])):
            msg = f"model error: {where}: {key!r} holds a null, NaN or infinite value"
            raise ModelLoadError(msg)
    try:
        spec = FeatureSpec(tuple(str(n) for n in names), vectors["mean"], vectors["std"])
    except ValueError as exc:
        msg = f"model error: {where}: {exc}"
        raise ModelLoadError(msg) from None
    version = str(doc.get("version") or hashlib.sha256(raw).hexdigest()[:12])
    return LinearModel(
        name=str(doc.get("name", Path(where).stem)),
        version=version,
        spec=spec,
        weights=vectors["weights"],
        bias=_number(_require(doc, "bias", where), "bias", where),
    )


def load_model(kind: str, path: str | None) -> LinearModel:
    """Load a model of the configured kind."""
    if kind == "linear":
        return load_linear(path)
    msg = f"model error: model.kind={kind!r} is not supported (supported: 'linear')"
    raise ModelLoadError(msg)

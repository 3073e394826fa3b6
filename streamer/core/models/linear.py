"""``kind = "linear"``: a logistic regression in one JSON file, and the packaged demo model.

The file holds the feature names, their fitted mean and std (with which the
preprocessor standardizes), the weights and the bias. The arithmetic is done
column by column in a fixed order, so that a row's score is bit-identical
whatever the batch size (a BLAS matrix product may sum in a size-dependent
order). With no ``model.path`` the demo model shipped beside this module,
``demo_fraud.json``, is loaded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.features import FeatureSpec
from streamer.core.files import json_object, read_file
from streamer.core.models.base import ModelDefaults, ModelOptions
from streamer.errors import ModelLoadError

DEMO_MODEL = "demo_fraud.json"


@dataclass(frozen=True)
class LinearModel(ModelDefaults):
    """Logistic regression: ``score = 1 / (1 + exp(-(bias + x . weights)))``."""

    name: str
    version: str
    spec: FeatureSpec
    weights: np.ndarray
    bias: float
    output_names: tuple[str, ...] = ("score",)
    digest: str = ""
    watch_paths: tuple[Path, ...] = ()
    explain_top_k: int = 0

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return the probability of the positive class for each row."""
        logits = np.full(features.shape[0], self.bias, dtype=np.float64)
        for col, weight in enumerate(self.weights.tolist()):
            logits += features[:, col] * weight
        return 1.0 / (1.0 + np.exp(-logits))

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's push on the logit: its weight times its standardized value."""
        return features * self.weights

    def poll_source(self) -> object:
        """A file's model: only the watched file reloads it."""
        return None

    def reasons(self, features: np.ndarray) -> list[bytes]:
        """Each row's ``explain_top_k`` reason codes as JSON (see :mod:`.reasons`)."""
        from streamer.core.models.reasons import top_reasons  # noqa: PLC0415

        return top_reasons(self.contributions(features), self.spec.names, self.explain_top_k)

    def predict_one(self, standardized_row: list[float]) -> float:
        """Score one row with plain floats: the offline reference the tests compare with."""
        logit = self.bias
        for value, weight in zip(standardized_row, self.weights.tolist(), strict=True):
            logit += value * weight
        return 1.0 / (1.0 + math.exp(-logit))


def _require(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        msg = (
            f"{where} has no {key!r} field; "
            "a linear model needs features, mean, std, weights and bias"
        )
        raise ModelLoadError(msg)
    return doc[key]


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        msg = f"{where}: {key!r} must be a finite number, got {value!r}"
        raise ModelLoadError(msg)
    return float(value)


def load_linear(path: str | Path | None, options: ModelOptions | None = None) -> LinearModel:
    """Load a JSON-weights logistic regression; ``None`` or ``""`` loads the packaged demo model.

    ``options`` may override the name and version, and check the configured
    feature names; the statistics always come from the file.

    Raises:
        ModelLoadError: The file is missing or malformed, or its vectors disagree in length.
    """
    raw, where = _read(path)
    doc = json_object(raw, where)
    names = _feature_names(doc, where)
    vectors = {key: _vector(doc, key, len(names), where) for key in ("mean", "std", "weights")}
    options = options or ModelOptions()
    _check_linear_options(names, options, where)
    try:
        spec = FeatureSpec(
            tuple(str(n) for n in names),
            vectors["mean"],
            vectors["std"],
            standardize=options.standardize,
        )
    except ValueError as exc:
        msg = f"{where}: {exc}"
        raise ModelLoadError(msg) from None
    digest = hashlib.sha256(raw).hexdigest()
    return LinearModel(
        name=options.name or str(doc.get("name", Path(where).stem)),
        version=options.version or str(doc.get("version") or digest[:12]),
        spec=spec,
        weights=vectors["weights"],
        bias=_number(_require(doc, "bias", where), "bias", where),
        digest=digest,
        watch_paths=(Path(path),) if path else (),
        explain_top_k=options.explain_top_k,
    )


def _read(path: str | Path | None) -> tuple[bytes, str]:
    """(the bytes of the file, or of the packaged demo model; how errors name them)."""
    if path:
        return read_file("model.path", path), str(path)
    raw = resources.files("streamer.core.models").joinpath(DEMO_MODEL).read_bytes()
    return raw, f"packaged {DEMO_MODEL}"


def _feature_names(doc: dict[str, Any], where: str) -> list[str]:
    names = _require(doc, "features", where)
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        msg = f"{where}: 'features' must be a list of non-empty feature names"
        raise ModelLoadError(msg)
    return names


def _vector(doc: dict[str, Any], key: str, width: int, where: str) -> np.ndarray:
    """``doc[key]`` as ``width`` finite float64 numbers, one per feature."""
    value = _require(doc, key, where)
    if not isinstance(value, list) or len(value) != width:
        msg = f"{where}: {key!r} must be a list of {width} numbers, one per feature"
        raise ModelLoadError(msg)
    try:
        vector = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        msg = f"{where}: {key!r} holds a value that is not a number"
        raise ModelLoadError(msg) from None
    if not np.all(np.isfinite(vector)):
        msg = f"{where}: {key!r} holds a null, NaN or infinite value"
        raise ModelLoadError(msg)
    return vector


def _check_linear_options(names: list[str], options: ModelOptions, where: str) -> None:
    if options.stats_path:
        msg = (
            f"{where} carries its own mean and std; remove "
            f"preprocess.stats_path={options.stats_path} (model.kind='linear')"
        )
        raise ModelLoadError(msg)
    if options.features and list(options.features) != names:
        msg = (
            f"preprocess.features ({', '.join(options.features)}) does not match "
            f"the features of {where} ({', '.join(names)}), in order"
        )
        raise ModelLoadError(msg)


def load(options: ModelOptions) -> LinearModel:
    """The loader table's entry: ``model.path``, or the packaged demo model when it is empty."""
    return load_linear(options.path, options)

"""Models: load once, score a standardized feature matrix.

Four kinds sit behind one :class:`Model` protocol:

- ``linear``: a logistic regression whose weights and fitted standardization
  statistics live in one JSON file. Its arithmetic is done column by column in
  a fixed order so that a row's score is bit-identical whatever the batch size
  (a BLAS matrix product may sum in a size-dependent order).
- ``sklearn``, ``onnx`` and ``python``: see :mod:`streamer.core.models`. They
  are called on fixed-size chunks for the same reason.

A model's ``spec`` says which features it reads, in which order, and with which
fitted statistics the preprocessor standardizes them (``spec.standardize``) or
imputes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamer.core.features import FeatureSpec
from streamer.core.files import json_object, read_file
from streamer.errors import ModelLoadError

if TYPE_CHECKING:
    from streamer.settings import Settings

DEMO_MODEL = "demo_fraud.json"
KINDS = ("linear", "sklearn", "onnx", "python")


class Model(Protocol):
    """What a model actor needs from a model (read-only, so frozen dataclasses qualify)."""

    @property
    def name(self) -> str:
        """Written to every output record and to ``streamer_model_info``."""
        ...

    @property
    def version(self) -> str:
        """Written to every output record and to ``streamer_model_info``."""
        ...

    @property
    def spec(self) -> FeatureSpec:
        """The features the model reads, in column order, and their fitted statistics."""
        ...

    @property
    def output_names(self) -> tuple[str, ...]:
        """One name per output column; a single output is ``score``."""
        ...

    @property
    def digest(self) -> str:
        """SHA-256 of what the model was loaded from; empty when unknown.

        A reload that loads the same digest, name, version and outputs is ``unchanged``.
        """
        ...

    @property
    def watch_paths(self) -> tuple[Path, ...]:
        """The files whose change hot-reloads the model; none for the packaged demo model."""
        ...

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Score an (n, d) standardized matrix; return shape (n,) or (n, len(output_names))."""
        ...


def preparation_key(spec: FeatureSpec) -> str:
    """A fingerprint of how a batch is prepared for this spec.

    A batch prepared under one key must not be scored by a model with another:
    the model actor prepares it again from the source bytes.
    """
    digest = hashlib.sha256()
    digest.update("\x1f".join(spec.names).encode())
    digest.update(np.ascontiguousarray(spec.mean, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(spec.std, dtype=np.float64).tobytes())
    digest.update(b"1" if spec.standardize else b"0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelOptions:
    """Everything a loader needs, taken from ``[model]`` and ``[preprocess]``."""

    kind: str = "linear"
    path: str = ""
    name: str = ""
    version: str = ""
    method: str = "auto"
    probabilities: str = "positive"
    outputs: tuple[str, ...] = ()
    chunk_rows: int = 1000
    features: tuple[str, ...] = ()
    stats_path: str = ""
    standardize: bool = True
    missing: str = "dlq"

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelOptions:
        """The options of validated settings."""
        m, p = settings.model, settings.preprocess
        return cls(
            kind=m.kind,
            path=m.path,
            name=m.name,
            version=m.version,
            method=m.method,
            probabilities=m.probabilities,
            outputs=_split_names(m.outputs),
            chunk_rows=m.chunk_rows,
            features=_split_names(p.features),
            stats_path=p.stats_path,
            standardize=p.standardize,
            missing=p.missing,
        )


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class LinearModel:
    """Logistic regression: ``score = 1 / (1 + exp(-(bias + x . weights)))``."""

    name: str
    version: str
    spec: FeatureSpec
    weights: np.ndarray
    bias: float
    output_names: tuple[str, ...] = ("score",)
    digest: str = ""
    watch_paths: tuple[Path, ...] = ()

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


def load_linear(path: str | Path | None, options: ModelOptions | None = None) -> LinearModel:
    """Load a JSON-weights logistic regression; ``None`` or ``""`` loads the packaged demo model.

    ``options`` may override the name and version, and check the configured
    feature names; the statistics always come from the file.

    Raises:
        ModelLoadError: The file is missing or malformed, or its vectors disagree in length.
    """
    if path:
        where = str(path)
        raw = read_file("model.path", path)
    else:
        where = f"packaged {DEMO_MODEL}"
        raw = resources.files("streamer.models").joinpath(DEMO_MODEL).read_bytes()
    doc = json_object(raw, where)
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
        msg = f"model error: {where}: {exc}"
        raise ModelLoadError(msg) from None
    version = options.version or str(doc.get("version") or hashlib.sha256(raw).hexdigest()[:12])
    return LinearModel(
        name=options.name or str(doc.get("name", Path(where).stem)),
        version=version,
        spec=spec,
        weights=vectors["weights"],
        bias=_number(_require(doc, "bias", where), "bias", where),
        digest=hashlib.sha256(raw).hexdigest(),
        watch_paths=(Path(path),) if path else (),
    )


def _check_linear_options(names: list[str], options: ModelOptions, where: str) -> None:
    if options.stats_path:
        msg = (
            f"model error: {where} carries its own mean and std; remove "
            f"preprocess.stats_path={options.stats_path} (model.kind='linear')"
        )
        raise ModelLoadError(msg)
    if options.features and list(options.features) != names:
        msg = (
            f"model error: preprocess.features ({', '.join(options.features)}) does not match "
            f"the features of {where} ({', '.join(names)}), in order"
        )
        raise ModelLoadError(msg)


def load_model(kind: str, path: str | None, options: ModelOptions | None = None) -> Model:
    """Load a model of the configured kind.

    Raises:
        ModelLoadError: The model cannot be loaded, or does not fit the options.
    """
    opts = dataclasses.replace(options or ModelOptions(), kind=kind, path=path or "")
    if kind == "linear":
        return load_linear(path, opts)
    if kind == "sklearn":
        from streamer.core.models.sklearn_kind import load_sklearn  # noqa: PLC0415

        return load_sklearn(opts)
    if kind == "onnx":
        from streamer.core.models.onnx_kind import load_onnx  # noqa: PLC0415

        return load_onnx(opts)
    if kind == "python":
        from streamer.core.models.python_kind import load_python  # noqa: PLC0415

        return load_python(opts)
    supported = ", ".join(repr(k) for k in KINDS)
    msg = f"model error: model.kind={kind!r} is not supported (supported: {supported})"
    raise ModelLoadError(msg)


def load_configured(settings: Settings) -> Model:
    """Load the model that validated settings describe (``[model]`` and ``[preprocess]``).

    Raises:
        ModelLoadError: The model cannot be loaded, or does not fit the settings.
    """
    options = ModelOptions.from_settings(settings)
    return load_model(options.kind, options.path, options)

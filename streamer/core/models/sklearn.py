"""``kind = "sklearn"``: a fitted estimator or Pipeline saved with joblib or pickle.

Only unpickle files you trust: unpickling runs code.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.features import FeatureSpec
from streamer.core.models.base import ESTIMATOR_METHODS, ModelOptions
from streamer.core.models.common import (
    ChunkCall,
    ChunkedModel,
    as_matrix,
    one_line,
    output_names,
    probe,
    read_model_file,
    resolve_spec,
)
from streamer.errors import ModelLoadError


def load(options: ModelOptions) -> ChunkedModel:
    """Load a scikit-learn model and wrap it for the pipeline.

    Raises:
        ModelLoadError: The file is missing, cannot be unpickled, holds no fitted
            estimator, lacks the configured method, or does not fit the features.
    """
    raw = read_model_file(options, "a joblib or pickle file")
    where = f"model.path={options.path}"
    libraries = _Libraries.imported()
    estimator = _fitted_estimator(libraries, lambda: libraries.unpickle(io.BytesIO(raw)), where)
    return wrap_estimator(options, estimator, raw, where, libraries)


def wrap_estimator(
    options: ModelOptions,
    estimator: Any,
    raw: bytes,
    where: str,
    libraries: _Libraries | None = None,
) -> ChunkedModel:
    """Wrap a fitted estimator loaded from ``raw`` (the MLflow kind loads its own).

    Raises:
        ModelLoadError: It lacks the configured method, or does not fit the features.
    """
    libraries = libraries or _Libraries.imported()
    method = _resolve_method(estimator, options.method, where)
    _single_job(estimator)
    spec, columns = _spec(estimator, options, where)
    select, labels, base = _selection(estimator, method, options.probabilities, where)
    call = _chunk_call(libraries, getattr(estimator, method), select, columns)
    width = probe(call, spec, options.chunk_rows, where)
    return ChunkedModel.from_source(
        options,
        raw,
        kind="sklearn",
        default_name=Path(options.path).stem,
        spec=spec,
        output_names=output_names(width, base, labels),
        call=call,
        watched=Path(options.path),
        contributions=_linear_contributions(estimator, method, columns, libraries)
        if options.explain_top_k
        else None,
    )


def fitted_estimator(load: Callable[[], Any], where: str) -> Any:
    """What ``load`` returns, checked to be a fitted scikit-learn estimator.

    Raises:
        ModelLoadError: ``load`` fails, or returns no fitted estimator.
    """
    return _fitted_estimator(_Libraries.imported(), load, where)


def _linear_contributions(
    estimator: Any, method: str, columns: list[str] | None, libraries: _Libraries
) -> ChunkCall | None:
    """Coefficient x standardized value, for a linear model alone or after StandardScalers only.

    None for anything else (trees, other transforms, several classes' coefficients).
    """
    steps = [step for _, step in getattr(estimator, "steps", [("model", estimator)])]
    *scalers, last = steps
    coef = getattr(last, "coef_", None)
    if coef is None or method not in ("predict_proba", "decision_function", "predict"):
        return None
    weights = np.asarray(coef, dtype=np.float64)
    if weights.ndim == 2:
        if weights.shape[0] != 1:
            return None
        weights = weights[0]
    if not all(type(s).__name__ == "StandardScaler" for s in scalers):
        return None

    def contributions(chunk: np.ndarray) -> np.ndarray:
        data: Any = (
            chunk if columns is None else libraries.data_frame(chunk, columns=columns, copy=False)
        )
        for scaler in scalers:
            data = scaler.transform(data)
        return np.asarray(data, dtype=np.float64) * weights

    return contributions


@dataclass(frozen=True)
class _Libraries:
    """What the loader calls of joblib, pandas and scikit-learn (``streamer[sklearn]``)."""

    unpickle: Callable[[Any], Any]
    data_frame: Callable[..., Any]
    not_fitted_error: type[Exception]
    check_is_fitted: Callable[[Any], object]

    @classmethod
    def imported(cls) -> _Libraries:
        """Import them, or fail with how to install them."""
        try:
            import joblib  # noqa: PLC0415
            import pandas as pd  # noqa: PLC0415
            from sklearn.exceptions import NotFittedError  # noqa: PLC0415
            from sklearn.utils.validation import check_is_fitted  # noqa: PLC0415
        except ImportError as exc:
            msg = (
                f"model.kind='sklearn' needs scikit-learn and joblib ({exc}); "
                "install them with: pip install 'streamer[sklearn]'"
            )
            raise ModelLoadError(msg) from None
        return cls(joblib.load, pd.DataFrame, NotFittedError, check_is_fitted)


def _fitted_estimator(libraries: _Libraries, load: Callable[[], Any], where: str) -> Any:
    """The loaded object, checked to be a fitted scikit-learn estimator."""
    try:
        estimator = load()
    except Exception as exc:  # a pickle can fail in any way
        msg = f"cannot unpickle {where}: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    kind_name = type(estimator).__name__
    if not hasattr(estimator, "get_params") or not any(
        callable(getattr(estimator, m, None)) for m in ESTIMATOR_METHODS
    ):
        msg = f"{where} holds a {kind_name}, not a scikit-learn estimator"
        raise ModelLoadError(msg)
    try:
        libraries.check_is_fitted(estimator)
    except libraries.not_fitted_error:
        msg = f"{where}: the {kind_name} is not fitted; fit it before saving"
        raise ModelLoadError(msg) from None
    except TypeError as exc:
        msg = f"{where}: cannot check the {kind_name}: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    return estimator


def _spec(
    estimator: Any, options: ModelOptions, where: str
) -> tuple[FeatureSpec, list[str] | None]:
    """(the features, the DataFrame columns to pass when the estimator was fitted on names)."""
    names_in = getattr(estimator, "feature_names_in_", None)
    model_names = [str(n) for n in names_in] if names_in is not None else None
    n_in = getattr(estimator, "n_features_in_", None)
    scales_inside, inner_mean, inner_std = _inner_scaling(estimator)
    spec = resolve_spec(
        options,
        where,
        model_names=model_names,
        model_names_what="the model's feature_names_in_",
        n_inputs=int(n_in) if n_in is not None else None,
        scales_inside=scales_inside,
        inner_mean=inner_mean,
        inner_std=inner_std,
    )
    return spec, list(spec.names) if model_names is not None else None


def _chunk_call(
    libraries: _Libraries,
    function: Callable[[Any], Any],
    select: Callable[[Any], Any],
    columns: list[str] | None,
) -> ChunkCall:
    def call(chunk: np.ndarray) -> np.ndarray:
        # An estimator fitted on a DataFrame gets one, so that a ColumnTransformer
        # finds its columns by name (and no feature-name warning is raised).
        data: Any = (
            chunk if columns is None else libraries.data_frame(chunk, columns=columns, copy=False)
        )
        return as_matrix(select(function(data)), chunk.shape[0])

    return call


def _resolve_method(estimator: Any, method: str, where: str) -> str:
    if method == "auto":
        return "predict_proba" if callable(getattr(estimator, "predict_proba", None)) else "predict"
    if not callable(getattr(estimator, method, None)):
        available = [m for m in ESTIMATOR_METHODS if callable(getattr(estimator, m, None))]
        msg = (
            f"{where}: the {type(estimator).__name__} has no method {method!r} "
            f"(model.method); it has {', '.join(available)}"
        )
        raise ModelLoadError(msg)
    return method


def _selection(
    estimator: Any, method: str, probabilities: str, where: str
) -> tuple[Any, list[Any] | None, str]:
    """(select the columns to write, class labels for names, name prefix)."""
    classes = getattr(estimator, "classes_", None)
    labels = [_label(c) for c in classes] if classes is not None else None
    if method == "predict_proba":
        if probabilities == "positive":
            if labels is None or len(labels) != 2:
                count = "an unknown number of" if labels is None else str(len(labels))
                msg = (
                    f"{where}: the model has {count} classes, so there is no one "
                    "positive class; set model.probabilities = 'all'"
                )
                raise ModelLoadError(msg)
            return (lambda out: np.asarray(out)[:, 1]), None, "proba"
        return (lambda out: out), labels, "proba"
    if method == "decision_function":
        return (lambda out: out), labels, "decision"
    return (lambda out: out), None, "score"


def _label(value: Any) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)


def _single_job(estimator: Any) -> None:
    # A parallel tree ensemble adds its trees up in the order the threads finish,
    # so the last bits of a prediction vary from call to call. The pipeline runs
    # model.workers actors in parallel instead.
    params = estimator.get_params(deep=True)
    fixed = {
        k: 1 for k, v in params.items() if k.split("__")[-1] == "n_jobs" and v not in (None, 1)
    }
    if fixed:
        estimator.set_params(**fixed)


def _inner_scaling(estimator: Any) -> tuple[bool, np.ndarray | None, np.ndarray | None]:
    """(does any step scale, the first step's mean and scale when it is a StandardScaler)."""
    parts = [estimator, *estimator.get_params(deep=True).values()]
    scales = any(type(p).__name__.endswith("Scaler") for p in parts)
    steps = getattr(estimator, "steps", None)
    first = steps[0][1] if steps else None
    mean = getattr(first, "mean_", None)
    if type(first).__name__ == "StandardScaler" and mean is not None:
        scale = getattr(first, "scale_", None)
        return (
            scales,
            np.asarray(mean, dtype=np.float64),
            None if scale is None else np.asarray(scale, dtype=np.float64),
        )
    return scales, None, None

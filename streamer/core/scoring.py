"""Score a batch and isolate the rows a model fails on, by bisection."""

from __future__ import annotations

import numpy as np

from streamer.core.models import Model
from streamer.core.models.base import ModelUnavailableError, ScoreOutcome

__all__ = ["ScoreOutcome", "explain", "score_column", "score_isolating_failures", "score_output"]


def _check(model: Model, features: np.ndarray, out: np.ndarray) -> np.ndarray:
    width = len(model.output_names)
    expected = (features.shape[0],) if width == 1 else (features.shape[0], width)
    result = np.asarray(out, dtype=np.float64)
    if width == 1 and result.ndim == 2 and result.shape[1] == 1:
        result = result[:, 0]
    if result.shape != expected:
        msg = f"model returned shape {result.shape}, expected {expected}"
        raise ValueError(msg)
    if not np.all(np.isfinite(result)):
        msg = "model returned a NaN or infinite prediction"
        raise ValueError(msg)
    return result


def score_isolating_failures(model: Model, features: np.ndarray) -> ScoreOutcome:
    """Score all rows; when the batch fails, bisect to find the rows that fail on their own.

    A bad row costs O(log n) extra model calls; the good rows are still scored.
    """
    width = len(model.output_names)
    empty_shape: tuple[int, ...] = (0,) if width == 1 else (0, width)
    if features.shape[0] == 0:
        return ScoreOutcome(np.empty(empty_shape), [])
    try:
        return ScoreOutcome(_check(model, features, model.predict(features)), [])
    except ModelUnavailableError:
        raise  # a remote model's server is down: no row is at fault
    except Exception as exc:  # any other model error is isolated, never fatal
        if features.shape[0] == 1:
            return ScoreOutcome(np.empty(empty_shape), [(0, f"{type(exc).__name__}: {exc}")])
    middle = features.shape[0] // 2
    left = score_isolating_failures(model, features[:middle])
    right = score_isolating_failures(model, features[middle:])
    failed = left.failed + [(pos + middle, err) for pos, err in right.failed]
    return ScoreOutcome(np.concatenate([left.predictions, right.predictions]), failed)


def explain(model: Model, features: np.ndarray) -> tuple[bytes, ...]:
    """Each row's reason codes as JSON when the model gives them (``model.explain_top_k``).

    Empty when it does not; a model that fails to explain a batch it just scored
    gives ``[]`` per row rather than losing the scores.
    """
    if not model.explain_top_k:
        return ()
    try:
        return tuple(model.reasons(features))
    except Exception:  # a prediction is never lost to its explanation
        return (b"[]",) * features.shape[0]


def score_column(model: Model, features: np.ndarray, output: str) -> np.ndarray:
    """One output of the model for rows it scores (rows it fails on are left out)."""
    predictions = score_isolating_failures(model, features).predictions
    if predictions.ndim == 2:
        return predictions[:, model.output_names.index(output)]
    return predictions


def score_output(model: Model, predictions: np.ndarray) -> np.ndarray:
    """The one score the agreement compares: output 'score' if the model has it, else the first."""
    if predictions.ndim == 1:
        return predictions
    names = model.output_names
    return predictions[:, names.index("score") if "score" in names else 0]

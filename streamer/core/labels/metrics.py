"""Model quality over a window of joined records: scikit-learn's definitions, computed alike.

Each metric follows the scikit-learn function of the same name, step for step
(the same curve, the same sums in the same order), so that it gives the same
float: the property tests compare them with ``==``.

- ``precision``, ``recall``, ``f1``: of the decision ``score >= threshold``
  (``monitoring.threshold``); None where scikit-learn divides by zero.
- ``roc_auc``: the area under the ROC curve (``roc_auc_score``); None unless
  both classes are present.
- ``pr_auc``: the average precision (``average_precision_score``): the sum
  over thresholds of the precision times the gain in recall, not a trapezoid;
  None without a positive label.
- ``log_loss`` (scores clipped to [eps, 1 - eps]) and ``brier``
  (``brier_score_loss``), and the ``calibration`` buckets (``calibration_curve``
  with uniform bins): None when a score is outside [0, 1], since the score is
  then no probability.
- ``mae`` and ``rmse`` (regression): ``mean_absolute_error`` and
  ``root_mean_squared_error``.

A model's metrics cover the window's records it scored; a challenger is
compared with the champion on the records both scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamer.core.labels.join import CLASSIFICATION
from streamer.core.labels.ledger import Joined, ModelScore

CLASSIFICATION_METRICS = (
    "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier",
)  # fmt: skip
REGRESSION_METRICS = ("mae", "rmse")


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def decision_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision, recall and F1 of ``score >= threshold``, with the counts they come from."""
    predicted = scores >= threshold
    actual = labels == 1.0
    tp = int(np.count_nonzero(predicted & actual))
    fp = int(np.count_nonzero(predicted & ~actual))
    fn = int(np.count_nonzero(~predicted & actual))
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def _curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct score, highest first (``_binary_clf_curve``)."""
    order = np.argsort(scores, kind="stable")[::-1]
    ordered_scores, ordered_labels = scores[order], labels[order]
    distinct = np.nonzero(np.diff(ordered_scores))[0]
    ends = np.concatenate([distinct, [ordered_labels.size - 1]])
    tps = np.cumsum(ordered_labels, dtype=np.float64)[ends]
    fps = 1 + ends.astype(np.float64) - tps
    return tps, fps


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The area under the ROC curve, as ``roc_auc_score``; None unless both classes are present."""
    positives = int(np.count_nonzero(labels == 1.0))
    if positives in (0, labels.size):
        return None
    tps, fps = _curve(labels, scores)
    if fps.size > 2:  # roc_curve's drop_intermediate: collinear points go
        keep = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]])
        tps, fps = tps[keep], fps[keep]
    tps = np.concatenate([[0.0], tps])
    fps = np.concatenate([[0.0], fps])
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """``average_precision_score`` (the PR AUC); None without a positive label."""
    if not np.any(labels == 1.0):
        return None
    tps, fps = _curve(labels, scores)
    precision = np.concatenate([(tps / (tps + fps))[::-1], [1.0]])
    recall = np.concatenate([(tps / tps[-1])[::-1], [0.0]])
    return max(0.0, float(-np.sum(np.diff(recall) * precision[:-1])))


def _probabilities(scores: np.ndarray) -> bool:
    return bool(scores.size) and float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """``log_loss``: scores clipped to [eps, 1 - eps]; None when one is outside [0, 1]."""
    if not _probabilities(scores):
        return None
    eps = np.finfo(np.float64).eps
    positive = np.clip(scores, eps, 1 - eps)
    negative = np.clip(1 - scores, eps, 1 - eps)
    losses = np.where(labels == 1.0, -np.log(positive), -np.log(negative))
    return float(np.mean(losses))


def brier(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """``brier_score_loss``; None when a score is outside [0, 1]."""
    if not _probabilities(scores):
        return None
    both_labels = np.stack((1 - labels, labels), axis=1)
    both_scores = np.stack((1 - scores, scores), axis=1)
    return float(np.mean(np.sum((both_labels - both_scores) ** 2, axis=1)) * 0.5)


def calibration(
    labels: np.ndarray, scores: np.ndarray, buckets: int
) -> list[dict[str, Any]] | None:
    """Per score bucket of equal width in [0, 1]: its records, mean score and observed rate.

    The buckets are ``calibration_curve``'s uniform bins: ``(low, high]``, the
    first ``[0, high]`` (a score on an inner edge falls in the bucket below it);
    an empty bucket has None rates.
    """
    if not _probabilities(scores):
        return None
    edges = np.linspace(0.0, 1.0, buckets + 1)
    ids = np.searchsorted(edges[1:-1], scores)
    sums = np.bincount(ids, weights=scores, minlength=buckets)
    observed = np.bincount(ids, weights=labels, minlength=buckets)
    counts = np.bincount(ids, minlength=buckets)
    return [
        {
            "low": float(edges[i]),
            "high": float(edges[i + 1]),
            "records": int(counts[i]),
            "mean_score": float(sums[i] / counts[i]) if counts[i] else None,
            "observed_rate": float(observed[i] / counts[i]) if counts[i] else None,
        }
        for i in range(buckets)
    ]


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, buckets: int
) -> dict[str, Any]:
    """Every classification metric of one model over its records."""
    return {
        "records": int(labels.size),
        "positives": int(np.count_nonzero(labels == 1.0)),
        **decision_metrics(labels, scores, threshold),
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": average_precision(labels, scores),
        "log_loss": log_loss(labels, scores),
        "brier": brier(labels, scores),
        "calibration": calibration(labels, scores, buckets),
    }


def regression_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """MAE and RMSE of one model over its records (None for none)."""
    if not labels.size:
        return {"records": 0, "mae": None, "rmse": None}
    return {
        "records": int(labels.size),
        "mae": float(np.mean(np.abs(scores - labels))),
        "rmse": float(np.sqrt(np.mean((labels - scores) ** 2))),
    }


def label_latency(records: Sequence[Joined]) -> dict[str, Any] | None:
    """Seconds from prediction to label over the records whose label has a time (None: none)."""
    seconds = np.array(
        [
            (r.label.time_us - r.prediction.time_us) / 1e6
            for r in records
            if r.label.time_us is not None
        ],
        dtype=np.float64,
    )
    if not seconds.size:
        return None
    return {
        "records": int(seconds.size),
        "mean_s": float(np.mean(seconds)),
        "p50_s": float(np.quantile(seconds, 0.5)),
        "p95_s": float(np.quantile(seconds, 0.95)),
        "max_s": float(np.max(seconds)),
    }


ModelId = tuple[str, str, str]
"""(role, name, version): ``champion`` or ``challenger``, the model's name and version."""


def _scores_by_model(records: Sequence[Joined]) -> dict[ModelId, list[tuple[float, float]]]:
    found: dict[ModelId, list[tuple[float, float]]] = {}
    for record in records:
        label = record.label.value
        scored: list[tuple[str, ModelScore]] = [
            ("challenger", c) for c in record.prediction.challengers
        ]
        if record.prediction.champion is not None:
            scored.insert(0, ("champion", record.prediction.champion))
        for role, score in scored:
            found.setdefault((role, score.name, score.version), []).append((label, score.score))
    return found


def window_report(
    records: Sequence[Joined], *, task: str, threshold: float, buckets: int
) -> dict[str, Any]:
    """The metrics of every model version over the window, and each challenger's comparison.

    Args:
        records: The window's joined records.
        task: ``classification`` or ``regression``.
        threshold: The decision threshold of precision, recall and F1.
        buckets: The calibration histogram's buckets.
    """

    def metrics(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
        array = np.array(pairs, dtype=np.float64).reshape(-1, 2)
        if task == CLASSIFICATION:
            return classification_metrics(array[:, 0], array[:, 1], threshold, buckets)
        return regression_metrics(array[:, 0], array[:, 1])

    # The champion first, then the challengers, each by name and version.
    models = [
        {"role": role, "name": name, "version": version, **metrics(pairs)}
        for (role, name, version), pairs in sorted(
            _scores_by_model(records).items(), key=lambda item: (item[0][0] != "champion", item[0])
        )
    ]
    return {
        "records": len(records),
        "label_latency": label_latency(records),
        "models": models,
        "comparisons": _comparisons(records, metrics),
    }


def _comparisons(
    records: Sequence[Joined], metrics: Callable[[Sequence[tuple[float, float]]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per challenger and champion version: both models' metrics on the records both scored."""
    both: dict[tuple[str, str, str, str], list[tuple[float, float, float]]] = {}
    for record in records:
        champion = record.prediction.champion
        if champion is None:
            continue
        for challenger in record.prediction.challengers:
            key = (challenger.name, challenger.version, champion.name, champion.version)
            both.setdefault(key, []).append((record.label.value, champion.score, challenger.score))
    out = []
    for (name, version, champion_name, champion_version), rows in sorted(both.items()):
        champion_metrics = metrics([(label, score) for label, score, _ in rows])
        challenger_metrics = metrics([(label, score) for label, _, score in rows])
        deltas = {
            metric: challenger_metrics[metric] - champion_metrics[metric]
            if challenger_metrics[metric] is not None and champion_metrics[metric] is not None
            else None
            for metric in (*CLASSIFICATION_METRICS, *REGRESSION_METRICS)
            if metric in champion_metrics
        }
        out.append(
            {
                "challenger": name,
                "challenger_version": version,
                "champion": champion_name,
                "champion_version": champion_version,
                "records": len(rows),
                "deltas": deltas,
                "champion_metrics": champion_metrics,
                "challenger_metrics": challenger_metrics,
            }
        )
    return out

"""Fitted standardization statistics: fit them once over a file, save, load.

``streamer fit-stats data.csv -o stats.json`` streams the file in chunks and
merges per-chunk moments (Chan et al.), so a file larger than memory is fine
and the result does not depend on the chunk size beyond rounding. The std is
the population std (``ddof=0``), as scikit-learn's ``StandardScaler`` uses; a
constant feature gets std 1, as it does there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.core.files import json_object, read_file
from streamer.errors import ModelLoadError


@dataclass(frozen=True)
class FeatureStats:
    """Mean and std per feature, in ``names`` order; ``count`` values were seen for each."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    def reordered(self, names: Sequence[str]) -> FeatureStats:
        """The same statistics in the order of ``names`` (the same set of features)."""
        position = {name: i for i, name in enumerate(self.names)}
        index = [position[name] for name in names]
        return FeatureStats(tuple(names), self.mean[index], self.std[index], self.count[index])

    def to_json(self, source: str = "") -> bytes:
        """The stats file's bytes."""
        doc: dict[str, Any] = {
            "features": list(self.names),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "count": [int(c) for c in self.count.tolist()],
        }
        if source:
            doc["source"] = source
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


class RunningStats:
    """Per-feature count, mean and sum of squared deviations, merged chunk by chunk.

    Missing and non-finite values are skipped for their feature only.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        width = len(self.names)
        self._count = np.zeros(width)
        self._mean = np.zeros(width)
        self._m2 = np.zeros(width)

    def add(self, chunk: np.ndarray) -> None:
        """Merge an (n, d) float chunk; NaN marks a missing value."""
        finite = np.isfinite(chunk)
        count = finite.sum(axis=0).astype(np.float64)
        values = np.where(finite, chunk, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, values.sum(axis=0) / count, 0.0)
        deviations = np.where(finite, chunk - mean, 0.0)
        m2 = (deviations * deviations).sum(axis=0)
        total = self._count + count
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean - self._mean
            self._mean = np.where(total > 0, self._mean + delta * count / total, 0.0)
            self._m2 = np.where(
                total > 0, self._m2 + m2 + delta * delta * self._count * count / total, 0.0
            )
        self._count = total

    def result(self) -> FeatureStats:
        """The statistics so far; a feature without values raises ValueError."""
        empty = [n for n, c in zip(self.names, self._count.tolist(), strict=True) if c == 0]
        if empty:
            msg = f"no numeric values for feature(s): {', '.join(empty)}"
            raise ValueError(msg)
        std = np.sqrt(self._m2 / self._count)
        std = np.where(std > 0, std, 1.0)
        return FeatureStats(self.names, self._mean.copy(), std, self._count.astype(np.int64))


def fit_stats(names: Sequence[str], chunks: Iterable[np.ndarray]) -> FeatureStats:
    """Fit statistics over (n, d) chunks whose columns are ``names``."""
    running = RunningStats(names)
    for chunk in chunks:
        running.add(chunk)
    return running.result()


def load_stats(path: str | Path) -> FeatureStats:
    """Read a stats file written by ``streamer fit-stats``.

    Raises:
        ModelLoadError: The file is missing or malformed.
    """
    where = f"preprocess.stats_path={path}"
    doc = json_object(
        read_file("preprocess.stats_path", path), where, " with features, mean and std"
    )
    names = doc.get("features")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        msg = f"{where}: 'features' must be a list of distinct feature names"
        raise ModelLoadError(msg)
    vectors = {}
    for key in ("mean", "std"):
        value = doc.get(key)
        if not isinstance(value, list) or len(value) != len(names):
            msg = f"{where}: {key!r} must be a list of {len(names)} numbers"
            raise ModelLoadError(msg)
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        ):
            msg = f"{where}: {key!r} holds a value that is not a finite number"
            raise ModelLoadError(msg)
        vectors[key] = np.array(value, dtype=np.float64)
    if np.any(vectors["std"] <= 0):
        msg = f"{where}: every std must be positive"
        raise ModelLoadError(msg)
    count = doc.get("count")
    counts = (
        np.array(count, dtype=np.int64)
        if isinstance(count, list) and len(count) == len(names)
        else np.zeros(len(names), dtype=np.int64)
    )
    return FeatureStats(tuple(names), vectors["mean"], vectors["std"], counts)

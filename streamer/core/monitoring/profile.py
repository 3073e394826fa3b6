"""Reference profiles: what a model's inputs and score looked like on its training data.

``streamer profile TRAIN.csv -o profile.json`` reads the file twice, in chunks:

1. a uniform sample of at most ``sample_rows`` rows (bottom-k on seeded random
   keys, so a file larger than memory is fine) gives each feature's quantile bin
   edges, and the model's score on the sampled rows gives the score's edges;
2. every row is then counted into those bins, exactly, with the same
   :func:`assign_bins` the live monitor uses, so that a stream drawn from the
   training distribution has a PSI near 0.

Edges are the sample's quantiles at ``0, 1/bins, ..., 1``; repeated quantiles
(a discrete feature) are merged, so a feature may have fewer bins than asked.
The first edge is the minimum and the last the maximum: a value outside them is
out of range, and is still counted in the first or last bin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.core.files import json_object, read_file
from streamer.errors import ModelLoadError

PROFILE_FORMAT = "streamer-profile/1"
DEFAULT_BINS = 10
DEFAULT_SAMPLE_ROWS = 200_000


@dataclass(frozen=True)
class Binned:
    """One distribution: bin ``edges`` (len = bins + 1) and the reference ``fractions``."""

    edges: np.ndarray
    fractions: np.ndarray
    missing_rate: float = 0.0

    @property
    def bins(self) -> int:
        """The number of bins."""
        return len(self.fractions)

    @property
    def minimum(self) -> float:
        """The smallest reference value."""
        return float(self.edges[0])

    @property
    def maximum(self) -> float:
        """The largest reference value."""
        return float(self.edges[-1])

    def to_doc(self, name: str) -> dict[str, Any]:
        """The JSON object of this distribution."""
        return {
            "name": name,
            "edges": self.edges.tolist(),
            "fractions": self.fractions.tolist(),
            "missing_rate": self.missing_rate,
            "min": self.minimum,
            "max": self.maximum,
        }


@dataclass(frozen=True)
class Profile:
    """A reference profile: per feature and for the score, bins and fractions."""

    features: tuple[str, ...]
    distributions: tuple[Binned, ...]
    score: Binned
    score_output: str
    model_name: str
    model_version: str
    rows: int

    def feature(self, name: str) -> Binned:
        """The distribution of one feature."""
        return self.distributions[self.features.index(name)]

    def to_json(self, source: str = "") -> bytes:
        """The profile file's bytes."""
        doc: dict[str, Any] = {
            "format": PROFILE_FORMAT,
            "model": {"name": self.model_name, "version": self.model_version},
            "rows": self.rows,
            "features": [
                d.to_doc(n) for n, d in zip(self.features, self.distributions, strict=True)
            ],
            "score": self.score.to_doc(self.score_output),
        }
        if source:
            doc["source"] = source
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value: ``i`` when ``edges[i] <= v < edges[i+1]``, the last bin closed.

    Values below the first edge go to bin 0 and above the last to the last bin;
    NaN values get the bin ``len(edges) - 1`` (one past the last), the caller's
    "missing" slot.
    """
    inner = edges[1:-1]
    bins = np.searchsorted(inner, values, side="right")
    return np.where(np.isnan(values), len(edges) - 1, bins)


def quantile_edges(sample: np.ndarray, bins: int) -> np.ndarray:
    """Edges at the sample's quantiles ``0, 1/bins, ..., 1``, repeated ones merged."""
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return np.array([0.0, 0.0])
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size == 1:
        return np.array([edges[0], edges[0]])
    return edges


def bin_fractions(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(count per bin, missing count, total) of a 1-D array."""
    slots = assign_bins(values, edges)
    counts = np.bincount(slots, minlength=len(edges))
    return counts[:-1], int(counts[-1]), int(values.size)


class _BottomK:
    """A uniform sample of at most ``k`` rows of a stream: the rows with the k smallest keys."""

    def __init__(self, k: int, width: int, seed: int = 0) -> None:
        self._k = k
        self._rng = np.random.default_rng(seed)
        self._keys = np.empty(0)
        self._rows = np.empty((0, width))

    def add(self, chunk: np.ndarray) -> None:
        keys = np.concatenate([self._keys, self._rng.random(chunk.shape[0])])
        rows = np.concatenate([self._rows, chunk])
        if keys.size > self._k:
            keep = np.argpartition(keys, self._k)[: self._k]
            keep.sort()
            keys, rows = keys[keep], rows[keep]
        self._keys, self._rows = keys, rows

    @property
    def rows(self) -> np.ndarray:
        return self._rows


Scorer = Callable[[np.ndarray], np.ndarray]
"""Score raw feature rows (no NaN), in the model's feature order: one float per row."""


def build_profile(
    names: Sequence[str],
    read_chunks: Callable[[], Iterable[np.ndarray]],
    score: Scorer,
    *,
    model_name: str,
    model_version: str,
    score_output: str = "score",
    bins: int = DEFAULT_BINS,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
) -> Profile:
    """Profile a file given as chunks of raw features in ``names`` order (NaN = missing).

    ``read_chunks`` is called twice (two passes). Rows with a missing feature
    are counted in that feature's missing rate and are not scored.
    """
    if bins < 1:
        msg = f"bins must be >= 1, got {bins}"
        raise ValueError(msg)
    width = len(names)
    sample = _BottomK(sample_rows, width)
    for chunk in read_chunks():
        sample.add(np.asarray(chunk, dtype=np.float64))
    rows = sample.rows
    if rows.shape[0] == 0:
        msg = "the file has no rows"
        raise ValueError(msg)
    edges = [quantile_edges(rows[:, j], bins) for j in range(width)]
    complete = rows[~np.isnan(rows).any(axis=1)]
    if complete.shape[0] == 0:
        msg = "no row has every feature: nothing to score"
        raise ValueError(msg)
    score_edges = quantile_edges(score(complete), bins)
    counts = [np.zeros(len(e) - 1, dtype=np.int64) for e in edges]
    missing = np.zeros(width, dtype=np.int64)
    score_counts = np.zeros(len(score_edges) - 1, dtype=np.int64)
    total = 0
    for chunk in read_chunks():
        matrix = np.asarray(chunk, dtype=np.float64)
        total += matrix.shape[0]
        for j in range(width):
            in_bins, absent, _ = bin_fractions(matrix[:, j], edges[j])
            counts[j] += in_bins
            missing[j] += absent
        whole = matrix[~np.isnan(matrix).any(axis=1)]
        if whole.shape[0]:
            score_counts += bin_fractions(score(whole), score_edges)[0]
    distributions = tuple(
        Binned(edges[j], _fractions(counts[j]), float(missing[j]) / total) for j in range(width)
    )
    return Profile(
        features=tuple(names),
        distributions=distributions,
        score=Binned(score_edges, _fractions(score_counts)),
        score_output=score_output,
        model_name=model_name,
        model_version=model_version,
        rows=total,
    )


def _fractions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def _binned(doc: Any, where: str) -> Binned:
    try:
        edges = np.asarray(doc["edges"], dtype=np.float64)
        fractions = np.asarray(doc["fractions"], dtype=np.float64)
        missing = float(doc.get("missing_rate", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"{where} needs 'edges', 'fractions' and 'missing_rate' ({exc})"
        raise ValueError(msg) from None
    if edges.ndim != 1 or edges.size < 2 or fractions.shape != (edges.size - 1,):
        msg = f"{where}: 'edges' must have one more value than 'fractions'"
        raise ValueError(msg)
    if np.any(np.diff(edges) < 0) or not np.all(np.isfinite(edges)):
        msg = f"{where}: 'edges' must be finite and increasing"
        raise ValueError(msg)
    return Binned(edges, fractions, missing)


def parse_profile(doc: dict[str, Any]) -> Profile:
    """A Profile from its JSON object; ValueError names what is wrong."""
    if doc.get("format") != PROFILE_FORMAT:
        msg = f"'format' must be {PROFILE_FORMAT!r} (write it with `streamer profile`)"
        raise ValueError(msg)
    features = doc.get("features")
    if not isinstance(features, list) or not features:
        msg = "'features' must be a non-empty list"
        raise ValueError(msg)
    names = tuple(str(f.get("name", "")) for f in features)
    distributions = tuple(
        _binned(f, f"feature {n!r}") for f, n in zip(features, names, strict=True)
    )
    score_doc = doc.get("score")
    if not isinstance(score_doc, dict):
        msg = "'score' must be an object"
        raise ValueError(msg)  # noqa: TRY004 - a bad file, reported as ValueError like the rest
    model = doc.get("model") or {}
    return Profile(
        features=names,
        distributions=distributions,
        score=_binned(score_doc, "score"),
        score_output=str(score_doc.get("name", "score")),
        model_name=str(model.get("name", "")),
        model_version=str(model.get("version", "")),
        rows=int(doc.get("rows", 0)),
    )


def load_profile(path: str | Path) -> Profile:
    """Read a profile file; ModelLoadError (exit 2) names the file and the problem."""
    doc = json_object(read_file("monitoring.profile_path", path), f"profile {path}")
    try:
        return parse_profile(doc)
    except ValueError as exc:
        msg = f"profile {path}: {exc}"
        raise ModelLoadError(msg) from None


def check_profile(profile: Profile, features: Sequence[str], source: str) -> None:
    """Raise ValueError when the profile's features are not the model's (names and order)."""
    if tuple(features) != profile.features:
        msg = (
            f"{source} profiles features {list(profile.features)} but the model reads "
            f"{list(features)}; make it again with `streamer profile` for this model"
        )
        raise ValueError(msg)

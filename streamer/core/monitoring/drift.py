"""Live drift against a reference profile, over a sliding window of records.

Each record that reaches the model becomes one row of small integer codes, one
per feature (see :class:`CodeWindow`). The window keeps the codes of the last
``window_records`` records (and, when ``window_s`` > 0, only those that arrived
in the last ``window_s`` seconds), and a count per (feature, code) that is
updated as rows enter and leave. The counts, and so every gauge, depend only on
which records are in the window, never on how they were split into batches.

Codes of a feature with ``B`` slots (``B`` = the most bins of any feature):

- ``0 .. B-1``: the value's bin, value within the reference min and max;
- ``B .. 2B-1``: the bin plus B, value outside the reference range;
- ``2B``: missing or invalid (the record was dead-lettered for this feature);
- ``2B+1``: not observed (the record was dead-lettered for another feature).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamer.core.monitoring.profile import Binned, Profile

PSI_FLOOR = 1e-4
"""A bin's fraction is floored at this before the log, so an empty bin gives a large, finite PSI."""

_FEATURE_IN_DETAIL = re.compile(r"^feature '((?:[^'\\]|\\.)*)'")


def psi(actual: np.ndarray, expected: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of two distributions (fractions, or counts normalised here).

    ``sum((a - e) * ln(a / e))`` over the bins, each fraction floored at ``floor``.
    Returns NaN when ``actual`` is empty.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    a_total, e_total = a.sum(), e.sum()
    if a_total <= 0 or e_total <= 0:
        return float("nan")
    a = np.maximum(a / a_total, floor)
    e = np.maximum(e / e_total, floor)
    return float(np.sum((a - e) * np.log(a / e)))


class CodeWindow:
    """The last ``capacity`` rows of codes (and only those younger than ``window_s``), counted.

    Not thread-safe: :class:`DriftMonitor` holds the lock.
    """

    def __init__(self, width: int, slots: int, capacity: int, window_s: float = 0.0) -> None:
        self.width = width
        self.slots = slots
        self.capacity = capacity
        self.window_s = window_s
        self.counts = np.zeros((width, slots), dtype=np.int64)
        self.size = 0
        self._chunks: deque[tuple[float, np.ndarray]] = deque()
        self._offsets = np.arange(width, dtype=np.int64) * slots

    def _count(self, codes: np.ndarray) -> np.ndarray:
        flat = (codes + self._offsets).ravel()
        return np.bincount(flat, minlength=self.width * self.slots).reshape(self.width, self.slots)

    def add(self, codes: np.ndarray, now: float) -> None:
        """Append rows of codes (shape (n, width)), then evict the oldest beyond the bounds."""
        if codes.shape[0] > self.capacity:
            codes = codes[-self.capacity :]
        if codes.shape[0]:
            self._chunks.append((now, codes))
            self.counts += self._count(codes)
            self.size += codes.shape[0]
        self.expire(now)
        while self.size > self.capacity:
            stamp, oldest = self._chunks[0]
            excess = self.size - self.capacity
            if excess >= oldest.shape[0]:
                self._chunks.popleft()
                self.counts -= self._count(oldest)
                self.size -= oldest.shape[0]
            else:
                self.counts -= self._count(oldest[:excess])
                self._chunks[0] = (stamp, oldest[excess:])
                self.size -= excess

    def expire(self, now: float) -> None:
        """Drop the chunks older than ``window_s`` (when it is set)."""
        if self.window_s <= 0:
            return
        while self._chunks and self._chunks[0][0] < now - self.window_s:
            _, oldest = self._chunks.popleft()
            self.counts -= self._count(oldest)
            self.size -= oldest.shape[0]


@dataclass(frozen=True)
class DriftSnapshot:
    """The gauges of one moment; NaN where the window holds no value to judge."""

    features: tuple[str, ...]
    feature_psi: np.ndarray
    missing_ratio: np.ndarray
    out_of_range_ratio: np.ndarray
    score_psi: float
    score_edges: np.ndarray
    score_counts: np.ndarray
    """Window's scores per reference bin (values outside the range in the end bins)."""
    score_reference: np.ndarray
    records: int
    scores: int
    model_version: str

    def worst(self) -> tuple[str, float]:
        """(feature, PSI) of the feature with the highest PSI; ('', nan) when none is known."""
        if not self.features or np.all(np.isnan(self.feature_psi)):
            return "", float("nan")
        index = int(np.nanargmax(self.feature_psi))
        return self.features[index], float(self.feature_psi[index])


FLUSH_ROWS = 4096
"""Observed rows are binned in groups of about this many (and at each snapshot)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """One observed batch, not binned yet."""

    features: np.ndarray
    rows: np.ndarray
    rejected: tuple[tuple[int, str], ...]
    scores: np.ndarray
    """One per row of ``features``; NaN where the model failed on the row."""
    now: float


def _padded(binned: Binned, slots: int) -> np.ndarray:
    out = np.zeros(slots)
    out[: binned.bins] = binned.fractions
    return out


class DriftMonitor:
    """Drift of the live inputs and score against a :class:`Profile`, shared by the model actors.

    ``observe`` is called by each model actor after scoring a batch, on its own
    thread; ``snapshot`` by the metrics exposition. A lock orders them.
    :meth:`set_scaling` says the features arrive as ``(x - mean) / std``: the
    profile's edges (raw units) are then mapped into that space once.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        window_records: int = 10_000,
        window_s: float = 0.0,
    ) -> None:
        self.profile = profile
        self._bins = max(d.bins for d in profile.distributions)
        width = len(profile.features)
        self._features = CodeWindow(width, 2 * self._bins + 2, window_records, window_s)
        # The score's window holds the same records as the features' (one code a record), so
        # that the score gauges cover the same window: a record that was not scored (dead-
        # lettered before or by the model) takes the code ``score.bins``, which no gauge counts.
        self._score = CodeWindow(1, profile.score.bins + 1, window_records, window_s)
        self._reference = np.stack([_padded(d, self._bins) for d in profile.distributions])
        self._column = {name: j for j, name in enumerate(profile.features)}
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._pending_rows = 0
        self._inner: list[np.ndarray] = []
        self.set_scaling(None, None)
        self.model_version = profile.model_version

    def set_scaling(self, mean: np.ndarray | None, std: np.ndarray | None) -> None:
        """Features arrive standardized with this mean and std (None: raw values).

        The profile's edges are standardized with the very operations the
        preprocessor applies to the values, so a value equal to an edge stays
        equal to it, bit for bit (a discrete feature has values on its edges).
        """
        edges = [d.edges for d in self.profile.distributions]
        if mean is not None and std is not None:
            edges = [(e - mean[j]) / std[j] for j, e in enumerate(edges)]
        with self._lock:
            self._flush()  # what was observed before is binned with the scaling it came with
            self._inner = [e[1:-1] for e in edges]
            self._low = np.array([e[0] for e in edges])
            self._high = np.array([e[-1] for e in edges])

    def feature_codes(self, features: np.ndarray) -> np.ndarray:
        """The codes of scored rows (shape (n, width)), from the model's input matrix."""
        codes = np.empty(features.shape, dtype=np.int64)
        for j, inner in enumerate(self._inner):
            codes[:, j] = np.searchsorted(inner, features[:, j], side="right")
        outside = (features < self._low) | (features > self._high)
        return codes + outside * self._bins

    def rejected_codes(self, details: Sequence[str]) -> np.ndarray:
        """The codes of records dead-lettered for a feature, from their dead-letter details."""
        codes = np.full((len(details), len(self._inner)), 2 * self._bins + 1, dtype=np.int64)
        for row, detail in enumerate(details):
            match = _FEATURE_IN_DETAIL.match(detail)
            column = self._column.get(match.group(1)) if match else None
            if column is not None:
                codes[row, column] = 2 * self._bins
        return codes

    def observe(
        self,
        features: np.ndarray,
        feature_rows: np.ndarray,
        rejected: Sequence[tuple[int, str]],
        scores: np.ndarray,
        now: float,
        model_version: str = "",
    ) -> None:
        """Add one batch to the window.

        ``features`` are the prepared rows (at batch positions ``feature_rows``),
        ``rejected`` the rows dead-lettered for a feature as (position, detail),
        and ``scores`` the score of each prepared row (NaN where the model failed on it).
        """
        with self._lock:
            self._pending.append(_Pending(features, feature_rows, tuple(rejected), scores, now))
            self._pending_rows += len(features) + len(rejected)
            if model_version:
                self.model_version = model_version
            if self._pending_rows >= FLUSH_ROWS:
                self._flush()

    def _flush(self) -> None:
        """Bin the batches observed since the last flush, all at once (the lock is held).

        A numpy call costs microseconds whatever its size: binning a few
        thousand rows at once instead of each small batch apart keeps the
        cost per record low. The order of the records is kept, so the window
        holds the same records either way.
        """
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return
        codes = self.feature_codes(np.concatenate([p.features for p in pending]))
        unscored = self.profile.score.bins
        scores = np.concatenate([p.scores for p in pending])
        score_codes = np.searchsorted(self.profile.score.edges[1:-1], scores, side="right")
        score_codes[np.isnan(scores)] = unscored
        parts = []
        score_parts = []
        start = 0
        for p in pending:
            part = codes[start : start + len(p.features)]
            score_part = score_codes[start : start + len(p.features)]
            start += len(p.features)
            if p.rejected:
                positions = np.concatenate([p.rows, [pos for pos, _ in p.rejected]])
                order = np.argsort(positions, kind="stable")
                part = np.concatenate([part, self.rejected_codes([d for _, d in p.rejected])])
                part = part[order]
                score_part = np.concatenate([score_part, np.full(len(p.rejected), unscored)])
                score_part = score_part[order]
            parts.append(part)
            score_parts.append(score_part)
        now = pending[-1].now
        self._features.add(np.concatenate(parts), now)
        self._score.add(np.concatenate(score_parts).reshape(-1, 1), now)

    def snapshot(self, now: float | None = None) -> DriftSnapshot:
        """The gauges now (expiring records older than ``window_s`` first, if ``now`` is given)."""
        with self._lock:
            self._flush()
            if now is not None:
                self._features.expire(now)
                self._score.expire(now)
            counts = self._features.counts.copy()
            records = self._features.size
            score_counts = self._score.counts[0, : self.profile.score.bins].copy()
            version = self.model_version
        b = self._bins
        values = counts[:, :b] + counts[:, b : 2 * b]
        observed = values.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out_of_range = np.where(
                observed > 0, counts[:, b : 2 * b].sum(axis=1) / observed, np.nan
            )
            missing = counts[:, 2 * b] / records if records else np.full(len(counts), np.nan)
        feature_psi = np.array([psi(values[j], self._reference[j]) for j in range(len(values))])
        return DriftSnapshot(
            features=self.profile.features,
            feature_psi=feature_psi,
            missing_ratio=np.asarray(missing, dtype=np.float64),
            out_of_range_ratio=np.asarray(out_of_range, dtype=np.float64),
            score_psi=psi(score_counts, self.profile.score.fractions),
            score_edges=self.profile.score.edges,
            score_counts=score_counts,
            score_reference=self.profile.score.fractions,
            records=records,
            scores=int(score_counts.sum()),
            model_version=version,
        )

"""Champion/challenger agreement: score deltas, decision flips and score PSI, counted.

One :class:`Agreement` per challenger; its challenger actor adds each batch it
scored, and the metrics exposition reads it (a lock orders them). Counters only
grow; the PSI is over a window of the last ``window_records`` rows both scored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from streamer.core.monitoring.drift import CodeWindow, psi

DELTA_BUCKETS = (-0.5, -0.2, -0.1, -0.05, -0.01, 0.0, 0.01, 0.05, 0.1, 0.2, 0.5)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_SCORE_EDGES = np.linspace(0.0, 1.0, 11)


def flips(champion: np.ndarray, challenger: np.ndarray, threshold: float) -> int:
    """Rows whose decision (score >= threshold) differs between the two models."""
    return int(np.count_nonzero((champion >= threshold) != (challenger >= threshold)))


@dataclass(frozen=True)
class AgreementSnapshot:
    """The counters and the PSI of one challenger at one moment."""

    scored: int
    skipped: int
    failed: int
    compared: int
    flips: int
    delta_counts: np.ndarray
    delta_sum: float
    latency_counts: np.ndarray
    latency_sum: float
    score_psi: float


class Agreement:
    """What one challenger did and how it agreed with the champion."""

    def __init__(
        self,
        threshold: float,
        score_edges: np.ndarray | None = None,
        window_records: int = 10_000,
    ) -> None:
        self.threshold = threshold
        self._edges = DEFAULT_SCORE_EDGES if score_edges is None else score_edges
        self._bins = len(self._edges) - 1
        self._window = CodeWindow(2, self._bins, window_records)
        self._delta_bounds = np.asarray(DELTA_BUCKETS)
        self._latency_bounds = np.asarray(LATENCY_BUCKETS)
        self._lock = threading.Lock()
        self._scored = self._skipped = self._failed = self._compared = self._flips = 0
        self._delta_counts = np.zeros(len(DELTA_BUCKETS) + 1, dtype=np.int64)
        self._delta_sum = 0.0
        self._latency_counts = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
        self._latency_sum = 0.0

    def skipped(self) -> None:
        """A batch was not sent to the challenger: too many were still waiting for it."""
        with self._lock:
            self._skipped += 1

    def failed(self, seconds: float) -> None:
        """The challenger raised on a batch."""
        with self._lock:
            self._failed += 1
            self._latency(seconds)

    def scored(self, champion: np.ndarray, challenger: np.ndarray, seconds: float) -> None:
        """The challenger scored a batch: compare its scores to the champion's, row by row."""
        delta = challenger - champion
        delta_counts = np.bincount(
            np.searchsorted(self._delta_bounds, delta, side="left"),
            minlength=len(self._delta_counts),
        )
        codes = np.column_stack(
            [
                np.searchsorted(self._edges[1:-1], champion, side="right"),
                np.searchsorted(self._edges[1:-1], challenger, side="right"),
            ]
        )
        flipped = flips(champion, challenger, self.threshold)
        with self._lock:
            self._scored += 1
            self._compared += len(delta)
            self._flips += flipped
            self._delta_counts += delta_counts
            self._delta_sum += float(delta.sum())
            self._latency(seconds)
            self._window.add(codes, 0.0)

    def _latency(self, seconds: float) -> None:
        self._latency_counts[int(np.searchsorted(self._latency_bounds, seconds, side="left"))] += 1
        self._latency_sum += seconds

    def snapshot(self) -> AgreementSnapshot:
        """The counters now."""
        with self._lock:
            counts = self._window.counts.copy()
            return AgreementSnapshot(
                scored=self._scored,
                skipped=self._skipped,
                failed=self._failed,
                compared=self._compared,
                flips=self._flips,
                delta_counts=self._delta_counts.copy(),
                delta_sum=self._delta_sum,
                latency_counts=self._latency_counts.copy(),
                latency_sum=self._latency_sum,
                score_psi=psi(counts[1], counts[0]),
            )


class PendingSlots:
    """The skip policy: at most ``limit`` batches wait for a challenger at once.

    The model actor takes a slot before it sends a batch and skips the
    challenger for that batch when none is free; the challenger gives the slot
    back when it is done with the batch, scored or failed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._taken = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take a slot; False when all ``limit`` are taken."""
        with self._lock:
            if self._taken >= self.limit:
                return False
            self._taken += 1
            return True

    def give_back(self) -> None:
        """Free a slot."""
        with self._lock:
            self._taken -= 1

    @property
    def taken(self) -> int:
        """Slots in use."""
        with self._lock:
            return self._taken

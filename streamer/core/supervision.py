"""Restart policy and the dead-letter circuit breaker: pure, clock passed in."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartDecision:
    """Whether to restart, after how long, and why not when refused."""

    restart: bool
    delay_s: float
    reason: str = ""


class RestartPolicy:
    """OTP-style restart intensity: at most ``max_restarts`` within ``window_s``.

    The backoff doubles with each restart inside the window, from ``initial_s``
    up to ``max_s``, so that a crash loop does not spin.
    """

    def __init__(self, max_restarts: int, window_s: float, initial_s: float, max_s: float) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.initial_s = initial_s
        self.max_s = max_s
        self._restarts: deque[float] = deque()

    def on_failure(self, now: float) -> RestartDecision:
        """Record a failure at ``now`` and decide."""
        while self._restarts and now - self._restarts[0] > self.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.max_restarts:
            reason = (
                f"{len(self._restarts) + 1} failures within {self.window_s:g}s exceed "
                f"supervision.max_restarts={self.max_restarts}"
            )
            return RestartDecision(restart=False, delay_s=0.0, reason=reason)
        delay = min(self.max_s, self.initial_s * (2 ** len(self._restarts)))
        self._restarts.append(now)
        return RestartDecision(restart=True, delay_s=delay)

    @property
    def recent_restarts(self) -> int:
        """Restarts inside the current window."""
        return len(self._restarts)


class DeadLetterBreaker:
    """Trips when dead letters exceed ``max_ratio`` of the last ``window_records`` records.

    It judges only once ``window_records`` records were seen, so that a few bad
    records at start do not trip it; a broken model or a wrong feature config
    dead-letters nearly everything and trips it within one window.
    """

    def __init__(self, max_ratio: float, window_records: int) -> None:
        self.max_ratio = max_ratio
        self.window_records = window_records
        self._batches: deque[tuple[int, int]] = deque()
        self._records = 0
        self._dead = 0

    def record(self, records: int, dead_letters: int) -> bool:
        """Add one batch's counts; returns True when the breaker trips."""
        self._batches.append((records, dead_letters))
        self._records += records
        self._dead += dead_letters
        while self._batches and self._records - self._batches[0][0] >= self.window_records:
            old_records, old_dead = self._batches.popleft()
            self._records -= old_records
            self._dead -= old_dead
        return self._records >= self.window_records and self.ratio > self.max_ratio

    @property
    def ratio(self) -> float:
        """Dead letters over records in the window."""
        return self._dead / self._records if self._records else 0.0

    @property
    def records(self) -> int:
        """Records in the window."""
        return self._records

"""Restart policy and the dead-letter circuit breaker: pure, clock passed in."""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

# The field a dead letter's detail names: "feature 'mean_radius' is missing; ...".
_FEATURE = re.compile(r"""feature ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


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


@dataclass(frozen=True)
class BreakerCause:
    """The dominant (reason, field) among the dead letters of the breaker's window."""

    reason: str
    feature: str
    """The field's name as the detail quotes it (``'mean_radius'``), or '' when none is named."""
    count: int
    records: int
    example: str
    """One such dead letter's detail, which may say what the record carries instead."""

    def __str__(self) -> str:
        subject = f"{self.reason} {self.feature}" if self.feature else self.reason
        hint = self.example.partition("; ")[2]
        text = f"{subject} in {self.count} of {self.records} records"
        return f"{text}; {hint}" if hint else f"{text} (e.g. {self.example})"


def feature_of(detail: str) -> str:
    """The quoted field a dead letter's detail names, or ''."""
    match = _FEATURE.search(detail)
    return match[1] if match else ""


class DeadLetterBreaker:
    """Trips when dead letters exceed ``max_ratio`` of the last ``window_records`` records.

    It judges only once ``window_records`` records were seen, so that a few bad
    records at start do not trip it; a broken model or a wrong feature config
    dead-letters nearly everything and trips it within one window. It counts
    the dead letters of the window by (reason, field) too, so that its stop
    can name the cause (:attr:`cause`).
    """

    def __init__(self, max_ratio: float, window_records: int) -> None:
        self.max_ratio = max_ratio
        self.window_records = window_records
        self._batches: deque[tuple[int, int, Counter[tuple[str, str]]]] = deque()
        self._records = 0
        self._dead = 0
        self._causes: Counter[tuple[str, str]] = Counter()
        self._examples: dict[tuple[str, str], str] = {}

    def record(
        self, records: int, dead_letters: int, causes: Iterable[tuple[str, str]] = ()
    ) -> bool:
        """Add one batch's counts and its dead letters' (reason, detail); True when it trips."""
        batch_causes: Counter[tuple[str, str]] = Counter()
        for reason, detail in causes:
            key = (reason, feature_of(detail))
            batch_causes[key] += 1
            self._examples.setdefault(key, detail)
        self._batches.append((records, dead_letters, batch_causes))
        self._records += records
        self._dead += dead_letters
        self._causes.update(batch_causes)
        while self._batches and self._records - self._batches[0][0] >= self.window_records:
            old_records, old_dead, old_causes = self._batches.popleft()
            self._records -= old_records
            self._dead -= old_dead
            self._causes.subtract(old_causes)
        return self._records >= self.window_records and self.ratio > self.max_ratio

    @property
    def ratio(self) -> float:
        """Dead letters over records in the window."""
        return self._dead / self._records if self._records else 0.0

    @property
    def records(self) -> int:
        """Records in the window."""
        return self._records

    @property
    def cause(self) -> BreakerCause | None:
        """The most frequent (reason, field) of the window's dead letters, if any."""
        ranked = [(count, key) for key, count in self._causes.items() if count > 0]
        if not ranked:
            return None
        count, (reason, feature) = max(ranked)
        example = self._examples.get((reason, feature), "")
        return BreakerCause(reason, feature, count, self._records, example)

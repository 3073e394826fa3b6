"""What every backend's ``read_records`` shares: ends, pacing, progress and the deadline.

``read_records`` (at the end of each backend module) reads whole topics from
the beginning to their end without a group, for :mod:`streamer.devtools.verify`. The
backend polls and hands the records on; a :class:`WholeTopicRead` decides the
rest, the same way for both clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from streamer.core.reconcile import Pacer
from streamer.core.records import TP
from streamer.errors import BrokerError

ProgressCallback = Callable[[int, int], None]


class WholeTopicRead:
    """The state of one read of whole topics.

    The deadline follows progress: :meth:`step` raises only when no records
    arrived and no partition reached its end for ``idle_timeout_s``.
    """

    def __init__(
        self,
        topics: Sequence[str],
        tps: Iterable[TP],
        *,
        idle_timeout_s: float,
        on_progress: ProgressCallback | None = None,
        progress_interval_s: float = 1.0,
    ) -> None:
        self.topics = list(topics)
        self.tps = list(tps)
        self.remaining = set(self.tps)
        self.ends: dict[TP, int] = {}
        self.read = 0
        self.paused: set[TP] = set()
        self._pacer = Pacer(self.tps)
        self._idle_timeout_s = idle_timeout_s
        self._on_progress = on_progress
        self._progress_interval_s = progress_interval_s
        self._progressed = False
        self._last_progress = self._last_report = time.monotonic()

    def delivered(self, tp: TP, timestamps: list[int]) -> None:
        """Records of ``tp`` with these timestamps were handed on."""
        self.read += len(timestamps)
        if timestamps:
            self._pacer.read(tp, timestamps[-1], timestamps[0])
        self._progressed = True

    def finished(self, tp: TP, end: int) -> None:
        """``tp`` was read to its end offset ``end``; the backend pauses it for good."""
        self.remaining.discard(tp)
        self.ends[tp] = end
        self._pacer.finished(tp)
        self.paused.discard(tp)
        self._progressed = True

    def step(
        self, total: Callable[[], int], unfinished: Callable[[], str]
    ) -> tuple[set[TP], set[TP]]:
        """After a poll: report progress, check the deadline, and say what to pause and resume.

        Args:
            total: The records known to exist so far (for the progress line).
            unfinished: Where the unfinished partitions are (for the error).

        Returns:
            The partitions to pause and to resume now, to keep pace (see Pacer).

        Raises:
            BrokerError: No progress for ``idle_timeout_s``.
        """
        now = time.monotonic()
        if self._progressed:
            self._last_progress = now
            self._progressed = False
        elif now - self._last_progress > self._idle_timeout_s:
            msg = (
                f"could not read {', '.join(self.topics)} to the end: no progress for "
                f"{self._idle_timeout_s:g}s after {self.read} records (unfinished: {unfinished()})"
            )
            raise BrokerError(msg)
        if self._on_progress is not None and now - self._last_report >= self._progress_interval_s:
            self._last_report = now
            self._on_progress(self.read, total())
        ahead = self._pacer.ahead()
        pause, resume = ahead - self.paused, self.paused - ahead
        self.paused = ahead
        return pause, resume

    def done(self, total: Callable[[], int]) -> None:
        """The last progress report."""
        if self._on_progress is not None:
            self._on_progress(self.read, total())

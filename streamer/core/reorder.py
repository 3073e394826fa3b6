"""Restore per-partition order after parallel stages."""

from __future__ import annotations

from typing import Generic, TypeVar

from streamer.core.records import TP

T = TypeVar("T")


class Reorderer(Generic[T]):
    """Releases items of each partition strictly in ``seq`` order (0, 1, 2, ...).

    Items that arrive early wait until every earlier sequence number of their
    partition has been released.
    """

    def __init__(self) -> None:
        self._next: dict[TP, int] = {}
        self._waiting: dict[TP, dict[int, T]] = {}

    def push(self, tp: TP, seq: int, item: T) -> list[T]:
        """Add an item; return the items now releasable, in order."""
        expected = self._next.setdefault(tp, 0)
        if seq < expected:
            msg = f"sequence {seq} on {tp[0]}/{tp[1]} was already released (next is {expected})"
            raise ValueError(msg)
        waiting = self._waiting.setdefault(tp, {})
        if seq in waiting:
            msg = f"sequence {seq} on {tp[0]}/{tp[1]} pushed twice"
            raise ValueError(msg)
        waiting[seq] = item
        released: list[T] = []
        while expected in waiting:
            released.append(waiting.pop(expected))
            expected += 1
        self._next[tp] = expected
        return released

    @property
    def waiting(self) -> int:
        """Items held back for an earlier sequence number."""
        return sum(len(w) for w in self._waiting.values())

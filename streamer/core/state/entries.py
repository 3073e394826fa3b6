"""One key's window entries as columns, and the features of a record computed from them.

A key's :class:`~streamer.core.state.codec.KeyState` is decoded once per
batch (or kept decoded between batches) into a :class:`KeyEntries`: its
entries' times and fields as Python lists in offset order, so a window is
found with ``bisect`` and its sums read a list slice, in C, and the lists are
encoded back as they are.

While the times are in order too (records of a key arrive in time order, the
usual case), the entries of a window ``(low, high]`` are the contiguous run
found by bisecting the times, in the same (offset) order as the filter
``[i for i, t in enumerate(times) if low < t <= high]`` gives them: the same
values in the same order, so every aggregation computes the same float, bit
for bit. A key with an out-of-order entry takes the filter until that entry
leaves its horizon.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from fractions import Fraction
from math import fsum
from typing import cast

from streamer.core.state.codec import FieldValue, KeyState

COUNT, SUM, TIME_SINCE_LAST, LAST, OTHER = range(5)
"""How a feature's value is computed from its window (OTHER: :func:`aggregate`)."""

_KINDS = {"count": COUNT, "sum": SUM, "time_since_last": TIME_SINCE_LAST, "last": LAST}

FeaturePlan = tuple[int, int, int, int, bool, float, str]
"""One feature of a group: (its index among the values, kind, window slot, field,
include_current, default, agg)."""


def feature_kind(agg: str) -> int:
    """The kind of an aggregation (see :data:`COUNT`)."""
    return _KINDS.get(agg, OTHER)


def _in_order(times: list[int]) -> bool:
    return times == sorted(times)


class KeyEntries:
    """A key's newest time and entries (times, and per field its values) in offset order.

    ``ordered``: the times never decrease, so a window is a run of the lists.
    """

    __slots__ = ("columns", "newest_us", "ordered", "sums", "times")

    def __init__(self, newest_us: int, times: list[int], columns: list[list[FieldValue]]) -> None:
        self.newest_us = newest_us
        self.times = times
        self.columns = columns
        self.ordered = _in_order(times)
        self.sums: bytearray | None = None
        """The compiled loop's window sums kept between records (_engine.c, SumCache): valid
        while entries are only appended; whatever removes entries here sets it to None."""

    @classmethod
    def first(cls, time_us: int, fields: Sequence[FieldValue]) -> KeyEntries:
        """A key whose only entry is the record at ``time_us`` with ``fields``."""
        return cls(time_us, [time_us], [[value] for value in fields])

    @classmethod
    def from_state(cls, state: KeyState) -> KeyEntries:
        """The decoded state of a key (its lists are taken, not copied)."""
        return cls(state.newest_us, state.times, state.columns)

    def to_state(self) -> KeyState:
        """The key state to store (its lists, encoded as they are)."""
        return KeyState(self.newest_us, self.times, self.columns)

    def bounds(self, time_us: int, windows_us: Sequence[int]) -> tuple[list[int], int]:
        """The windows ``(time_us - w, time_us]`` as runs ``[lo, hi)`` (ordered only): (los, hi)."""
        times = self.times
        hi = len(times) if time_us >= self.newest_us else bisect_right(times, time_us)
        return [bisect_right(times, time_us - w, 0, hi) for w in windows_us], hi

    def filtered(self, low: int, high: int) -> tuple[list[int], list[list[FieldValue]]]:
        """The times and columns of the entries with a time in ``(low, high]``, in offset order."""
        keep = [i for i, t in enumerate(self.times) if low < t <= high]
        times = self.times
        return [times[i] for i in keep], [[column[i] for i in keep] for column in self.columns]

    def add(self, time_us: int, fields: Sequence[FieldValue], keep_above: int) -> None:
        """Drop the entries at or below ``keep_above``, then append the record's entry."""
        times = self.times
        if not self.ordered or (times and times[0] <= keep_above):
            self.drop(keep_above)
            times = self.times
        if time_us >= self.newest_us:
            self.newest_us = time_us
        elif self.ordered and times and time_us < times[-1]:
            self.ordered = False
        times.append(time_us)
        for column, value in zip(self.columns, fields, strict=True):
            column.append(value)

    def drop(self, keep_above: int) -> None:
        """Drop the entries at or below ``keep_above`` (the oldest, while ordered)."""
        self.sums = None  # their places move: the compiled loop's cached sums are stale
        times = self.times
        if self.ordered:
            drop = bisect_right(times, keep_above)
            del times[:drop]
            for column in self.columns:
                del column[:drop]
        elif any(t <= keep_above for t in times):
            keep = [i for i, t in enumerate(times) if t > keep_above]
            self.times = times = [times[i] for i in keep]
            self.columns = [[column[i] for i in keep] for column in self.columns]
            self.ordered = _in_order(times)


def feature_values(
    features: Sequence[FeaturePlan],
    bounds: Sequence[int],
    times: list[int],
    columns: list[list[FieldValue]],
    hi: int,
    ordered: bool,
    time_us: int,
    fields: Sequence[FieldValue],
    out: list[float],
) -> None:
    """Each feature's value into ``out``: its window is the entries ``[bounds[slot], hi)``.

    ``ordered``: the times never decrease, so the newest entry of a window is
    its last one (the newest time, and the newest offset among equal times).
    """
    for feature in features:
        index, kind, slot, field, include_current, default, _agg = feature
        lo = bounds[slot]
        if kind == COUNT:
            out[index] = float(hi - lo + include_current)
        elif kind == SUM:
            seen = columns[field][lo:hi]
            if include_current:
                seen.append(fields[field])
            try:
                out[index] = fsum(seen)  # type: ignore[arg-type] # a numeric field holds floats
            except OverflowError:
                out[index] = exact_sum(seen)  # type: ignore[arg-type]
        elif kind == TIME_SINCE_LAST:
            if lo == hi:
                out[index] = default
            else:
                newest = times[hi - 1] if ordered else max(times[lo:hi])
                out[index] = (time_us - newest) / 1_000_000
        else:
            out[index] = window_value(
                kind, lo, hi, times, columns[field], ordered, fields[field], feature
            )


def window_value(
    kind: int,
    lo: int,
    hi: int,
    times: list[int],
    column: list[FieldValue],
    ordered: bool,
    current: FieldValue,
    feature: FeaturePlan,
) -> float:
    """``last``, or :func:`aggregate`'s aggregations, over the entries ``[lo, hi)``."""
    _index, _kind, _slot, _field, include_current, default, agg = feature
    if kind == LAST:
        if include_current:
            return float(current)
        if lo == hi:
            return default
        at = hi - 1 if ordered else max(range(lo, hi), key=lambda i: (times[i], i))
        return float(column[at])
    seen = column[lo:hi]
    if include_current:
        seen.append(current)
    return aggregate(agg, seen, default)


def aggregate(  # noqa: PLR0911 - one return per aggregation
    agg: str, values: Sequence[FieldValue], default: float
) -> float:
    """sum, mean, min, max, std, distinct_count over a window's values; order never matters."""
    if agg == "distinct_count":
        return float(len(set(values)))
    if agg == "sum":  # fsum reads each number as float() does
        return exact_sum(cast("Sequence[float]", values))  # a numeric field holds floats
    numbers = list(map(float, values))
    if not numbers:
        return default
    if agg == "min":
        return min(numbers)
    if agg == "max":
        return max(numbers)
    mean = exact_sum(numbers) / len(numbers)
    if agg == "mean":
        return mean
    if agg == "std":
        try:
            squares = fsum([(x - mean) ** 2 for x in numbers])
        except OverflowError:  # a deviation beyond 1e154: its square is not a float
            return math.inf
        return math.sqrt(squares / len(numbers))
    msg = f"unknown aggregation {agg!r}"
    raise ValueError(msg)


def exact_sum(values: Sequence[float]) -> float:
    """``math.fsum``: the correctly rounded sum; infinite where that overflows.

    fsum raises OverflowError instead (for two values of 1e308, and for
    1e308, 1e308, -1e308 too, whose sum is a float): the exact sum in
    fractions then, rounded once.
    """
    try:
        return fsum(values)
    except OverflowError:
        total = sum(map(Fraction, values), Fraction(0))
        try:
            return float(total)
        except OverflowError:
            return math.inf if total > 0 else -math.inf

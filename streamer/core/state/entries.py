"""One key's window entries, decoded once per batch, with its times and fields as columns.

The engine used to decode a key's :class:`KeyState`, filter its entries by
time for every window, and encode it again, for every record. A
:class:`KeyEntries` is decoded once per batch and encoded once at its end,
and keeps each entry's time and fields in columns (Python lists), so a window
is found with ``bisect`` and its sums read a list slice, in C.

Entries stay in offset order: the stored bytes are the same as before. While
the times are in order too (records of a key arrive in time order, the usual
case), the entries of a window ``(low, high]`` are the contiguous run found by
bisecting the times, in the same (offset) order as the filter
``[e for e in entries if low < e.time_us <= high]`` gives them: the same
values in the same order, so every aggregation computes the same float, bit
for bit. A key with an out-of-order entry takes the filter, as before, until
that entry leaves its horizon.
"""

from __future__ import annotations

from bisect import bisect_right

from streamer.core.state.codec import Entry, FieldValue, KeyState


def _in_order(times: list[int]) -> bool:
    return times == sorted(times)


class KeyEntries:
    """A key's newest time and its entries in offset order; ``ordered``: times never decrease."""

    __slots__ = ("_columns", "_selects", "entries", "newest_us", "ordered", "times")

    def __init__(self, newest_us: int, entries: list[Entry], width: int) -> None:
        self.newest_us = newest_us
        self.entries = entries
        self.times = [e.time_us for e in entries]
        self._columns: list[list[FieldValue] | None] = [None] * width
        """Per field, its values (built when a later record of the batch reads the field)."""
        self._selects = 0
        self.ordered = _in_order(self.times)

    def column(self, field: int) -> list[FieldValue] | None:
        """One field's values in offset order, once a second record of the batch reads them.

        A key read once per batch (most keys) never pays for a whole column.
        """
        column = self._columns[field]
        if column is None and self._selects > 1:
            column = self._columns[field] = [e.values[field] for e in self.entries]
        return column

    @classmethod
    def from_state(cls, state: KeyState, width: int) -> KeyEntries:
        """The decoded state of a key whose group reads ``width`` fields."""
        return cls(state.newest_us, list(state.entries), width)

    def to_state(self) -> KeyState:
        """The key state to store: the same entries, in the same order."""
        return KeyState(self.newest_us, tuple(self.entries))

    def select(self, low: int, high: int) -> Window:
        """The entries whose time is in ``(low, high]``, in offset order."""
        times = self.times
        self._selects += 1
        if self.ordered:
            return Window(self, bisect_right(times, low), bisect_right(times, high), None)
        return Window(self, 0, 0, [i for i, t in enumerate(times) if low < t <= high])

    def add(self, entry: Entry, keep_above: int) -> None:
        """Drop the entries at or below ``keep_above``, then append ``entry``."""
        times = self.times
        if self.ordered:
            drop = bisect_right(times, keep_above)
            if drop:
                del times[:drop], self.entries[:drop]
                for column in self._columns:
                    if column is not None:
                        del column[:drop]
        elif any(t <= keep_above for t in times):
            keep = [i for i, t in enumerate(times) if t > keep_above]
            self.entries = [self.entries[i] for i in keep]
            self.times = times = [times[i] for i in keep]
            self._columns = [None] * len(self._columns)
            self.ordered = _in_order(times)
        if self.ordered and times and entry.time_us < times[-1]:
            self.ordered = False
        self.entries.append(entry)
        times.append(entry.time_us)
        for column, value in zip(self._columns, entry.values, strict=True):
            if column is not None:
                column.append(value)
        self.newest_us = max(self.newest_us, entry.time_us)


class Window:
    """The entries of one window of a key: a run ``[lo, hi)`` of the columns, or their indices."""

    __slots__ = ("_entries", "_hi", "_indices", "_lo")

    def __init__(self, entries: KeyEntries, lo: int, hi: int, indices: list[int] | None) -> None:
        self._entries = entries
        self._lo = lo
        self._hi = hi
        self._indices = indices

    def __len__(self) -> int:
        return self._hi - self._lo if self._indices is None else len(self._indices)

    def newest_time(self) -> int:
        """The newest time in the window (not empty)."""
        times = self._entries.times
        if self._indices is None:
            return times[self._hi - 1]
        return max(times[i] for i in self._indices)

    def last(self, field: int) -> FieldValue:
        """The field of the entry with the newest (time, offset) (not empty)."""
        entries = self._entries
        if self._indices is None:  # times in order, offsets increasing: the last one
            return entries.entries[self._hi - 1].values[field]
        times, listed = entries.times, entries.entries
        newest = max(self._indices, key=lambda i: (times[i], listed[i].offset))
        return listed[newest].values[field]

    def values(self, field: int) -> list[FieldValue]:
        """The field's values, in offset order."""
        column = self._entries.column(field)
        if column is None:
            listed = self._entries.entries
            if self._indices is None:
                return [e.values[field] for e in listed[self._lo : self._hi]]
            return [listed[i].values[field] for i in self._indices]
        if self._indices is None:
            return column[self._lo : self._hi]
        return [column[i] for i in self._indices]

"""KeyEntries (bisected windows, columns kept across a batch) against the filter it replaces."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state.codec import Entry, KeyState, decode_key_state, encode
from streamer.core.state.entries import KeyEntries
from streamer.core.state.windows import aggregate

PROPERTIES = settings(deadline=None, database=None, max_examples=300)

# Few distinct times and values: ties in time, equal values, 0.0 and -0.0 (min and max keep
# the first of equal values, so the order of a window's values matters bit for bit).
TIMES = st.integers(0, 12)
NUMBERS = st.sampled_from([0.0, -0.0, 1.0, -2.5, 0.1, 1e16, -1e16, 3.0])
LABELS = st.sampled_from(["a", "b", "7"])
STEP = st.tuples(TIMES, NUMBERS, LABELS, st.integers(0, 14), st.integers(0, 6))
"""(time, number, label, window low, window length), each applied as one record."""


def bits(value: object) -> bytes:
    return struct.pack("<d", value)


def definition(
    entries: list[Entry], low: int, high: int
) -> tuple[list[Entry], list[float | str], list[float | str]]:
    """The window as the engine defined it: the filter of the entries, in offset order."""
    window = [e for e in entries if low < e.time_us <= high]
    return window, [e.values[0] for e in window], [e.values[1] for e in window]


class TestKeyEntries:
    @PROPERTIES
    @given(start=st.lists(st.tuples(TIMES, NUMBERS, LABELS), max_size=6), steps=st.lists(STEP))
    def test_windows_and_trims_equal_the_filter_over_the_entries(
        self,
        start: list[tuple[int, float, str]],
        steps: list[tuple[int, float, str, int, int]],
    ) -> None:
        entries = [Entry(i, t, (x, s)) for i, (t, x, s) in enumerate(start)]
        newest = max((e.time_us for e in entries), default=0)
        key = KeyEntries.from_state(decode_key_state(encode(KeyState(newest, tuple(entries)))), 2)
        for offset, (t, x, s, low, length) in enumerate(steps, start=len(start)):
            high = low + length
            window = key.select(low, high)
            expected, numbers, labels = definition(entries, low, high)
            assert len(window) == len(expected)
            assert window.values(0) == numbers
            assert window.values(1) == labels
            assert [bits(v) for v in window.values(0)] == [bits(v) for v in numbers]
            for agg in ("sum", "mean", "min", "max", "std"):
                got = aggregate(agg, window.values(0), -1.0)
                assert bits(got) == bits(aggregate(agg, numbers, -1.0))
            assert aggregate("distinct_count", window.values(1), 0.0) == len(set(labels))
            if expected:
                assert window.newest_time() == max(e.time_us for e in expected)
                newest_entry = max(expected, key=lambda e: (e.time_us, e.offset))
                assert bits(window.last(0)) == bits(newest_entry.values[0])
            keep_above = max(newest, t) - 5
            entry = Entry(offset, t, (x, s))
            key.add(entry, keep_above)
            entries = [e for e in entries if e.time_us > keep_above] + [entry]
            newest = max(newest, t)
            assert key.to_state() == KeyState(newest, tuple(entries))
            assert encode(key.to_state()) == encode(KeyState(newest, tuple(entries)))

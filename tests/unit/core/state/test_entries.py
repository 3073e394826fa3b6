"""KeyEntries (bisected windows, columns, trims) and feature_values against the filter."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state.codec import KeyState, decode_key_state, encode, encode_key_state
from streamer.core.state.entries import (
    FeaturePlan,
    KeyEntries,
    aggregate,
    feature_kind,
    feature_values,
)

PROPERTIES = settings(deadline=None, database=None, max_examples=300)

# Few distinct times and values: ties in time, equal values, 0.0 and -0.0 (min and max keep
# the first of equal values, so the order of a window's values matters bit for bit).
TIMES = st.integers(0, 12)
NUMBERS = st.sampled_from([0.0, -0.0, 1.0, -2.5, 0.1, 1e16, -1e16, 3.0])
LABELS = st.sampled_from(["a", "b", "7"])
STEP = st.tuples(TIMES, NUMBERS, LABELS, st.integers(1, 6))
"""(time, number, label, window length), each applied as one record."""

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "time_since_last", "last")
FEATURES: list[FeaturePlan] = [
    (index, feature_kind(agg), 0, 1 if agg == "distinct_count" else 0, include, -1.0, agg)
    for index, (agg, include) in enumerate(
        [(agg, include) for agg in AGGREGATIONS for include in (True, False)]
        + [("distinct_count", True), ("distinct_count", False)]
    )
]
"""Every aggregation, with and without the current record, over one window (slot 0); field 0
is the number, field 1 the label."""


def bits(value: object) -> bytes:
    return struct.pack("<d", value)


def definition(
    entries: list[tuple[int, float, str]], low: int, high: int, current: tuple[int, float, str]
) -> list[bytes]:
    """Each feature of FEATURES from the filter of the entries (in offset order), as bits."""
    window = [e for e in entries if low < e[0] <= high]
    values = []
    for _index, _kind, _slot, _field, include, default, agg in FEATURES:
        if agg == "count":
            values.append(float(len(window) + include))
        elif agg == "time_since_last":
            newest = max((e[0] for e in window), default=None)
            values.append(default if newest is None else (current[0] - newest) / 1_000_000)
        elif agg == "last":
            if include:
                values.append(current[1])
            elif window:  # the newest time, the newest offset (the later entry) among ties
                newest_entry = max(enumerate(window), key=lambda pair: (pair[1][0], pair[0]))
                values.append(newest_entry[1][1])
            else:
                values.append(default)
        else:
            field = 2 if agg == "distinct_count" else 1
            seen = [e[field] for e in window] + ([current[field]] if include else [])
            values.append(aggregate(agg, seen, default))
    return [bits(v) for v in values]


class TestKeyEntries:
    @PROPERTIES
    @given(start=st.lists(st.tuples(TIMES, NUMBERS, LABELS), max_size=6), steps=st.lists(STEP))
    def test_windows_values_and_trims_equal_the_filter_over_the_entries(
        self,
        start: list[tuple[int, float, str]],
        steps: list[tuple[int, float, str, int]],
    ) -> None:
        entries = list(start)
        newest = max((e[0] for e in entries), default=0)
        stored = KeyState(
            newest, [e[0] for e in entries], [[e[1] for e in entries], [e[2] for e in entries]]
        )
        key = KeyEntries.from_state(decode_key_state(encode(stored)))
        for t, x, s, length in steps:
            low = t - length
            current = (t, x, s)
            got = [0.0] * len(FEATURES)
            if key.ordered:
                bounds, hi = key.bounds(t, [length])
                assert list(range(bounds[0], hi)) == [
                    i for i, e in enumerate(entries) if low < e[0] <= t
                ]
                feature_values(FEATURES, bounds, key.times, key.columns, hi, True, t, (x, s), got)
            else:
                times, columns = key.filtered(low, t)
                feature_values(FEATURES, [0], times, columns, len(times), False, t, (x, s), got)
            assert [bits(v) for v in got] == definition(entries, low, t, current)
            keep_above = max(newest, t) - 5
            key.add(t, (x, s), keep_above)
            entries = [e for e in entries if e[0] > keep_above] + [current]
            newest = max(newest, t)
            times = [e[0] for e in entries]
            assert key.ordered == (times == sorted(times))
            expected = KeyState(newest, times, [[e[1] for e in entries], [e[2] for e in entries]])
            assert key.to_state() == expected
            assert encode(key.to_state()) == encode(expected)
            assert encode_key_state(key.newest_us, key.times, key.columns) == encode(expected)

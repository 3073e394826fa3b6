"""Random record streams and a reference that computes window features straight from the definition.

The reference keeps every accepted record and, for each record, scans them
all: no eviction, no store, no codec, sums as exact fractions. The engine
(streamer.core.state.windows) must give the same values bit for bit.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

from streamer.core.dead_letters import LATE
from streamer.core.state.declared import StateFeature, parse_features
from streamer.core.state.layout import (
    BadRecordError,
    Layout,
    build_layout,
    read_field,
    read_key,
    read_time_us,
)
from streamer.core.state.windows import StateInput

CARD = {"key": "card", "time": "ts"}
TABLES: list[dict[str, Any]] = [
    {"name": "n_10s", **CARD, "agg": "count", "window": "10s"},
    {"name": "sum_10s", **CARD, "agg": "sum", "field": "amount", "window": "10s"},
    {"name": "mean_30s", **CARD, "agg": "mean", "field": "amount", "window": "30s"},
    {"name": "min_30s", **CARD, "agg": "min", "field": "amount", "window": "30s"},
    {"name": "max_5s", **CARD, "agg": "max", "field": "amount", "window": "5s",
     "include_current": False, "default": -1.0},
    {"name": "std_30s", **CARD, "agg": "std", "field": "amount", "window": "30s"},
    {"name": "last_10s", **CARD, "agg": "last", "field": "amount", "window": "10s",
     "include_current": False},
    {"name": "since_30s", **CARD, "agg": "time_since_last", "window": "30s", "default": 30.0},
    {"name": "shops_30s", **CARD, "agg": "distinct_count", "field": "shop", "window": "30s"},
    {"name": "key_n_8s", "key": "$key", "agg": "count", "window": "8s", "include_current": False},
    {"name": "key_sum_8s", "key": "$key", "agg": "sum", "field": "amount", "window": "8s"},
]  # fmt: skip
FEATURES: tuple[StateFeature, ...] = parse_features(TABLES)
LATENESS_US = 3_000_000

SHAPES: dict[str, tuple[StateFeature, ...]] = {
    "two groups": FEATURES,
    "one group": tuple(f for f in FEATURES if f.key == "card"),
    "one window": tuple(f for f in FEATURES if f.key == "card" and f.window_us == 10_000_000),
}
"""The features of a layout: two groups (the card and the record key), the card's features
alone (one group: the engine applies it in a loop of its own), or those of one window length
(the loop bisects one window)."""


def layout(ttl_us: int = 0, *, shape: str = "two groups") -> Layout:
    return build_layout(SHAPES[shape], LATENESS_US, ttl_us)


@dataclass(frozen=True)
class Rec:
    """One record of a partition: what the engine reads."""

    partition: int
    key: bytes | None
    timestamp_ms: int | None
    doc: dict[str, Any]


AMOUNTS = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 0.2, 0.3, 1e16, 1.0, -1e16, 3.0]),
    st.integers(-1000, 1000),
)


def rarely(draw: st.DrawFn) -> bool:
    """True about once in 15 draws: bad records are few, so that windows fill up."""
    return draw(st.integers(0, 14)) == 0


@st.composite
def record(draw: st.DrawFn, base_ms: int, amounts: st.SearchStrategy[Any] = AMOUNTS) -> Rec:
    """A record near ``base_ms``; times are whole seconds, so window bounds are hit exactly."""
    doc: dict[str, Any] = {}
    if rarely(draw):
        bad_card = draw(st.sampled_from([None, "absent", 7, True]))
        if bad_card != "absent":
            doc["card"] = bad_card
    else:
        doc["card"] = draw(st.sampled_from(["a", "b", "c"]))
    doc["amount"] = draw(st.just("x")) if rarely(draw) else draw(amounts)
    doc["shop"] = draw(st.sampled_from(["s1", "s2", "s3", 4]))
    jitter = 1000 * draw(st.integers(-5, 5))
    doc["ts"] = "soon" if rarely(draw) else base_ms + jitter
    key = None if rarely(draw) else draw(st.sampled_from([b"k1", b"k2"]))
    ts = -1 if rarely(draw) else draw(st.sampled_from([base_ms, base_ms + jitter, base_ms - 2000]))
    return Rec(draw(st.integers(0, 1)), key, ts, doc)


@st.composite
def streams(
    draw: st.DrawFn, max_records: int = 80, amounts: st.SearchStrategy[Any] = AMOUNTS
) -> list[Rec]:
    """Records of two partitions, times mostly increasing with jitter (out of order, some late)."""
    steps = draw(st.lists(st.integers(0, 4), min_size=max_records // 4, max_size=max_records))
    base = 1_700_000_000_000
    out = []
    for step in steps:
        base += 1000 * step
        out.append(draw(record(base, amounts)))
    return out


def by_partition(stream: list[Rec]) -> dict[int, list[StateInput]]:
    """Each partition's records as engine inputs, with their offsets in the partition."""
    parts: dict[int, list[StateInput]] = {}
    for rec in stream:
        inputs = parts.setdefault(rec.partition, [])
        inputs.append(StateInput(len(inputs), rec.key, rec.timestamp_ms, rec.doc))
    return parts


def bits(values: tuple[float, ...] | None) -> tuple[bytes, ...] | None:
    """Floats as their 8 bytes: equal means bit for bit (0.0 and -0.0 differ)."""
    return None if values is None else tuple(struct.pack("<d", v) for v in values)


# --- the reference ----------------------------------------------------------------


def reference(lay: Layout, inputs: list[StateInput]) -> list[tuple[tuple[bytes, ...] | None, str]]:
    """(values as bits, reason) per record, from the definition, for one partition."""
    accepted: list[tuple[int, list[tuple[bytes, int]], list[tuple[Any, ...]]]] = []
    since: dict[tuple[int, bytes], int] = {}
    clocks: list[int | None] = [None] * len(lay.groups)
    out: list[tuple[tuple[bytes, ...] | None, str]] = []
    for rec in inputs:
        assert rec.doc is not None
        try:
            parsed = [
                (
                    read_key(rec.doc, rec.key, g.key),
                    read_time_us(rec.doc, rec.timestamp_ms, g.time),
                    tuple(
                        read_field(rec.doc, f, numeric=n)
                        for f, n in zip(g.fields, g.numeric, strict=True)
                    ),
                )
                for g in lay.groups
            ]
        except BadRecordError as problem:
            out.append((None, problem.reason))
            continue
        histories = []
        late = False
        for gi, (key, t, _fields) in enumerate(parsed):
            floor = since.get((gi, key), 0)
            hist = [
                (a[0], a[1][gi][1], a[2][gi])
                for a in accepted
                if a[1][gi][0] == key and a[0] >= floor
            ]
            ttl = lay.key_ttl_us or lay.groups[gi].horizon_us
            clock = clocks[gi]
            expired = bool(hist) and clock is not None and max(h[1] for h in hist) < clock - ttl
            if expired:
                hist = []
            if hist and t < max(h[1] for h in hist) - lay.allowed_lateness_us:
                late = True
            histories.append((hist, expired))
        if late:
            out.append((None, LATE))
            continue
        values = []
        for fi, feature in enumerate(lay.features):
            gi = lay.feature_group[fi]
            field = lay.feature_field[fi]
            _key, t, fields = parsed[gi]
            window = [h for h in histories[gi][0] if t - feature.window_us < h[1] <= t]
            values.append(_reference_value(feature, field, window, fields, t))
        for gi, (key, t, _fields) in enumerate(parsed):
            if histories[gi][1]:
                since[(gi, key)] = rec.offset
            clocks[gi] = t if clocks[gi] is None else max(clocks[gi], t)  # type: ignore[type-var]
        accepted.append((rec.offset, [(p[0], p[1]) for p in parsed], [p[2] for p in parsed]))
        out.append((bits(tuple(values)), ""))
    return out


def _reference_value(  # noqa: PLR0911 - one return per aggregation
    feature: StateFeature, field: int, window: list[Any], fields: tuple[Any, ...], t: int
) -> float:
    agg = feature.agg
    if agg == "time_since_last":
        return (t - max(h[1] for h in window)) / 1_000_000 if window else feature.default
    if agg == "count":
        return float(len(window) + feature.include_current)
    if agg == "last":
        if feature.include_current:
            return float(fields[field])
        if not window:
            return feature.default
        return float(sorted(window, key=lambda h: (h[1], h[0]))[-1][2][field])
    seen = [h[2][field] for h in window] + ([fields[field]] if feature.include_current else [])
    if agg == "distinct_count":
        return float(len(set(seen)))
    if agg == "sum":
        return float(sum((Fraction(x) for x in seen), Fraction(0)))
    if not seen:
        return feature.default
    if agg == "min":
        return min(seen)
    if agg == "max":
        return max(seen)
    mean = float(sum((Fraction(x) for x in seen), Fraction(0))) / len(seen)
    if agg == "mean":
        return mean
    squares = sum((Fraction((x - mean) ** 2) for x in seen), Fraction(0))
    return math.sqrt(float(squares) / len(seen))

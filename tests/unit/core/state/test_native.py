"""The compiled loop (streamer/core/state/_engine.c) against the Python one: the same, bit for bit.

Both engines run the same random streams (in order, out of order, late beyond the
allowed lateness, past the TTL, bad records, keys over their entry cap, every
aggregation, several keys and windows, cut into batches at random), each over its own
store, and must serve the same values and details and write the same store changes
(MessagePack writes a float as its 8 bytes: equal bytes are equal bits).
"""

from __future__ import annotations

import importlib
import math
import os
import struct
import sys
import types
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core import state as state_package
from streamer.core.state import windows
from streamer.core.state.codec import CODEC_VERSION, META_KEY, Meta, encode, key_state_key
from streamer.core.state.declared import parse_features
from streamer.core.state.entries import exact_sum
from streamer.core.state.layout import build_layout
from streamer.core.state.store import Change, MemoryStore
from streamer.core.state.windows import PartitionState, StateInput
from tests.unit.core.state.streams import LATENESS_US, SHAPES, Rec, by_partition, streams
from tests.unit.core.state.test_windows import BATCH_SIZES, cut

BUILD_OFF = os.environ.get(windows.ENGINE_VARIABLE, "").strip().lower() == "python"
"""STREAMER_STATE_ENGINE=python: the build is off on purpose (else the compiled loop must be)."""
needs_native = pytest.mark.skipif(BUILD_OFF, reason=f"{windows.ENGINE_VARIABLE}=python")

PROPERTIES = settings(deadline=None, database=None, max_examples=200)

ADVERSARIAL = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # the whole range: overflowing sums
    st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 5e-324, -5e-324, 2.2250738585072014e-308,  # noqa: E501
                     0.0, -0.0, 1e16, 1.0, -1e16, 1e-16, 0.1, 0.2, 0.3, 2.0**53, 2.0**-1074]),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.integers(-1000, 1000),
)  # fmt: skip
"""Field values: huge and tiny magnitudes, cancellation, -0.0 (a record's field is finite)."""

SPECIALS = st.one_of(
    st.floats(),  # inf, -inf, nan too
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, -0.0, 0.0, 1e16]),
)


def one_group_layout(shape: str, ttl_us: int, max_entries: int) -> Any:
    return build_layout(SHAPES[shape], LATENESS_US, ttl_us, max_entries_per_key=max_entries)


def run(
    engine: str,
    lay: Any,
    inputs: list[StateInput],
    sizes: list[int],
    partition: int,
    *,
    restart: bool,
    cached_entries: int,
) -> tuple[list[tuple[Any, ...]], list[Change], dict[bytes, bytes]]:
    """Outcomes (values as bits, reason, detail), changes, and the store at the end."""
    store = MemoryStore()
    state = None
    outcomes: list[tuple[Any, ...]] = []
    changes: list[Change] = []
    for index, batch in enumerate(cut(inputs, sizes)):
        if state is None or restart:
            state = PartitionState(
                lay, store, "events", partition, engine=engine, cached_entries=cached_entries
            )
        applied = state.apply(batch)
        changes.extend(applied.changes)
        if index % 3 == 2:
            changes.extend(state.sweep())
        outcomes.extend(
            (None,)
            if o is None
            else (
                None if o.values is None else tuple(struct.pack("<d", v) for v in o.values),
                o.reason,
                o.detail,
            )
            for o in applied.outcomes
        )
    return outcomes, changes, dict(store.items_from(b""))


def outcome(function: Any, values: list[float]) -> tuple[str, Any]:
    """A sum's bits, or the error it raises (-inf + inf; inf and an overflow past it)."""
    try:
        return "sum", struct.pack("<d", function(values))
    except (ValueError, OverflowError) as error:
        return type(error).__name__, str(error)


@needs_native
class TestTheCompiledLoop:
    def test_it_is_built_and_used(self) -> None:
        # CI proves the build: this fails where the extension is not importable
        importlib.import_module("streamer.core.state._engine")
        assert windows.ENGINE == "native"

    def test_the_environment_forces_the_python_loop(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(windows.ENGINE_VARIABLE, "python")
        assert windows._compiled() == (None, f"{windows.ENGINE_VARIABLE}=python")
        monkeypatch.delenv(windows.ENGINE_VARIABLE)
        module, _reason = windows._compiled()
        assert module is not None

    def test_an_engine_it_does_not_know_is_refused(self) -> None:
        with pytest.raises(ValueError, match="engine must be"):
            PartitionState(one_group_layout("one group", 0, 0), MemoryStore(), "e", 0, engine="c")

    @PROPERTIES
    @given(
        stream=streams(max_records=120, amounts=ADVERSARIAL),
        sizes=BATCH_SIZES,
        ttl=st.sampled_from([0, 4_000_000, 60_000_000]),
        max_entries=st.sampled_from([0, 2, 5]),
        shape=st.sampled_from(["one group", "one window"]),
        restart=st.booleans(),
        cached=st.sampled_from([0, 3, 250_000]),
    )
    def test_it_serves_and_writes_what_the_python_loop_does_bit_for_bit(
        self,
        stream: list[Rec],
        sizes: list[int],
        ttl: int,
        max_entries: int,
        shape: str,
        restart: bool,
        cached: int,
    ) -> None:
        lay = one_group_layout(shape, ttl, max_entries)
        for partition, inputs in by_partition(stream).items():
            python, native = (
                run(engine, lay, inputs, sizes, partition, restart=restart, cached_entries=cached)
                for engine in ("python", "native")
            )
            assert native == python

    def test_the_property_streams_reach_every_path(self) -> None:
        # the streams above hold late, out-of-order, refused and bad records: one sample
        lay = one_group_layout("one group", 4_000_000, 3)
        docs = [
            {"card": "a", "amount": 1e308, "shop": "s", "ts": 10_000},
            {"card": "a", "amount": 1e308, "shop": "s", "ts": 11_000},  # fsum overflows
            {"card": "a", "amount": 2.0, "shop": "s", "ts": 9_000},  # out of order
            {"card": "a", "amount": -0.0, "shop": "s", "ts": 12_000},  # over the cap of 3
            {"card": "a", "amount": 2.0, "shop": "s", "ts": 1_000},  # late
            {"card": "b", "amount": "x", "shop": "s", "ts": 1_000},  # not a number
            {"card": "b", "amount": 3.0, "shop": "s", "ts": 60_000},  # a's TTL passes
            {"card": "a", "amount": 4.0, "shop": "s", "ts": 60_500},  # past its TTL: empty
        ]
        inputs = [StateInput(i, b"k", 0, doc) for i, doc in enumerate(docs)]
        python = run("python", lay, inputs, [3], 0, restart=False, cached_entries=10)
        native = run("native", lay, inputs, [3], 0, restart=False, cached_entries=10)
        assert native == python
        reasons = [outcome[1] for outcome in native[0]]
        assert reasons == ["", "", "", "state_too_large", "late", "non_numeric_feature", "", ""]
        sums = [outcome[0][1] for outcome in native[0][:2]]
        assert sums == [struct.pack("<d", 1e308), struct.pack("<d", math.inf)]

    def test_min_max_and_mean_keep_what_python_keeps(self) -> None:
        # min and max keep the first of equal values: 0.0 and -0.0 are equal, their bits not
        lay = one_group_layout("one group", 0, 0)
        amounts = [0.0, -0.0, 1e308, 1e308, -0.0, 0.0, 5e-324, -5e-324]
        docs = [
            {"card": "c", "amount": a, "shop": "s", "ts": 1000 + i} for i, a in enumerate(amounts)
        ]
        inputs = [StateInput(i, None, None, doc) for i, doc in enumerate(docs)]
        python = run("python", lay, inputs, [3], 0, restart=False, cached_entries=10)
        native = run("native", lay, inputs, [3], 0, restart=False, cached_entries=10)
        assert native == python
        mins = [outcome[0][3] for outcome in native[0]]  # min_30s
        assert mins[1] == struct.pack("<d", 0.0)  # the first of 0.0 and -0.0
        means = [outcome[0][2] for outcome in native[0]]  # mean_30s: fsum overflows, then inf
        assert means[3] == struct.pack("<d", math.inf)

    def test_a_key_beyond_its_range_is_left_to_the_python_loop(self) -> None:
        # a stored key whose newest time is beyond 2**62 µs (no record's is): the compiled loop
        # stops before that record, the Python loop applies the rest, the values are the same
        lay = one_group_layout("one group", 0, 0)
        odd = msgspec.msgpack.encode((2**62 + 5, [2**62 + 5], [[1.0], ["s"]]))
        docs = [{"card": c, "amount": 1.0, "shop": "s", "ts": 5} for c in ("a", "b", "a")]
        inputs = [StateInput(i, None, None, doc) for i, doc in enumerate(docs)]
        results = []
        for engine in ("python", "native"):
            store = MemoryStore()
            meta = Meta(CODEC_VERSION, lay.fingerprint, "events", 0, -1, (None,), 0)
            store.write([(key_state_key(0, b"b"), odd), (META_KEY, encode(meta))])
            applied = PartitionState(lay, store, "events", 0, engine=engine).apply(inputs)
            results.append((applied.outcomes, applied.changes))
        assert results[0] == results[1]
        assert [o.reason if o else None for o in results[1][0]] == ["", "late", ""]

    @settings(deadline=None, database=None, max_examples=2000)
    @given(values=st.lists(st.one_of(ADVERSARIAL.map(float), SPECIALS), max_size=60))
    def test_its_sum_is_math_fsum_bit_for_bit(self, values: list[float]) -> None:
        engine = importlib.import_module("streamer.core.state._engine")
        assert outcome(engine.window_sum, values) == outcome(exact_sum, values)

    @pytest.mark.parametrize(
        "values",
        [
            [1e-16, 1.0, 1e16],  # the half-even correction across partials
            [1e308, 1e308, -1e308],  # an intermediate overflow, a finite sum
            [1e308, 1e308],  # beyond the floats: infinite
            [0.1] * 10 + [-1.0],  # cancellation
            [-0.0, -0.0],  # fsum gives +0.0
            [2.0**-1074] * 3 + [2.0**1023, -(2.0**1023)],
            [float(2**i) for i in range(-1074, 1024, 31)],  # more partials than fit on the stack
            [math.inf, 1.0],
            [math.nan, 1.0],
            [1, 2.5],  # an int: math.fsum's own path
        ],
    )
    def test_its_sum_on_hard_cases(self, values: list[float]) -> None:
        engine = importlib.import_module("streamer.core.state._engine")
        assert outcome(engine.window_sum, values) == outcome(exact_sum, values)


LONG_SUMS = parse_features(
    [
        {"name": "sum_60s", "key": "card", "agg": "sum", "field": "amount", "window": "60s",
         "time": "ts"},
        {"name": "sum_40s", "key": "card", "agg": "sum", "field": "amount", "window": "40s",
         "time": "ts", "include_current": False},
        {"name": "n_60s", "key": "card", "agg": "count", "window": "60s", "time": "ts"},
    ]
)  # fmt: skip
"""Sums over windows that hold dozens of a key's entries: the compiled loop keeps their
partials between records (_engine.c, SumCache) once a window holds 16 entries."""


@needs_native
class TestKeptWindowSums:
    @PROPERTIES
    @given(
        amounts=st.lists(ADVERSARIAL, min_size=40, max_size=160),
        steps=st.lists(st.integers(0, 3), min_size=160, max_size=160),
        cards=st.lists(st.sampled_from(["a", "a", "a", "b"]), min_size=160, max_size=160),
        sizes=BATCH_SIZES,
        cached_entries=st.sampled_from([0, 250_000]),
        deferred=st.booleans(),
    )
    def test_the_kept_sums_equal_the_python_loop_and_fsum_bit_for_bit(
        self,
        amounts: list[float],
        steps: list[int],
        cards: list[str],
        sizes: list[int],
        cached_entries: int,
        deferred: bool,
    ) -> None:
        lay = build_layout(LONG_SUMS, LATENESS_US, 0)
        base = 1_700_000_000_000
        inputs = []
        for offset, amount in enumerate(amounts):
            base += 1000 * steps[offset]  # entries leave the windows as time goes on
            doc = {"card": cards[offset], "amount": amount, "ts": base}
            inputs.append(StateInput(offset, None, None, doc))
        served: dict[str, list[Any]] = {}
        for engine in ("native", "python"):
            state = PartitionState(
                lay,
                MemoryStore(),
                "events",
                0,
                engine=engine,
                cached_entries=cached_entries,
                deferred=deferred,
            )
            served[engine] = []
            for batch in cut(inputs, sizes):
                served[engine].extend(
                    None if o is None or o.values is None else [bits(v) for v in o.values]
                    for o in state.apply(batch).outcomes
                )
                if deferred:
                    state.take_changes()
        assert served["native"] == served["python"]
        # and each sum is math.fsum (or exact_sum past an overflow) of its window
        for at, record in enumerate(inputs):
            window = [
                r.doc["amount"]
                for r in inputs[: at + 1]
                if r.doc["card"] == record.doc["card"] and r.doc["ts"] > record.doc["ts"] - 60_000
            ]
            assert served["native"][at][0] == bits(exact_sum(window))


@needs_native
class TestWindowsFoundFromTheFront:
    """The compiled loop finds a window's low end and the entries past the horizon from the
    front of the key's times (probes 0, 1, 3, 7, ...): the Python loop bisects. Steps from 0
    (equal times) to jumps past the window (every entry leaves at once), with no lateness (the
    window is the horizon: one search serves both) and with some."""

    @PROPERTIES
    @given(
        steps=st.lists(st.sampled_from([0, 0, 1, 2, 3, 7, 19, 45, 61]), min_size=200, max_size=200),
        cards=st.lists(st.sampled_from(["a", "a", "a", "b"]), min_size=200, max_size=200),
        sizes=BATCH_SIZES,
        lateness_us=st.sampled_from([0, LATENESS_US]),
    )
    def test_they_serve_and_keep_what_the_python_loop_does(
        self, steps: list[int], cards: list[str], sizes: list[int], lateness_us: int
    ) -> None:
        lay = build_layout(LONG_SUMS, lateness_us, 0)
        base = 1_700_000_000_000
        inputs = []
        for offset, step in enumerate(steps):
            base += 1000 * step
            doc = {"card": cards[offset], "amount": float(offset % 7), "ts": base}
            inputs.append(StateInput(offset, None, None, doc))
        seen = {}
        for engine in ("native", "python"):
            state = PartitionState(lay, MemoryStore(), "events", 0, engine=engine)
            served = [
                None if o is None or o.values is None else [bits(v) for v in o.values]
                for batch in cut(inputs, sizes)
                for o in state.apply(batch).outcomes
            ]
            seen[engine] = served, dict(state.store.items_from(b""))  # type: ignore[attr-defined]
        assert seen["native"] == seen["python"]
        # the 60 s count of each record: its card's records within (ts - 60 s, ts]
        for at, record in enumerate(inputs):
            count = sum(
                1
                for r in inputs[: at + 1]
                if r.doc["card"] == record.doc["card"] and r.doc["ts"] > record.doc["ts"] - 60_000
            )
            assert seen["native"][0][at][2] == bits(float(count))


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _compiled_with_stale_build(
    monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]
) -> tuple[object, str]:
    """What the engine picks when the built module lacks ``missing`` and has no ABI mark."""
    stale = types.ModuleType("streamer.core.state._engine")
    for name in windows.NATIVE_FUNCTIONS:
        if name not in missing:
            setattr(stale, name, lambda *args: None)
    monkeypatch.setitem(sys.modules, "streamer.core.state._engine", stale)
    monkeypatch.setattr(state_package, "_engine", stale, raising=False)
    monkeypatch.delenv(windows.ENGINE_VARIABLE, raising=False)
    return windows._compiled()


def test_a_compiled_loop_built_from_an_older_source_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, reason = _compiled_with_stale_build(monkeypatch, missing=("cache_keys", "defer_keys"))
    assert module is None
    assert reason.startswith(
        "the compiled loop is stale (no cache_keys, defer_keys; ABI 1, not 2): rebuild it"
    )


def test_a_compiled_loop_of_another_calling_convention_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build from before the served block has every function, but its apply_group appends
    a Served per record to a list: called with a block, it would fail at the first batch."""
    module, reason = _compiled_with_stale_build(monkeypatch, missing=())
    assert module is None
    assert reason.startswith("the compiled loop is stale (ABI 1, not 2): rebuild it")

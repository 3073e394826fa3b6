"""The compiled per-batch steps around the loop (_engine.c) against the Python ones.

``PartitionState._cache_keys`` and ``_defer`` run in C where the loop is built:
the same dict operations in the same order, so the cache holds the same keys in
the same (least recently used first) order with the same sizes, the dirty keys
are the same objects in the same order, and the counts are equal. A batch's
columns read in one pass in C (``typed_group``) are the ones the Python read gives.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state import windows
from streamer.core.state.codec import key_state_key
from streamer.core.state.declared import parse_features
from streamer.core.state.entries import KeyEntries
from streamer.core.state.layout import RecordReader, build_layout
from streamer.core.state.store import MemoryStore
from streamer.core.state.windows import PartitionState
from tests.unit.core.state.streams import layout
from tests.unit.core.state.test_native import needs_native

PROPERTIES = settings(deadline=None, database=None, max_examples=300)

KEYS = [bytes([2, 0]) + bytes([k]) for k in range(12)]


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[dict[bytes, Any], set[bytes], dict[bytes, None]]]:
    """Batches as the engine leaves them: keys read (None: absent), new keys, keys written."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        chosen = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=len(KEYS)))
        keys: dict[bytes, Any] = {}
        for key in chosen:
            size = draw(st.integers(0, 6))
            keys[key] = None if size == 0 else KeyEntries(size, list(range(size)), [[0.0] * size])
        new = {key for key in chosen if draw(st.booleans())}
        written = {key: None for key in chosen if keys[key] is not None and draw(st.booleans())}
        out.append((keys, new, written))
    return out


def engine_pair(limit: int) -> tuple[PartitionState, PartitionState]:
    lay = layout()
    return tuple(  # type: ignore[return-value]
        PartitionState(lay, MemoryStore(), "events", 0, cached_entries=limit, engine=engine)
        for engine in ("python", "native")
    )


@needs_native
@PROPERTIES
@given(batches(), st.integers(0, 30))
def test_cache_keys_is_the_python_loop(
    runs: list[tuple[dict[bytes, Any], set[bytes], dict[bytes, None]]], limit: int
) -> None:
    python, native = engine_pair(limit)
    assert python._bookkeeping is None
    assert native._bookkeeping is not None
    for keys, new, _written in runs:
        for state in (python, native):
            state._new_keys = set(new)
            state._cache_keys(dict(keys))
        assert list(native._cache_sizes.items()) == list(python._cache_sizes.items())
        assert list(native._cache) == list(python._cache) == list(python._cache_sizes)
        assert all(native._cache[k] is python._cache[k] for k in python._cache)
        assert native._cached == python._cached == sum(python._cache_sizes.values())
        assert python._cached <= max(limit, 0) or not python._cache


@needs_native
@PROPERTIES
@given(batches())
def test_defer_keys_is_the_python_loop(
    runs: list[tuple[dict[bytes, Any], set[bytes], dict[bytes, None]]],
) -> None:
    python, native = engine_pair(100)
    for keys, _new, written in runs:
        fresh = list(range(len(written)))
        for state in (python, native):
            state._defer(fresh, fresh, windows.array("d"), {}, dict(written), keys)
        assert list(native._dirty) == list(python._dirty)
        assert all(native._dirty[k] is python._dirty[k] for k in python._dirty)
        assert native.dirty_entries == python.dirty_entries


TEXT_TABLES = [
    {"name": "n", "key": "card", "agg": "count", "window": "1h", "time": "ts"},
    {"name": "s", "key": "card", "agg": "sum", "field": "amount", "window": "1h", "time": "ts"},
    {"name": "d", "key": "card", "agg": "distinct_count", "field": "shop", "window": "1h",
     "time": "ts"},
    {"name": "r", "key": "$key", "agg": "count", "window": "1h"},
]  # fmt: skip
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.just([1]),
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 4).flatmap(lambda i: ANYTHING if i == 0 else good)


TEXT_RECORDS = st.tuples(
    st.fixed_dictionaries(
        {
            "card": mostly(st.sampled_from(["a", "b", "é" * 5, "long-card-id", "\U0001f600"])),
            "ts": mostly(st.integers(-(2**53), 2**53)),
            "amount": mostly(st.floats(-1e6, 1e6)),
            "shop": mostly(st.sampled_from(["s1", "s2", "a longer shop", "ü"])),
        }
    ),
    st.one_of(st.none(), st.just(b"k"), st.just(b"a-long-record-key")),
    st.one_of(st.none(), st.integers(-9, 10**13), st.integers(-(2**63), 2**63)),
)


@needs_native
@settings(deadline=None, database=None, max_examples=400)
@given(
    batch=st.one_of(st.lists(TEXT_RECORDS, max_size=3), st.lists(TEXT_RECORDS, max_size=10)),
    max_text=st.sampled_from([0, 4, 8, 12, 256]),
)
def test_the_one_pass_read_is_the_python_read(
    batch: list[tuple[dict[str, Any], bytes | None, int | None]], max_text: int
) -> None:
    lay = build_layout(parse_features(TEXT_TABLES), 0, max_text_bytes=max_text)
    prefixes = [key_state_key(group, b"") for group in range(len(lay.groups))]
    docs = [doc for doc, _key, _ts in batch]
    keys = [key for _doc, key, _ts in batch]
    times = [ts for _doc, _key, ts in batch]
    reads = [
        RecordReader(lay, prefixes, compiled).read_columns(docs, keys, times)
        for compiled in (None, windows._NATIVE)
    ]
    (python, python_bad), (native, native_bad) = reads
    assert repr(native) == repr(python)  # repr: nan == nan, 0.0 and -0.0 differ
    assert {i: (b.reason, b.detail) for i, b in native_bad.items()} == {
        i: (b.reason, b.detail) for i, b in python_bad.items()
    }

"""The engine's inline read of a record equals the read_* functions, dead-letter reasons too."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state.codec import key_state_key
from streamer.core.state.declared import parse_features
from streamer.core.state.layout import (
    BadRecordError,
    build_layout,
    read_field,
    read_key,
    read_time_us,
)
from streamer.core.state.store import MemoryStore
from streamer.core.state.windows import PartitionState, StateInput

TABLES = [
    {"name": "n", "key": "card", "agg": "count", "window": "1h", "time": "ts"},
    {"name": "s", "key": "card", "agg": "sum", "field": "amount", "window": "1h", "time": "ts"},
    {"name": "d", "key": "card", "agg": "distinct_count", "field": "shop", "window": "1h",
     "time": "ts"},
    {"name": "u", "key": "user.id", "agg": "max", "field": "m.x", "window": "1h", "time": "at.t"},
    {"name": "r", "key": "$key", "agg": "count", "window": "1h"},
]  # fmt: skip
LAYOUT = build_layout(parse_features(TABLES), 0)

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.sampled_from([0, 1, -1, 2**50, 10**16, -(10**16)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["a", "7", " 1.5 ", "inf", "nan", "2024-01-02T03:04:05", "x"]),
    st.just({"id": "u1", "t": 5, "x": 1.5}),
    st.just([1]),
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 5).flatmap(lambda i: VALUES if i == 0 else good)


def definition(record: StateInput) -> list[tuple[bytes, int, tuple[Any, ...]]]:
    doc = record.doc
    assert doc is not None
    out = []
    for index, group in enumerate(LAYOUT.groups):
        key = read_key(doc, record.key, group.key)
        time_us = read_time_us(doc, record.timestamp_ms, group.time)
        fields = tuple(
            read_field(doc, name, numeric=numeric)
            for name, numeric in zip(group.fields, group.numeric, strict=True)
        )
        out.append((key_state_key(index, key), time_us, fields))
    return out


def outcome(read: Any, record: StateInput) -> Any:
    try:
        return ("ok", repr(read(record)))  # repr: nan == nan, 0.0 and -0.0 differ
    except BadRecordError as problem:
        return (problem.reason, problem.detail)


class TestRead:
    @settings(deadline=None, database=None, max_examples=600)
    @given(
        doc=st.fixed_dictionaries(
            {  # each field mostly good, so that the reads after it run too (None: absent)
                "card": mostly(st.sampled_from(["a", "b"])),
                "ts": mostly(st.integers(0, 10**12)),
                "amount": mostly(st.floats(allow_nan=True, allow_infinity=True)),
                "shop": mostly(st.sampled_from(["s1", "s2"])),
                "user": mostly(st.just({"id": "u1"})),
                "m": mostly(st.builds(lambda x: {"x": x}, st.floats())),
                "at": mostly(st.builds(lambda t: {"t": t}, st.integers(0, 10**12))),
            }
        ),
        key=st.one_of(st.none(), st.just(b"k")),
        timestamp_ms=st.one_of(st.none(), st.integers(-(2**62), 2**62), st.integers(-9, 9)),
    )
    def test_the_inline_read_equals_the_read_functions(
        self, doc: dict[str, Any], key: bytes | None, timestamp_ms: int | None
    ) -> None:
        state = PartitionState(LAYOUT, MemoryStore(), "events", 0)
        record = StateInput(0, key, timestamp_ms, doc)
        assert outcome(state._read, record) == outcome(definition, record)


TOP_LAYOUT = build_layout(parse_features(TABLES[:3]), 0)
"""One group whose key, time and fields are at the top level: the columns' checks in C."""

DOCS = st.fixed_dictionaries(
    {
        "card": mostly(st.sampled_from(["a", "b"])),
        "ts": mostly(st.integers(-(10**12), 10**12)),
        "amount": mostly(st.floats(allow_nan=True, allow_infinity=True)),
        "shop": mostly(st.sampled_from(["s1", "s2"])),
        "user": mostly(st.just({"id": "u1"})),
        "m": mostly(st.builds(lambda x: {"x": x}, st.floats())),
        "at": mostly(st.builds(lambda t: {"t": t}, st.integers(0, 10**12))),
    }
)
RECORDS = st.tuples(
    DOCS,
    st.one_of(st.none(), st.just(b"k")),
    st.one_of(st.none(), st.integers(-(2**62), 2**62), st.integers(-9, 9)),
)


class TestReadColumns:
    @settings(deadline=None, database=None, max_examples=400)
    @given(
        batch=st.one_of(st.lists(RECORDS, max_size=3), st.lists(RECORDS, max_size=12)),
        top=st.booleans(),
    )
    def test_a_batch_read_by_columns_is_each_record_read_alone(
        self, batch: list[tuple[dict[str, Any], bytes | None, int | None]], top: bool
    ) -> None:
        # short batches are often all good: the columns pass their checks in C at once
        state = PartitionState(TOP_LAYOUT if top else LAYOUT, MemoryStore(), "events", 0)
        docs = [doc for doc, _key, _ts in batch]
        columns, bad = state._reader.read_columns(
            docs, [key for _doc, key, _ts in batch], [ts for _doc, _key, ts in batch]
        )
        for index, (doc, key, ts) in enumerate(batch):
            alone = outcome(state._read, StateInput(index, key, ts, doc))
            if index in bad:
                got = (bad[index].reason, bad[index].detail)
            else:
                got = (
                    "ok",
                    repr(
                        [(c.store_keys[index], c.times_us[index], c.rows[index]) for c in columns]
                    ),
                )
            assert got == alone

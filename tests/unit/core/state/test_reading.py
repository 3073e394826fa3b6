"""The typed decode of a batch (core/state/reading.py) reads each record as its orjson dict does."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.features import decoded_object, loads_json
from streamer.core.state.codec import key_state_key
from streamer.core.state.declared import parse_features
from streamer.core.state.layout import RecordReader, build_layout, top_level_paths
from streamer.core.state.reading import TypedBatch, typed_batch
from streamer.messages import SourceBatch
from streamer.settings import build_settings
from streamer.topology.state import StateKeeper
from tests.unit.json_edges import EDGE_LITERALS, python_default_recursion_limit

TABLES = [
    {"name": "n", "key": "card", "agg": "count", "window": "1h", "time": "ts"},
    {"name": "s", "key": "card", "agg": "sum", "field": "amount", "window": "1h", "time": "ts"},
    {"name": "d", "key": "card", "agg": "distinct_count", "field": "shop", "window": "1h",
     "time": "ts"},
    {"name": "r", "key": "$key", "agg": "max", "field": "amount", "window": "1h"},
]  # fmt: skip
LAYOUT = build_layout(parse_features(TABLES), 0, max_text_bytes=12)
PATHS = top_level_paths(LAYOUT)
MAX_BYTES = 4096
READ = ("card", "ts", "amount", "shop")

_LITERAL = "<literal>"
_literals = st.sampled_from(EDGE_LITERALS)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(1_700_000_000_000, 1_800_000_000_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=14),  # past max_text_bytes, unicode, escapes
    st.sampled_from(["2024-01-02T03:04:05", "7", " 1.5 ", "c1", "c2"]),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=2), st.just({"id": "x"}))


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


@st.composite
def _value(draw: st.DrawFn) -> bytes | None:
    fields: dict[str, Any] = {}
    for name in READ:
        if draw(st.integers(0, 9)):
            fields[name] = draw(st.one_of(_values, _usual(name)))
    for extra in draw(st.lists(st.text(max_size=4), max_size=2)):
        fields[extra] = draw(_values)
    if draw(st.integers(0, 3)) == 0:
        fields[draw(st.sampled_from([*READ, "other"]))] = _LITERAL
    encoded = _dumps(fields).replace(_dumps(_LITERAL), draw(_literals), 1)
    kind = draw(st.sampled_from(["doc"] * 6 + ["dup", "escaped", "mangled", "other"]))
    if kind == "dup" and len(encoded) > 2:  # a key again: the last one counts
        name = draw(st.sampled_from(READ))
        encoded = encoded[:-1] + b',"%s":%s}' % (name.encode(), _dumps(draw(_values)))
    elif kind == "escaped":
        encoded = encoded.replace(b'"card"', b'"c\\u0061rd"')
    elif kind == "mangled":
        cut = draw(st.integers(0, len(encoded)))
        encoded = draw(
            st.sampled_from(
                [encoded[:cut] + b"\xff" + encoded[cut:], encoded[:cut], b"\xef\xbb\xbf" + encoded]
            )
        )
    elif kind == "other":
        return draw(st.sampled_from([None, b"", b"[1]", b"7", b'"x"', b" {} ", b"{}\n"]))
    return encoded


def _usual(name: str) -> st.SearchStrategy[Any]:
    return {
        "card": st.sampled_from(["c1", "c2", "c3"]),
        "ts": st.integers(1_700_000_000_000, 1_700_000_100_000),
        "amount": st.floats(-1e6, 1e6),
        "shop": st.sampled_from(["s1", "s2"]),
    }[name]


def _read(reader: RecordReader, docs: Any, count: int) -> Any:
    keys = [b"k%d" % (i % 3) if i % 7 else None for i in range(count)]
    stamps = [1_700_000_000_000 + i for i in range(count)]
    columns, bad = reader.read_columns(docs, keys, stamps)
    bad_list = {i: (p.reason, p.detail) for i, p in bad.items()}
    for column in columns:  # a bad record's place holds whatever it held: not compared
        for index in bad:
            column.store_keys[index] = b""
            column.times_us[index] = 0
            column.rows[index] = ()
    good = [(c.store_keys, c.times_us, [tuple(map(repr, row)) for row in c.rows]) for c in columns]
    return good, bad_list


READER = RecordReader(LAYOUT, [key_state_key(i, b"") for i in range(len(LAYOUT.groups))])


@settings(max_examples=500, deadline=None)
@given(st.lists(_value(), min_size=1, max_size=6))
def test_a_typed_batch_reads_every_record_as_its_orjson_dict(values: list[bytes | None]) -> None:
    assert PATHS is not None
    with python_default_recursion_limit():
        batch = typed_batch(values, PATHS, MAX_BYTES)
    decoded = [decoded_object(value, MAX_BYTES) for value in values]
    if batch is None:
        return  # the caller decodes them as before
    assert all(type(doc) is dict for doc in decoded)  # each record would be applied
    assert list(batch) == decoded
    assert _read(READER, batch, len(values)) == _read(READER, decoded, len(values))


def test_a_clean_batch_is_typed_and_read_from_its_columns() -> None:
    values = [
        b'{"card":"c1","ts":1700000000000,"amount":1.5,"shop":"s","note":[1,{"a":null}]}',
        b'{"ts":1700000000001,"card":"c2","amount":2.5,"shop":"s2","x":"caf\xc3\xa9"}',
    ]
    assert PATHS == ("card", "ts", "amount", "shop")
    batch = typed_batch(values, PATHS, MAX_BYTES)
    assert isinstance(batch, TypedBatch)
    assert batch.columns == {
        "card": ["c1", "c2"],
        "ts": [1700000000000, 1700000000001],
        "amount": [1.5, 2.5],
        "shop": ["s", "s2"],
    }
    assert None not in batch
    assert batch[1] == loads_json(values[1])


@pytest.mark.parametrize(
    "value",
    [
        b'{"card":"c1","ts":1,"amount":1.5,"shop":"s","name":"\xff"}',  # not UTF-8, skipped
        b'{"card":"c1","ts":1,"amount":1e400,"shop":"s"}',  # read: msgspec refuses it
        b'{"card":"c1","ts":1,"amount":1.5,"shop":"s","o":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'[{"card":"c1"}]',
        b"",
        None,
        b'{"card":"c1","ts":1,"amount":1.5,"shop":"' + b"x" * MAX_BYTES + b'"}',
    ],
)
def test_a_batch_with_a_value_msgspec_may_read_otherwise_is_not_typed(value: bytes | None) -> None:
    good = b'{"card":"c1","ts":1,"amount":1.5,"shop":"s"}'
    assert PATHS is not None
    assert typed_batch([good], PATHS, MAX_BYTES) is not None
    assert typed_batch([good, value], PATHS, MAX_BYTES) is None


def test_a_number_beyond_a_double_in_a_skipped_field_is_typed_and_read_alike() -> None:
    value = b'{"card":"c1","ts":1,"amount":1.5,"shop":"s","o":1e400}'
    assert PATHS is not None
    batch = typed_batch([value], PATHS, MAX_BYTES)
    assert batch is not None
    assert batch[0]["o"] == float("inf")


def test_a_raised_recursion_limit_sends_every_batch_the_old_way() -> None:
    good = b'{"card":"c1","ts":1,"amount":1.5,"shop":"s"}'
    assert PATHS is not None
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # msgspec would then nest deeper than orjson
    try:
        assert typed_batch([good], PATHS, MAX_BYTES) is None
    finally:
        sys.setrecursionlimit(limit)


def test_nested_paths_take_no_typed_decode() -> None:
    nested = [{"name": "u", "key": "user.id", "agg": "count", "window": "1h"}]
    assert top_level_paths(build_layout(parse_features(nested), 0)) is None
    by_record = [{"name": "r", "key": "$key", "agg": "count", "window": "1h"}]
    assert top_level_paths(build_layout(parse_features(by_record), 0)) == ()


def _keeper(typed: bool) -> StateKeeper:
    settings_ = build_settings(
        {
            "kafka": {"input_topic": "tx", "output_topic": "out"},
            "batch": {"max_record_bytes": MAX_BYTES},
            "state": {"features": TABLES, "max_text_bytes": 12},
        },
        environ={},
    )
    keeper = StateKeeper(settings_, None)
    if not typed:
        keeper._paths = None  # the decode of every value into a dict
    return keeper


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_value(), min_size=1, max_size=5), min_size=1, max_size=4))
def test_the_state_step_serves_the_same_with_and_without_the_typed_decode(
    batches: list[list[bytes | None]],
) -> None:
    typed, plain = _keeper(typed=True), _keeper(typed=False)
    offset = 0
    for number, values in enumerate(batches):
        offsets = list(range(offset, offset + len(values)))
        if number % 2:  # a replay of the batch before it, and new records
            offsets = [max(0, o - 2) for o in offsets]
        offset = offsets[-1] + 1
        source = SourceBatch(
            batch_id=number,
            topic="tx",
            partition=0,
            seq=number,
            offsets=offsets,
            keys=[b"k%d" % (o % 3) for o in offsets],
            values=values,
            timestamps_ms=[1_700_000_000_000 + o for o in offsets],
            dispatched_at=0.0,
        )
        with python_default_recursion_limit():
            a, b = typed.apply(source), plain.apply(source)
        assert a.state_values.rows() == b.state_values.rows()
        assert a.state_rejections == b.state_rejections
        assert a.changelog == b.changelog


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"card":1e400,"ts":1,"amount":1.5,"shop":"s"}', "missing_key"),  # not keyed "null"
        (b'{"card":"c1","ts":1e400,"amount":1.5,"shop":"s"}', "bad_timestamp"),
        (b'{"card":"c1","ts":1,"amount":-1e400,"shop":"s"}', "non_finite"),
        (b'{"card":"c1","ts":1,"amount":1.5,"shop":1e400}', "non_finite"),  # not the text "null"
    ],
)
def test_a_read_field_beyond_a_double_is_dead_lettered_with_its_reason(
    value: bytes, reason: str
) -> None:
    good = b'{"card":"c1","ts":1,"amount":1.5,"shop":"s"}'
    for values in ([value], [good, value]):
        source = SourceBatch(
            batch_id=0,
            topic="tx",
            partition=0,
            seq=0,
            offsets=list(range(len(values))),
            keys=[b"k"] * len(values),
            values=list(values),
            timestamps_ms=[1_700_000_000_000] * len(values),
            dispatched_at=0.0,
        )
        with python_default_recursion_limit():
            applied = _keeper(typed=True).apply(source)
        assert [(r.index, r.reason) for r in applied.state_rejections] == [
            (len(values) - 1, reason)
        ]


def test_a_text_field_nested_deeper_than_orjson_writes_is_dead_lettered_not_raised() -> None:
    deep = b'{"card":"c1","ts":1,"amount":1.5,"shop":' + b"[" * 300 + b"]" * 300 + b"}"
    source = SourceBatch(
        batch_id=0,
        topic="tx",
        partition=0,
        seq=0,
        offsets=[0],
        keys=[b"k"],
        values=[deep],
        timestamps_ms=[1_700_000_000_000],
        dispatched_at=0.0,
    )
    for typed in (True, False):
        applied = _keeper(typed=typed).apply(source)
        assert [(r.index, r.reason) for r in applied.state_rejections] == [(0, "state_too_large")]

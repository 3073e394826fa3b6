"""The batch fast path (msgspec, ``typed_matrix``) against the per-record ``prepare_rows``."""

from __future__ import annotations

import json
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.features import FeatureSpec, Prepared, prepare_batch, prepare_rows, typed_matrix
from tests.unit.json_edges import EDGE_LITERALS, python_default_recursion_limit

NAMES = ("amount", "age", "risk")
SPEC = FeatureSpec(NAMES, np.array([10.0, 3.0, 0.5]), np.array([4.0, 2.0, 0.25]))

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_feature = st.one_of(_numbers, _numbers, st.none(), st.text(max_size=4), st.just([1]))
_text = st.text(max_size=6)  # unicode: non-ASCII and escapes
_LITERAL = "<a literal>"
_literals = st.sampled_from(EDGE_LITERALS)


def _dumps(doc: dict[str, object]) -> bytes:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


@st.composite
def _value(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["doc", "doc", "doc", "bytes", "none", "mangled"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=20))
    fields: dict[str, object] = {}
    for name in NAMES:
        if draw(st.integers(0, 9)):  # sometimes missing
            fields[name] = draw(_feature)
    for extra in draw(st.lists(_text, max_size=3)):
        fields[extra] = draw(st.one_of(_text, _numbers, st.lists(_numbers, max_size=2)))
    if draw(st.integers(0, 3)) == 0:  # a number only its text can write, in any field
        fields[draw(st.sampled_from([*NAMES, "other"]))] = _LITERAL
    encoded = _dumps(fields).replace(b'"%s"' % _LITERAL.encode(), draw(_literals), 1)
    if kind == "mangled":  # invalid UTF-8, a cut, or a duplicate key
        cut = draw(st.integers(0, len(encoded)))
        encoded = draw(
            st.sampled_from(
                [
                    encoded[:cut] + b"\xff" + encoded[cut:],
                    encoded[:cut],
                    encoded[:-1] + b',"amount":7}' if len(encoded) > 2 else encoded,
                    encoded.replace(b'"amount"', b'"\\u0061mount"'),
                ]
            )
        )
    return encoded


def _same(fast: Prepared, reference: Prepared) -> None:
    assert fast.features.dtype == reference.features.dtype
    assert fast.features.tobytes() == reference.features.tobytes()
    assert fast.valid_rows.tolist() == reference.valid_rows.tolist()
    assert fast.rejected == reference.rejected
    assert fast.dropped == reference.dropped


@settings(max_examples=400, deadline=None)
@given(st.lists(_value(), max_size=8), st.sampled_from(["dlq", "drop", "impute"]), st.booleans())
def test_prepare_batch_answers_every_row_exactly_as_the_per_record_path(
    values: list[bytes | None], missing: str, standardize: bool
) -> None:
    with python_default_recursion_limit():
        fast = prepare_batch(values, SPEC, missing=missing, standardize=standardize)
    reference = prepare_rows(values, SPEC, missing=missing, standardize=standardize)
    _same(fast, reference)


@settings(max_examples=300, deadline=None)
@given(st.lists(_value(), min_size=1, max_size=8))
def test_a_row_gets_the_same_answer_alone_and_in_any_batch(values: list[bytes | None]) -> None:
    with python_default_recursion_limit():
        together = prepare_batch(values, SPEC, standardize=False)
        alone_rows = [prepare_batch([value], SPEC, standardize=False) for value in values]
    for index, alone in enumerate(alone_rows):
        if index in together.valid_rows.tolist():
            row = together.valid_rows.tolist().index(index)
            assert alone.features.tobytes() == together.features[row].tobytes()
        else:
            assert [(p.reason, p.detail) for p in alone.rejected] == [
                (p.reason, p.detail) for p in together.rejected if p.index == index
            ]


def test_a_number_beyond_a_double_in_a_field_no_feature_reads_is_scored_in_any_batch() -> None:
    """Accepted on both paths (loads_json): it is JSON, and no feature reads it."""
    far = b'{"amount":1,"age":2,"risk":0.5,"other":1e400,"more":[-1e999]}'
    assert typed_matrix([far], NAMES, 1 << 20) is not None  # the fast path, alone
    for batch in ([far], [far, b""], [b"{", far]):
        for prepare in (prepare_batch, prepare_rows):
            prepared = prepare(batch, SPEC, standardize=False)
            row = prepared.valid_rows.tolist().index(batch.index(far))
            assert prepared.features[row].tolist() == [1.0, 2.0, 0.5]


def test_a_feature_beyond_a_double_is_non_finite_in_any_batch() -> None:
    far = b'{"amount":-1e400,"age":2,"risk":0.5}'
    good = b'{"amount":1,"age":2,"risk":0.5}'
    for batch in ([far], [good, far]):
        for prepare in (prepare_batch, prepare_rows):
            prepared = prepare(batch, SPEC)
            assert [(p.index, p.reason) for p in prepared.rejected] == [
                (batch.index(far), "non_finite")
            ]
            assert "-inf" in prepared.rejected[0].detail


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_numbers, _numbers, _numbers), min_size=1, max_size=8))
def test_clean_batches_take_the_fast_path_and_score_the_same_bits(
    rows: list[tuple[object, object, object]],
) -> None:
    values = [
        _dumps({"id": "x", "amount": a, "age": b, "risk": c, "note": [1, {"k": None}]})
        for a, b, c in rows
    ]
    with python_default_recursion_limit():
        matrix = typed_matrix(values, NAMES, 1 << 20)
        fast = prepare_batch(values, SPEC)
    has_bool = any(isinstance(v, bool) for row in rows for v in row)
    assert (matrix is None) == has_bool  # a bool goes the per-record way
    _same(fast, prepare_rows(values, SPEC))


def test_a_skipped_field_that_is_not_utf8_dead_letters_its_row_in_any_batch() -> None:
    good = b'{"amount":1,"age":2,"risk":0.5}'
    bad = b'{"amount":1,"age":2,"risk":0.5,"name":"\xff"}'
    assert typed_matrix([good, bad], NAMES, 1 << 20) is None
    prepared = prepare_batch([good, bad], SPEC)
    assert prepared.valid_rows.tolist() == [0]
    assert [(p.index, p.reason) for p in prepared.rejected] == [(1, "not_utf8")]


def test_oversized_and_empty_values_leave_the_fast_path() -> None:
    good = b'{"amount":1,"age":2,"risk":0.5}'
    assert typed_matrix([good, b""], NAMES, 1 << 20) is None
    assert typed_matrix([good, None], NAMES, 1 << 20) is None
    assert typed_matrix([good], NAMES, len(good) - 1) is None
    assert typed_matrix([good], NAMES, len(good)) is not None


def test_a_clean_batch_that_is_not_ascii_takes_the_fast_path() -> None:
    values = [b'{"amount":1,"age":2,"risk":0.5,"name":"Zo\xc3\xab \xe2\x82\xac"}']
    matrix = typed_matrix(values, NAMES, 1 << 20)
    assert matrix is not None
    assert matrix.tolist() == [[1.0, 2.0, 0.5]]


def test_nesting_beyond_orjson_dead_letters_its_row_whatever_the_recursion_limit() -> None:
    deep = b'{"amount":1,"age":2,"risk":0.5,"o":' + b"[" * 1030 + b"]" * 1030 + b"}"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # msgspec would nest deeper than orjson's 1,024 levels
    try:
        assert typed_matrix([deep], NAMES, 1 << 20) is None
        prepared = prepare_batch([deep], SPEC)
    finally:
        sys.setrecursionlimit(limit)
    assert [(p.index, p.reason) for p in prepared.rejected] == [(0, "invalid_json")]

"""Decoding, validation and fixed-statistics standardization of a micro-batch."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core import dead_letters as f
from streamer.core.dead_letters import LABEL_DEAD_LETTER_REASONS
from streamer.core.features import FeatureSpec, RowProblem, prepare_batch

# Properties run without a deadline (CI machines vary) and leave no example database.
PROPERTIES = settings(deadline=None, database=None)

SPEC = FeatureSpec(("a", "b", "c"), np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 8.0]))


def doc(**values: object) -> bytes:
    """A JSON record with a=1, b=2, c=3 unless overridden; ``None`` removes a key."""
    base: dict[str, object] = {"a": 1, "b": 2, "c": 3, "note": "extra keys are ignored"}
    base.update(values)
    return orjson.dumps({k: v for k, v in base.items() if v is not _REMOVE})


_REMOVE = object()


class TestDeadLetterReasons:
    @pytest.mark.parametrize(
        ("value", "reason", "detail"),
        [
            (b"\xff\xfe{}", f.NOT_UTF8, "value is not UTF-8: invalid start byte at byte 0"),
            (b'{"a": 1, "b": 2, "c": \xe9}', f.NOT_UTF8, "value is not UTF-8"),
            (b'{"a": 1, "b": ', f.INVALID_JSON, "value is not valid JSON"),
            (b"{'a': 1}", f.INVALID_JSON, "value is not valid JSON"),
            (b'{"a": NaN, "b": 2, "c": 3}', f.INVALID_JSON, "value is not valid JSON"),
            (b"[1, 2, 3]", f.NOT_OBJECT, "value is JSON list, expected an object"),
            (b'"text"', f.NOT_OBJECT, "value is JSON str, expected an object"),
            (b"42", f.NOT_OBJECT, "value is JSON int, expected an object"),
            (b"null", f.NOT_OBJECT, "value is JSON NoneType, expected an object"),
            (doc(c=_REMOVE), f.MISSING_FEATURE, "feature 'c' is missing"),
            (doc(b=None), f.MISSING_FEATURE, "feature 'b' is null"),
            (doc(c="abc"), f.NON_NUMERIC_FEATURE, "feature 'c' is the string 'abc', not a number"),
            (doc(c=""), f.NON_NUMERIC_FEATURE, "feature 'c' is the string '', not a number"),
            (doc(a=[1]), f.NON_NUMERIC_FEATURE, "feature 'a' is a JSON list, not a number"),
            (doc(a={"x": 1}), f.NON_NUMERIC_FEATURE, "feature 'a' is a JSON dict, not a number"),
            (doc(c="NaN"), f.NON_FINITE, "feature 'c' is nan, not finite"),
            (doc(c="nan"), f.NON_FINITE, "feature 'c' is nan, not finite"),
            (doc(c="Infinity"), f.NON_FINITE, "feature 'c' is inf, not finite"),
            (doc(c="-inf"), f.NON_FINITE, "feature 'c' is -inf, not finite"),
            (doc(c="1e999"), f.NON_FINITE, "feature 'c' is inf, not finite"),
            (None, f.EMPTY_VALUE, "the record has no value (null or empty)"),
            (b"", f.EMPTY_VALUE, "the record has no value (null or empty)"),
        ],
    )
    def test_each_fault_is_rejected_with_its_reason(
        self, value: bytes | None, reason: str, detail: str
    ) -> None:
        prepared = prepare_batch([doc(), value, doc()], SPEC)
        assert [p.index for p in prepared.rejected] == [1]
        problem = prepared.rejected[0]
        assert problem.reason == reason
        assert problem.detail.startswith(detail)
        assert prepared.valid_rows.tolist() == [0, 2]
        assert prepared.features.shape == (2, 3)
        assert prepared.dropped == ()

    def test_an_oversized_value_is_rejected_before_it_is_parsed(self) -> None:
        big = doc(pad="x" * 100)
        prepared = prepare_batch([big, doc()], SPEC, max_record_bytes=len(big) - 1)
        assert prepared.rejected == (
            RowProblem(
                0,
                f.OVERSIZED,
                f"value is {len(big)} bytes, above batch.max_record_bytes={len(big) - 1}",
            ),
        )
        assert prepared.valid_rows.tolist() == [1]

    def test_a_value_of_exactly_max_record_bytes_is_accepted(self) -> None:
        value = doc()
        prepared = prepare_batch([value], SPEC, max_record_bytes=len(value))
        assert prepared.rejected == ()
        assert prepared.valid_rows.tolist() == [0]

    def test_every_reason_is_a_known_label(self) -> None:
        assert set(f.REASONS) == {
            "not_utf8", "invalid_json", "not_object", "missing_feature", "non_numeric_feature",
            "non_finite", "oversized", "empty_value", "model_error", "produce_rejected",
            "unknown_schema", "undecodable", "wrong_format",
            "missing_key", "bad_timestamp", "late", "state_replayed", "state_too_large",
            "malformed", "missing_id", "wrong_type", "bad_time", "misrouted",
        }  # fmt: skip
        # The state's, then the labels' last: the existing series keep their order.
        state_end = len(f.REASONS) - len(LABEL_DEAD_LETTER_REASONS)
        assert f.REASONS[state_end - len(f.STATE_REASONS) : state_end] == f.STATE_REASONS
        assert f.STATE_REASONS[-1] == "state_too_large"
        assert f.REASONS[state_end:] == LABEL_DEAD_LETTER_REASONS

    def test_the_first_bad_feature_names_the_problem(self) -> None:
        prepared = prepare_batch([doc(a="x", b=_REMOVE)], SPEC)
        assert prepared.rejected == (
            RowProblem(0, f.NON_NUMERIC_FEATURE, "feature 'a' is the string 'x', not a number"),
        )


class TestCoercion:
    @pytest.mark.parametrize(
        ("raw", "number"),
        [
            (True, 1.0),
            (False, 0.0),
            (7, 7.0),
            (-2.5, -2.5),
            ("3", 3.0),
            (" 2.5 ", 2.5),
            ("-1e3", -1000.0),
        ],
    )
    def test_bools_numbers_and_numeric_strings_become_floats(
        self, raw: object, number: float
    ) -> None:
        prepared = prepare_batch([doc(b=raw)], SPEC, standardize=False)
        assert prepared.features.tolist() == [[1.0, number, 3.0]]
        assert prepared.features.dtype == np.float64

    def test_a_long_string_is_cut_in_the_detail(self) -> None:
        prepared = prepare_batch([doc(a="z" * 500)], SPEC)
        assert (
            prepared.rejected[0].detail == f"feature 'a' is the string {'z' * 64!r}, not a number"
        )


class TestMissingPolicy:
    BATCH = (doc(), doc(b=_REMOVE), doc(c="oops"), b"not json", doc(a=None, c="inf"), doc(a=5))

    def test_dlq_rejects_rows_with_a_missing_or_invalid_feature(self) -> None:
        prepared = prepare_batch(self.BATCH, SPEC, missing="dlq", standardize=False)
        assert [(p.index, p.reason) for p in prepared.rejected] == [
            (1, f.MISSING_FEATURE),
            (2, f.NON_NUMERIC_FEATURE),
            (3, f.INVALID_JSON),
            (4, f.MISSING_FEATURE),
        ]
        assert prepared.dropped == ()
        assert prepared.valid_rows.tolist() == [0, 5]
        assert prepared.features.tolist() == [[1.0, 2.0, 3.0], [5.0, 2.0, 3.0]]

    def test_drop_skips_those_rows_but_still_rejects_undecodable_records(self) -> None:
        prepared = prepare_batch(self.BATCH, SPEC, missing="drop", standardize=False)
        assert [(p.index, p.reason) for p in prepared.dropped] == [
            (1, f.MISSING_FEATURE),
            (2, f.NON_NUMERIC_FEATURE),
            (4, f.MISSING_FEATURE),
        ]
        assert [(p.index, p.reason) for p in prepared.rejected] == [(3, f.INVALID_JSON)]
        assert prepared.valid_rows.tolist() == [0, 5]

    def test_impute_uses_the_fitted_mean_for_each_bad_feature(self) -> None:
        prepared = prepare_batch(self.BATCH, SPEC, missing="impute", standardize=False)
        assert [(p.index, p.reason) for p in prepared.rejected] == [(3, f.INVALID_JSON)]
        assert prepared.dropped == ()
        assert prepared.valid_rows.tolist() == [0, 1, 2, 4, 5]
        assert prepared.features.tolist() == [
            [1.0, 2.0, 3.0],
            [1.0, 2.0, 3.0],  # b missing -> mean 2.0
            [1.0, 2.0, 3.0],  # c "oops" -> mean 3.0
            [1.0, 2.0, 3.0],  # a null -> mean 1.0, c inf -> mean 3.0
            [5.0, 2.0, 3.0],
        ]

    def test_an_imputed_feature_standardizes_to_zero(self) -> None:
        prepared = prepare_batch([doc(a=_REMOVE, b=_REMOVE, c=_REMOVE)], SPEC, missing="impute")
        assert prepared.features.tolist() == [[0.0, 0.0, 0.0]]


class TestStandardization:
    def test_rows_are_standardized_with_the_fitted_statistics(self) -> None:
        prepared = prepare_batch([doc(a=5, b=-2, c=3), doc(a=1.5, b=2, c=19)], SPEC)
        assert prepared.features.tolist() == [[2.0, -1.0, 0.0], [0.25, 0.0, 2.0]]

    def test_standardize_false_keeps_the_raw_values(self) -> None:
        prepared = prepare_batch([doc(a=5, b=-2, c=3)], SPEC, standardize=False)
        assert prepared.features.tolist() == [[5.0, -2.0, 3.0]]

    def test_an_empty_batch_gives_an_empty_matrix_of_the_right_width(self) -> None:
        prepared = prepare_batch([], SPEC)
        assert prepared.features.shape == (0, 3)
        assert prepared.valid_rows.shape == (0,)
        assert prepared.valid_rows.dtype == np.int64

    def test_a_batch_of_only_bad_records_gives_an_empty_matrix(self) -> None:
        prepared = prepare_batch([b"", b"[]"], SPEC)
        assert prepared.features.shape == (0, 3)
        assert len(prepared.rejected) == 2

    def test_a_spec_rejects_statistics_of_the_wrong_length(self) -> None:
        with pytest.raises(ValueError, match="feature statistics must have 2 values each"):
            FeatureSpec(("a", "b"), np.array([0.0]), np.array([1.0, 1.0]))

    @pytest.mark.parametrize("std", [0.0, -1.0, float("inf"), float("nan")])
    def test_a_spec_rejects_a_std_that_is_not_positive_and_finite(self, std: float) -> None:
        with pytest.raises(ValueError, match="every fitted std must be a positive finite number"):
            FeatureSpec(("a", "b"), np.array([0.0, 0.0]), np.array([1.0, std]))


def mixed_records(n: int, seed: int) -> list[bytes | None]:
    """Mostly valid records with awkward floats, sprinkled with every kind of fault."""
    rng = random.Random(seed)
    bad: list[bytes | None] = [None, b"", b"\xff", b"{", b"[]", doc(c="x"), doc(a="NaN")]
    records: list[bytes | None] = []
    for _ in range(n):
        if rng.random() < 0.1:
            records.append(rng.choice(bad))
        else:
            records.append(
                doc(
                    a=rng.uniform(-1e6, 1e6),
                    b=rng.choice([rng.random() * 1e-300, rng.gauss(0, 1), str(rng.random())]),
                    c=rng.choice([True, False, rng.randint(-(2**53), 2**53)]),
                )
            )
    return records


@pytest.mark.parametrize("missing", ["dlq", "drop", "impute"])
def test_the_same_records_give_bit_identical_rows_in_batches_of_any_size(missing: str) -> None:
    records = mixed_records(300, seed=7)
    whole = prepare_batch(records, SPEC, missing=missing)
    for size in (1, 7, 64, len(records)):
        rows, valid, rejected, dropped = [], [], [], []
        for start in range(0, len(records), size):
            part = prepare_batch(records[start : start + size], SPEC, missing=missing)
            rows.append(part.features)
            valid.extend(start + i for i in part.valid_rows.tolist())
            rejected.extend((start + p.index, p.reason) for p in part.rejected)
            dropped.extend((start + p.index, p.reason) for p in part.dropped)
        features = np.concatenate(rows)
        assert np.array_equal(features, whole.features)
        assert features.tobytes() == whole.features.tobytes()
        assert valid == whole.valid_rows.tolist()
        assert rejected == [(p.index, p.reason) for p in whole.rejected]
        assert dropped == [(p.index, p.reason) for p in whole.dropped]


@pytest.mark.parametrize(
    "raw",
    [2**53 + 1, 2**63 - 1, 2**63 + 12345, 2**64 - 1, -(2**63), True, 0.1, -0.0, 5e-324, 1e308],
)
def test_a_row_gets_the_same_bits_whether_its_batch_mates_are_clean_or_not(raw: object) -> None:
    value = doc(a=raw)
    clean = prepare_batch([value, doc()], SPEC)
    mixed = prepare_batch([value, doc(b="7")], SPEC)  # a string feature in a batch-mate
    assert clean.features[0].tobytes() == mixed.features[0].tobytes()
    assert clean.valid_rows.tolist() == mixed.valid_rows.tolist() == [0, 1]


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
feature_value = st.one_of(finite, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.none())


@PROPERTIES
@given(
    rows=st.lists(
        st.fixed_dictionaries({"a": feature_value, "b": finite, "c": finite}), max_size=30
    )
)
def test_a_row_prepared_alone_equals_the_same_row_prepared_in_a_batch(
    rows: list[dict[str, object]],
) -> None:
    values = [orjson.dumps(r) for r in rows]
    whole = prepare_batch(values, SPEC, missing="impute")
    singles = [prepare_batch([v], SPEC, missing="impute").features for v in values]
    stacked = np.concatenate(singles) if singles else np.empty((0, 3))
    assert stacked.tobytes() == whole.features.tobytes()


class TestUnderscoredNames:
    SPEC = FeatureSpec(
        ("mean_radius", "worst_area"), np.zeros(2), np.ones(2), underscored_names=True
    )

    def test_a_key_with_spaces_stands_for_its_underscored_name(self) -> None:
        values = [orjson.dumps({"mean radius": 1.5, "worst area": 2.25})]
        prepared = prepare_batch(values, self.SPEC, standardize=False)
        assert prepared.features.tolist() == [[1.5, 2.25]]

    def test_the_records_own_underscored_key_wins(self) -> None:
        values = [orjson.dumps({"mean radius": 1.5, "mean_radius": 9.0, "worst area": 2.0})]
        prepared = prepare_batch(values, self.SPEC, standardize=False)
        assert prepared.features.tolist() == [[9.0, 2.0]]

    def test_without_the_flag_the_missing_detail_names_the_key_the_records_carry(self) -> None:
        spec = FeatureSpec(("mean_radius",), np.zeros(1), np.ones(1))
        prepared = prepare_batch([orjson.dumps({"Mean Radius": 1.0})], spec)
        assert prepared.rejected == (
            RowProblem(
                0,
                "missing_feature",
                "feature 'mean_radius' is missing; the records carry 'Mean Radius'",
            ),
        )

"""Output records, dead-letter headers, timestamps and histogram quantiles."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.output import dead_letter_headers, encode_predictions, iso_now, key_text
from streamer.core.quantile import histogram_quantile

MODEL = {"name": "demo-fraud", "version": "abc123"}


class TestEncodePredictions:
    def test_each_valid_row_gives_one_document_with_every_field_in_order(self) -> None:
        out = encode_predictions(
            topic="transactions",
            partition=3,
            offsets=[100, 101, 102, 103],
            keys=[b"card-1", None, b"card-\xff", b"card-4"],
            rows=np.array([0, 2, 3]),
            predictions=np.array([0.125, 0.5, 0.9990234375]),
            output_names=("score",),
            model=MODEL,
            scored_at="2026-01-02T03:04:05.678Z",
        )
        docs = [orjson.loads(o) for o in out]
        assert docs == [
            {
                "key": "card-1",
                "topic": "transactions",
                "partition": 3,
                "offset": 100,
                "score": 0.125,
                "model": MODEL,
                "scored_at": "2026-01-02T03:04:05.678Z",
            },
            {
                "key": "card-\\xff",
                "topic": "transactions",
                "partition": 3,
                "offset": 102,
                "score": 0.5,
                "model": MODEL,
                "scored_at": "2026-01-02T03:04:05.678Z",
            },
            {
                "key": "card-4",
                "topic": "transactions",
                "partition": 3,
                "offset": 103,
                "score": 0.9990234375,
                "model": MODEL,
                "scored_at": "2026-01-02T03:04:05.678Z",
            },
        ]
        assert list(docs[0]) == [
            "key", "topic", "partition", "offset", "score", "model", "scored_at",
        ]  # fmt: skip

    def test_a_missing_key_is_null(self) -> None:
        (out,) = encode_predictions(
            topic="t",
            partition=0,
            offsets=[5],
            keys=[None],
            rows=np.array([0]),
            predictions=np.array([0.25]),
            output_names=("score",),
            model=MODEL,
            scored_at="x",
        )
        assert orjson.loads(out)["key"] is None

    def test_a_score_round_trips_exactly(self) -> None:
        score = 0.1 + 0.2
        (out,) = encode_predictions(
            topic="t",
            partition=0,
            offsets=[0],
            keys=[b"k"],
            rows=np.array([0]),
            predictions=np.array([score]),
            output_names=("score",),
            model=MODEL,
            scored_at="x",
        )
        assert orjson.loads(out)["score"] == score

    def test_a_multi_output_model_gives_one_field_per_output_name(self) -> None:
        out = encode_predictions(
            topic="t",
            partition=1,
            offsets=[7, 8],
            keys=[b"a", b"b"],
            rows=np.array([1]),
            predictions=np.array([[0.25, 0.75]]),
            output_names=("p_fraud", "p_chargeback"),
            model=MODEL,
            scored_at="x",
        )
        (doc,) = [orjson.loads(o) for o in out]
        assert list(doc) == [
            "key", "topic", "partition", "offset", "p_fraud", "p_chargeback", "model", "scored_at",
        ]  # fmt: skip
        assert (doc["key"], doc["offset"], doc["p_fraud"], doc["p_chargeback"]) == (
            "b",
            8,
            0.25,
            0.75,
        )

    def test_no_rows_give_no_documents(self) -> None:
        assert (
            encode_predictions(
                topic="t",
                partition=0,
                offsets=[1],
                keys=[None],
                rows=np.array([], dtype=np.int64),
                predictions=np.empty((0,)),
                output_names=("score",),
                model=MODEL,
                scored_at="x",
            )
            == []
        )


finite = st.floats(allow_nan=False, allow_infinity=False)
# Printable ASCII without escapes: the keys that take the encoder's plain path.
PLAIN_KEYS = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    max_size=12,
).map(str.encode)
FIXED_FIELDS = {"key", "topic", "partition", "offset", "model", "scored_at"}


@settings(deadline=None, database=None)
@given(
    topic=st.text(min_size=1, max_size=20),
    partition=st.integers(0, 10_000),
    keys=st.lists(st.none() | st.binary(max_size=12) | PLAIN_KEYS, min_size=1, max_size=8),
    names=st.lists(
        st.text(min_size=1, max_size=8).filter(lambda name: name not in FIXED_FIELDS),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    data=st.data(),
)
def test_encoded_documents_equal_the_plain_json_of_every_field(
    topic: str,
    partition: int,
    keys: list[bytes | None],
    names: list[str],
    data: st.DataObject,
) -> None:
    n = len(keys)
    rows = sorted(data.draw(st.sets(st.integers(0, n - 1)), label="valid rows"))
    width = len(names)
    shape = (len(rows),) if width == 1 else (len(rows), width)
    flat = data.draw(st.lists(finite, min_size=len(rows) * width, max_size=len(rows) * width))
    predictions = np.array(flat, dtype=np.float64).reshape(shape)
    offsets = list(range(1000, 1000 + n))
    model = {"name": data.draw(st.text(max_size=8)), "version": "v%1"}
    out = encode_predictions(
        topic=topic,
        partition=partition,
        offsets=offsets,
        keys=keys,
        rows=np.array(rows, dtype=np.int64),
        predictions=predictions,
        output_names=tuple(names),
        model=model,
        scored_at="2026-01-02T03:04:05.678Z",
    )
    assert len(out) == len(rows)
    for i, (encoded, row) in enumerate(zip(out, rows, strict=True)):
        scores = [predictions[i]] if width == 1 else list(predictions[i])
        expected = {
            "key": key_text(keys[row]),
            "topic": topic,
            "partition": partition,
            "offset": offsets[row],
            **{name: float(v) for name, v in zip(names, scores, strict=True)},
            "model": model,
            "scored_at": "2026-01-02T03:04:05.678Z",
        }
        decoded = orjson.loads(encoded)
        assert decoded == expected
        assert list(decoded) == list(expected)


def test_dead_letter_headers_explain_the_fault_and_its_source() -> None:
    headers = dead_letter_headers(
        reason="invalid_json",
        detail="value is not valid JSON: \udcff",
        stage="preprocess",
        topic="transactions",
        partition=2,
        offset=41,
        model_version="abc123",
        failed_at="2026-01-02T03:04:05.678Z",
    )
    assert headers == [
        ("streamer.reason", b"invalid_json"),
        ("streamer.error", b"value is not valid JSON: \\udcff"),
        ("streamer.stage", b"preprocess"),
        ("streamer.source.topic", b"transactions"),
        ("streamer.source.partition", b"2"),
        ("streamer.source.offset", b"41"),
        ("streamer.model.version", b"abc123"),
        ("streamer.failed_at", b"2026-01-02T03:04:05.678Z"),
    ]


class TestTimestamps:
    @pytest.mark.parametrize(
        ("now", "text"),
        [
            (0.0, "1970-01-01T00:00:00.000Z"),
            (1.5, "1970-01-01T00:00:01.500Z"),
            (1_767_323_045.6789, "2026-01-02T03:04:05.678Z"),
        ],
    )
    def test_iso_now_is_utc_with_milliseconds(self, now: float, text: str) -> None:
        assert iso_now(now) == text

    def test_iso_now_without_an_argument_is_the_current_time(self) -> None:
        text = iso_now()
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert abs(parsed.timestamp() - datetime.now().timestamp()) < 60
        assert len(text) == len("2026-01-02T03:04:05.678Z")

    def test_key_text_escapes_undecodable_bytes(self) -> None:
        assert key_text(None) is None
        assert key_text(b"caf\xc3\xa9") == "café"
        assert key_text(b"\xff") == "\\xff"


BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (math.inf, 40.0)]


class TestHistogramQuantile:
    def test_an_empty_histogram_has_no_quantile(self) -> None:
        assert histogram_quantile(0.5, []) is None
        assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None

    @pytest.mark.parametrize(
        ("q", "value"),
        [
            (0.25, 0.1),  # rank 10: the top of the first bucket
            (0.125, 0.05),  # rank 5: half way into [0, 0.1]
            (0.5, 0.3),  # rank 20: half way into [0.1, 0.5]
            (0.875, 0.75),  # rank 35: half way into [0.5, 1.0]
            (1.0, 1.0),
        ],
    )
    def test_quantiles_interpolate_linearly_within_a_bucket(self, q: float, value: float) -> None:
        assert histogram_quantile(q, BUCKETS) == pytest.approx(value, abs=1e-12)

    def test_a_quantile_in_the_inf_bucket_returns_the_largest_finite_bound(self) -> None:
        buckets = [(0.1, 1.0), (0.5, 2.0), (math.inf, 10.0)]
        assert histogram_quantile(0.99, buckets) == 0.5

    def test_the_buckets_may_come_in_any_order(self) -> None:
        assert histogram_quantile(0.5, list(reversed(BUCKETS))) == pytest.approx(0.3)

    def test_empty_buckets_below_the_rank_are_skipped(self) -> None:
        buckets = [(0.1, 0.0), (0.2, 0.0), (0.4, 4.0), (math.inf, 4.0)]
        assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)


@settings(deadline=None, database=None)
@given(
    keys=st.lists(st.none() | st.binary(max_size=6) | PLAIN_KEYS, min_size=1, max_size=6),
    data=st.data(),
)
def test_a_record_s_output_bytes_do_not_depend_on_its_batch_mates(
    keys: list[bytes | None], data: st.DataObject
) -> None:
    """A batch of plain keys and a batch with one escaped key take different paths:
    each record must still come out byte for byte as it does alone."""
    scores = data.draw(st.lists(finite, min_size=len(keys), max_size=len(keys)))

    def encode(rows: list[int]) -> list[bytes]:
        return encode_predictions(
            topic="in",
            partition=3,
            offsets=[1000 + row for row in rows],
            keys=[keys[row] for row in rows],
            rows=np.arange(len(rows), dtype=np.int64),
            predictions=np.array([scores[row] for row in rows], dtype=np.float64),
            output_names=("score",),
            model=MODEL,
            scored_at="2026-01-02T03:04:05.678Z",
        )

    together = encode(list(range(len(keys))))
    assert together == [encode([row])[0] for row in range(len(keys))]

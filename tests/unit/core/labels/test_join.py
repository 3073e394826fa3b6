"""Reading labels and outputs: identities, values, times, and every reason a record is refused."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from streamer.core.labels.join import (
    BAD_OUTPUT,
    BAD_TIME,
    MALFORMED,
    MISSING_ID,
    NO_SCORE,
    REGRESSION,
    WRONG_TYPE,
    Label,
    LabelSpec,
    Output,
    Rejected,
    coordinates_identity,
    describe_identity,
    iso_time_us,
    quick_label,
    read_label,
    read_output,
    record_id_identity,
)

BY_COORDINATES = LabelSpec()
BY_ID = LabelSpec(id_field="transaction.id", time_field="at")
BY_KEY = LabelSpec(id_field="$key", challengers=frozenset({"candidate"}))

OUTPUT = {
    "key": "t-1",
    "topic": "events",
    "partition": 2,
    "offset": 41,
    "score": 0.875,
    "model": {"name": "demo", "version": "3"},
    "scored_at": "2026-12-01T00:00:01.250Z",
}
SCORED_AT_US = 1_796_083_201_250_000


def rejected(reader: Any, *args: Any) -> str:
    with pytest.raises(Rejected) as caught:
        reader(*args)
    return caught.value.reason


class TestLabels:
    def test_a_label_by_coordinates_finds_the_outputs_identity(self) -> None:
        label = read_label(
            {"topic": "events", "partition": 2, "offset": 41, "label": 1}, None, BY_COORDINATES
        )
        assert label == Label(coordinates_identity("events", 2, 41), 1.0, None)
        assert read_output(OUTPUT, BY_COORDINATES).identity == label.identity
        assert describe_identity(label.identity) == "events/2/41"

    def test_a_csv_row_reads_like_json(self) -> None:
        # A CSV cell that parses as a number arrives as a float; a value may stay text.
        row = {"topic": "events", "partition": 2.0, "offset": 41.0, "label": "0"}
        assert read_label(row, None, BY_COORDINATES) == Label(
            coordinates_identity("events", 2, 41), 0.0, None
        )

    def test_a_label_by_a_nested_id_with_an_iso_or_epoch_ms_time(self) -> None:
        iso = read_label(
            {"transaction": {"id": 7}, "label": True, "at": "2026-12-01T00:00:01.25Z"}, None, BY_ID
        )
        epoch = read_label(
            {"transaction": {"id": "7"}, "label": False, "at": 1_796_083_201_250}, None, BY_ID
        )
        assert iso == Label(record_id_identity(b"7"), 1.0, SCORED_AT_US)
        assert epoch == Label(record_id_identity(b"7"), 0.0, SCORED_AT_US)

    def test_a_whole_float_id_is_the_integer_id(self) -> None:
        assert read_label(
            {"transaction": {"id": 7.0}, "label": 1, "at": 0}, None, BY_ID
        ).identity == (record_id_identity(b"7"))

    def test_by_key_the_label_and_the_output_meet_on_the_record_key(self) -> None:
        label = read_label({"label": 1}, b"t-1", BY_KEY)
        assert label.identity == read_output(OUTPUT, BY_KEY).identity == record_id_identity(b"t-1")

    @pytest.mark.parametrize(
        ("doc", "key", "spec", "reason"),
        [
            ([1, 2], None, BY_COORDINATES, MALFORMED),
            (None, None, BY_COORDINATES, MALFORMED),
            ({"topic": "events", "partition": 2, "label": 1}, None, BY_COORDINATES, MISSING_ID),
            (
                {"topic": "events", "partition": -1, "offset": 4, "label": 1},
                None,
                BY_COORDINATES,
                MISSING_ID,
            ),
            (
                {"topic": "events", "partition": 1.5, "offset": 4, "label": 1},
                None,
                BY_COORDINATES,
                MISSING_ID,
            ),
            (
                {"topic": "", "partition": 1, "offset": 4, "label": 1},
                None,
                BY_COORDINATES,
                MISSING_ID,
            ),
            (
                {"topic": "e", "partition": True, "offset": 4, "label": 1},
                None,
                BY_COORDINATES,
                MISSING_ID,
            ),
            ({"transaction": {"id": [1]}, "label": 1, "at": 0}, None, BY_ID, MISSING_ID),
            ({"transaction": {"id": True}, "label": 1, "at": 0}, None, BY_ID, MISSING_ID),
            ({"label": 1}, None, BY_KEY, MISSING_ID),
            ({"transaction": {"id": 1}, "label": 2, "at": 0}, None, BY_ID, WRONG_TYPE),
            ({"transaction": {"id": 1}, "label": "yes", "at": 0}, None, BY_ID, WRONG_TYPE),
            ({"transaction": {"id": 1}, "label": None, "at": 0}, None, BY_ID, WRONG_TYPE),
            ({"transaction": {"id": 1}, "at": 0}, None, BY_ID, WRONG_TYPE),
            ({"transaction": {"id": 1}, "label": [1], "at": 0}, None, BY_ID, WRONG_TYPE),
            ({"transaction": {"id": 1}, "label": "nan", "at": 0}, None, BY_ID, WRONG_TYPE),
            ({"transaction": {"id": 1}, "label": 1}, None, BY_ID, BAD_TIME),
            ({"transaction": {"id": 1}, "label": 1, "at": "yesterday"}, None, BY_ID, BAD_TIME),
        ],
    )
    def test_a_bad_label_is_refused_with_its_reason(
        self, doc: Any, key: bytes | None, spec: LabelSpec, reason: str
    ) -> None:
        assert rejected(read_label, doc, key, spec) == reason

    def test_a_regression_label_is_any_finite_number(self) -> None:
        spec = LabelSpec(task=REGRESSION)
        doc = {"topic": "events", "partition": 0, "offset": 1, "label": "-12.5"}
        assert read_label(doc, None, spec).value == -12.5
        assert rejected(read_label, {**doc, "label": "inf"}, None, spec) == WRONG_TYPE


class TestOutputs:
    def test_an_output_document_is_the_champions_unless_a_challenger_is_named(self) -> None:
        assert read_output(OUTPUT, BY_KEY) == Output(
            record_id_identity(b"t-1"), False, "demo", "3", 0.875, SCORED_AT_US
        )
        candidate = {**OUTPUT, "model": {"name": "candidate", "version": "9"}}
        assert read_output(candidate, BY_KEY).challenger is True

    def test_another_score_field(self) -> None:
        doc = {**OUTPUT, "proba_1": 0.25}
        assert read_output(doc, LabelSpec(score_field="proba_1")).score == 0.25

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"score": None}, NO_SCORE),
            ({"score": "0.5"}, NO_SCORE),
            ({"score": True}, NO_SCORE),
            ({"model": "demo"}, BAD_OUTPUT),
            ({"scored_at": 17}, BAD_OUTPUT),
            ({"scored_at": "soon"}, BAD_OUTPUT),
            ({"offset": None}, MISSING_ID),
        ],
    )
    def test_a_bad_output_is_refused_with_its_reason(
        self, change: dict[str, Any], reason: str
    ) -> None:
        assert rejected(read_output, {**OUTPUT, **change}, BY_COORDINATES) == reason

    def test_an_output_without_the_id_field_is_missing_id(self) -> None:
        assert rejected(read_output, OUTPUT, BY_ID) == MISSING_ID
        assert rejected(read_output, "text", BY_ID) == MALFORMED


_FIELD_VALUES: list[Any] = [
    "events", "", 0, 1, 2, -1, 3.0, 0.5, True, False, None, [1], {"a": 1}, "1", 2**60,
    1_796_536_800_000, -(2**52), 2**52, 1e300, float("nan"), "2026-12-06T06:00:00Z",
]  # fmt: skip


@pytest.mark.parametrize("spec", [BY_COORDINATES, LabelSpec(time_field="at", task=REGRESSION)])
def test_the_quick_read_of_a_label_is_read_labels_or_leaves_it_to_it(spec: LabelSpec) -> None:
    """quick_label gives read_label's label, or None (never another label, never an error)."""
    rng = random.Random(23)
    quick = 0
    for _ in range(5_000):
        doc: Any = {
            field: rng.choice(_FIELD_VALUES)
            for field in ("topic", "partition", "offset", "label", "at")
            if rng.random() < 0.9
        }
        if rng.random() < 0.5:  # the common form, with one field drawn
            common = {"topic": "events", "partition": 1, "offset": 7, "label": 1, "at": 5}
            doc = {**common, **dict(list(doc.items())[:1])}
        got = quick_label(doc, spec)
        try:
            read: Label | Rejected = read_label(doc, None, spec)
        except Rejected as rejected:
            read = rejected
        if got is not None:
            quick += 1
            assert got == read, doc
    assert quick > 200  # the common form took the quick way
    assert quick_label([1], spec) is None


def test_a_scored_at_time_reads_as_the_iso_parse_whatever_second_came_before() -> None:
    """iso_time_us parses the producer's form's second once: the same µs as the full parse."""
    rng = random.Random(7)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    texts = []
    for _ in range(2_000):
        seconds = rng.choice([rng.randrange(-(10**9), 4 * 10**9), 1_796_536_800 + rng.randrange(3)])
        moment = epoch + dt.timedelta(seconds=seconds, milliseconds=rng.randrange(1000))
        text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        texts += [text, text, text.replace("Z", "+00:00"), text[:19] + "Z", text[:-1]]
    for text in texts:  # in an order where the same second often comes again
        moment = dt.datetime.fromisoformat(text)
        expected = (moment.replace(tzinfo=moment.tzinfo or dt.UTC) - epoch) // dt.timedelta(
            microseconds=1
        )
        assert iso_time_us(text) == expected, text
    for bad in (
        "2026-12-07T25:00:00.123Z",
        "2026-12-07T02:00:00.1x3Z",
        "2026-12-07T02:00:00.\u00b2\u00b2\u00b2Z",
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - the parse's own messages
            iso_time_us(bad)

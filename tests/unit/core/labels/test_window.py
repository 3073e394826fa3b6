"""The window: the latest joined records by prediction time, whatever order they arrive in."""

from __future__ import annotations

import gc
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.labels.ledger import Joined, LedgerLabel, ModelScore, Prediction
from streamer.core.labels.window import LabelWindow

SECOND = 1_000_000


def joined(offset: int, at_s: int, challengers: int = 0) -> Joined:
    scores = tuple(ModelScore(f"c{i}", "1", 0.5, at_s * SECOND) for i in range(challengers))
    prediction = Prediction(
        at_s * SECOND, ModelScore("demo", "1", 0.5, at_s * SECOND), scores, LedgerLabel(1.0, None)
    )
    return Joined(b"%d" % offset, prediction)


class TestBounds:
    def test_its_entries_add_nothing_the_garbage_collector_tracks(self) -> None:
        """Kept records once made a young collection every 10,000 joins in the daemon."""
        records = [joined(offset, offset) for offset in range(2_000)]
        window = LabelWindow(max_records=1_000)
        gc.disable()
        try:
            before = gc.get_count()[0]
            window.add(records)
            window.add(records[:10])  # replaced by identity
            grown = gc.get_count()[0] - before
        finally:
            gc.enable()
        assert grown < 10  # a tuple per record: 2,010
        assert [r.identity for r in window.records()][:2] == [b"1000", b"1001"]
        assert not any(gc.is_tracked(entry) for entry in window._records.values())

    def test_it_keeps_the_latest_predictions_not_the_latest_labels(self) -> None:
        window = LabelWindow(max_records=2)
        window.add([joined(3, 30), joined(1, 10)])
        window.add([joined(2, 20)])  # labelled last, predicted before 30: in
        window.add([joined(0, 5)])  # labelled last, predicted first: out
        assert [r.identity for r in window.records()] == [b"2", b"3"]

    def test_a_time_bound_leaves_out_records_predicted_long_before_the_newest(self) -> None:
        window = LabelWindow(max_records=10, max_age_us=10 * SECOND)
        window.add([joined(1, 10), joined(2, 20), joined(3, 25)])
        assert [r.identity for r in window.records()] == [
            b"2",
            b"3",
        ]  # 10 s is not within 10 s of 25 s
        window.add([joined(4, 40)])
        assert [r.identity for r in window.records()] == [b"4"]

    def test_a_record_joined_again_replaces_the_first(self) -> None:
        window = LabelWindow(max_records=5)
        window.add([joined(1, 10)])
        window.add([joined(1, 10, challengers=2)])
        (record,) = window.records()
        assert len(record.prediction.challengers) == 2

    def test_it_holds_at_most_twice_its_bound_between_reads(self) -> None:
        window = LabelWindow(max_records=3)
        for offset in range(100):
            window.add([joined(offset, offset)])
            assert len(window._records) <= 6
        assert len(window) == 3

    def test_a_bound_below_one_is_refused(self) -> None:
        with pytest.raises(ValueError, match="max_records must be > 0"):
            LabelWindow(0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=80),
    st.integers(1, 20),
    st.integers(0, 30),
    st.integers(0, 10**6),
)
def test_the_content_depends_on_the_set_not_the_arrival_order(
    times: list[int], max_records: int, max_age_s: int, seed: int
) -> None:
    records = [joined(offset, at_s) for offset, at_s in enumerate(times)]
    shuffled = records[:]
    random.Random(seed).shuffle(shuffled)
    in_order, out_of_order = (
        LabelWindow(max_records, max_age_s * SECOND),
        LabelWindow(max_records, max_age_s * SECOND),
    )
    for record in records:
        in_order.add([record])
    for start in range(0, len(shuffled), 3):
        out_of_order.add(shuffled[start : start + 3])
    newest = max(times)
    expected = sorted(
        (
            r
            for r in records
            if not max_age_s or r.prediction.time_us > (newest - max_age_s) * SECOND
        ),
        key=lambda r: (r.prediction.time_us, r.identity),
    )[-max_records:]
    assert in_order.records() == out_of_order.records() == expected

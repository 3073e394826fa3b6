"""The commit watermark: unit tests and property tests of WatermarkTracker."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamer.core.offsets import LEDGER_HOLDER, STATE_HOLDER, WatermarkTracker

# Properties run without a deadline (CI machines vary) and leave no example database.
PROPERTIES = settings(deadline=None, database=None)

TP0 = ("events", 0)
TP1 = ("events", 1)


def tracked(*batches: tuple[tuple[str, int], int, int, int]) -> WatermarkTracker:
    """A tracker with (tp, batch_id, first, last) batches, one record per offset."""
    tracker = WatermarkTracker()
    for tp, batch_id, first, last in batches:
        tracker.track(tp, batch_id, first, last, last - first + 1)
    return tracker


class TestWatermark:
    def test_a_new_tracker_has_nothing_to_commit(self) -> None:
        tracker = WatermarkTracker()
        assert tracker.committable() == {}
        assert tracker.watermarks() == {}
        assert tracker.batches_in_flight == 0
        assert tracker.records_in_flight == 0

    def test_an_acked_batch_makes_its_last_offset_plus_one_committable(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        assert tracker.ack(TP0, 0) is True
        assert tracker.committable() == {TP0: 10}
        assert tracker.watermarks() == {TP0: 10}

    def test_commit_never_passes_an_unacknowledged_offset(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19), (TP0, 2, 20, 29))
        tracker.ack(TP0, 1)
        tracker.ack(TP0, 2)
        assert tracker.committable() == {}
        assert tracker.watermarks() == {}
        tracker.ack(TP0, 0)
        assert tracker.committable() == {TP0: 30}

    def test_the_watermark_stops_at_the_first_unacknowledged_batch(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19), (TP0, 2, 20, 29))
        tracker.ack(TP0, 0)
        tracker.ack(TP0, 2)
        assert tracker.watermarks() == {TP0: 10}

    def test_gaps_between_batches_are_skipped(self) -> None:
        tracker = WatermarkTracker()
        tracker.track(TP0, 0, 0, 4, 5)
        tracker.track(TP0, 1, 10, 14, 3)  # compacted: 3 records over 5 offsets
        tracker.ack(TP0, 1)
        assert tracker.watermarks() == {}
        tracker.ack(TP0, 0)
        assert tracker.watermarks() == {TP0: 15}

    def test_partitions_have_independent_watermarks(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP1, 1, 100, 104), (TP0, 2, 10, 19))
        tracker.ack(TP1, 1)
        tracker.ack(TP0, 2)
        assert tracker.watermarks() == {TP1: 105}
        tracker.ack(TP0, 0)
        assert tracker.watermarks() == {TP0: 20, TP1: 105}

    def test_committable_lists_only_partitions_that_advanced_since_the_last_commit(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP1, 1, 0, 9), (TP0, 2, 10, 19))
        tracker.ack(TP0, 0)
        tracker.ack(TP1, 1)
        tracker.mark_committed(tracker.committable())
        assert tracker.committable() == {}
        assert tracker.committed() == {TP0: 10, TP1: 10}
        tracker.ack(TP0, 2)
        assert tracker.committable() == {TP0: 20}
        assert tracker.watermarks() == {TP0: 20, TP1: 10}

    def test_mark_committed_never_moves_a_commit_backwards(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19))
        tracker.ack(TP0, 0)
        tracker.ack(TP0, 1)
        tracker.mark_committed({TP0: 20})
        tracker.mark_committed({TP0: 10})
        assert tracker.committed() == {TP0: 20}
        assert tracker.committable() == {}

    def test_in_flight_counts_drop_only_when_the_watermark_passes_a_batch(self) -> None:
        tracker = WatermarkTracker()
        tracker.track(TP0, 0, 0, 9, 10)
        tracker.track(TP0, 1, 10, 14, 5)
        tracker.track(TP1, 2, 0, 2, 3)
        assert (tracker.batches_in_flight, tracker.records_in_flight) == (3, 18)
        tracker.ack(TP0, 1)
        assert (tracker.batches_in_flight, tracker.records_in_flight) == (3, 18)
        assert tracker.in_flight_for(TP0) == 2
        tracker.ack(TP0, 0)
        assert (tracker.batches_in_flight, tracker.records_in_flight) == (1, 3)
        assert tracker.in_flight_for(TP0) == 0
        assert tracker.in_flight_for(TP1) == 1
        assert tracker.in_flight_for(("other", 0)) == 0

    def test_released_totals_grow_only_when_the_watermark_passes_a_batch(self) -> None:
        tracker = WatermarkTracker()
        tracker.track(TP0, 0, 0, 9, 10, nbytes=100)
        tracker.track(TP0, 1, 10, 14, 5, nbytes=50)
        tracker.track(TP1, 2, 0, 2, 3, nbytes=30)
        tracker.ack(TP0, 1)
        assert tracker.released == (0, 0)
        tracker.ack(TP0, 0)
        assert tracker.released == (15, 150)
        tracker.forget([TP1])  # revoked in flight: never released
        assert tracker.ack(TP1, 2) is False
        assert tracker.released == (15, 150)

    def test_an_ack_of_an_unknown_batch_returns_false_and_changes_nothing(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        assert tracker.ack(TP0, 99) is False
        assert tracker.ack(TP1, 0) is False
        assert tracker.watermarks() == {}
        assert tracker.batches_in_flight == 1

    def test_a_second_ack_of_a_batch_below_the_watermark_returns_false(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        assert tracker.ack(TP0, 0) is True
        assert tracker.ack(TP0, 0) is False
        assert tracker.watermarks() == {TP0: 10}
        assert tracker.records_in_flight == 0


class TestForget:
    def test_forget_drops_the_partition_and_ignores_late_acks(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19), (TP1, 2, 0, 4))
        tracker.ack(TP0, 0)
        tracker.mark_committed(tracker.committable())
        tracker.forget([TP0])
        assert tracker.ack(TP0, 1) is False
        assert tracker.watermarks() == {}
        assert tracker.committable() == {}
        assert tracker.committed() == {}
        assert (tracker.batches_in_flight, tracker.records_in_flight) == (1, 5)
        assert tracker.in_flight_for(TP0) == 0

    def test_a_forgotten_partition_can_be_tracked_again_from_a_lower_offset(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19))
        tracker.ack(TP0, 0)
        tracker.forget([TP0])
        tracker.track(TP0, 5, 10, 14, 5)
        tracker.ack(TP0, 5)
        assert tracker.watermarks() == {TP0: 15}

    def test_forgetting_an_unknown_partition_is_harmless(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        tracker.forget([TP1])
        assert tracker.batches_in_flight == 1


class TestFail:
    def test_a_failed_batch_stops_the_watermark_before_it_for_good(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19), (TP0, 2, 20, 29))
        tracker.ack(TP0, 0)
        tracker.fail(TP0, 1, "MessageSizeTooLargeError: too big")
        tracker.ack(TP0, 2)
        assert tracker.failures == {1: "MessageSizeTooLargeError: too big"}
        assert tracker.watermarks() == {TP0: 10}
        assert tracker.batches_in_flight == 2

    def test_a_failed_batch_stays_uncommittable_even_if_an_ack_for_it_arrives_later(self) -> None:
        # fail() promises that the watermark "stops before it for good".
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19))
        tracker.fail(TP0, 0, "TimeoutError")
        tracker.ack(TP0, 0)
        tracker.ack(TP0, 1)
        assert tracker.watermarks() == {}
        assert tracker.committable() == {}

    def test_fail_of_an_untracked_batch_is_ignored(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        tracker.fail(TP0, 7, "nope")
        tracker.fail(TP1, 0, "nope")
        assert tracker.failures == {}

    def test_forget_clears_the_failures_of_the_partition(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP1, 1, 0, 9))
        tracker.fail(TP0, 0, "a")
        tracker.fail(TP1, 1, "b")
        tracker.forget([TP0])
        assert tracker.failures == {1: "b"}

    def test_failures_returns_a_copy(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        tracker.fail(TP0, 0, "a")
        tracker.failures.clear()
        assert tracker.failures == {0: "a"}


class TestTrackingOrder:
    def test_tracking_a_batch_that_ends_before_it_starts_raises(self) -> None:
        with pytest.raises(ValueError, match=r"batch 0 on events/0 ends \(4\) before it starts"):
            WatermarkTracker().track(TP0, 0, 5, 4, 1)

    def test_tracking_a_batch_that_overlaps_the_previous_one_raises(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        with pytest.raises(
            ValueError, match=r"starts at 9, at or below an offset already tracked \(9\)"
        ):
            tracker.track(TP0, 1, 9, 12, 4)
        assert tracker.batches_in_flight == 1
        assert tracker.records_in_flight == 10

    def test_tracking_a_batch_below_the_acknowledged_watermark_raises(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        tracker.ack(TP0, 0)
        with pytest.raises(ValueError, match="events/0"):
            tracker.track(TP0, 1, 5, 7, 3)
        # Whatever happens, the watermark must never move backwards.
        tracker.ack(TP0, 1)
        assert tracker.watermarks() == {TP0: 10}

    def test_a_batch_of_another_partition_may_start_anywhere(self) -> None:
        tracker = tracked((TP0, 0, 100, 109))
        tracker.track(TP1, 1, 0, 9, 10)
        assert tracker.batches_in_flight == 2


# --- property tests -----------------------------------------------------------


@dataclass
class Batch:
    tp: tuple[str, int]
    batch_id: int
    first: int
    last: int
    size: int


@st.composite
def layouts(draw: st.DrawFn) -> list[Batch]:
    """Batches of 1-3 partitions in a random interleaving that keeps offset order per partition."""
    partitions = draw(st.integers(1, 3))
    per_tp: list[list[tuple[int, int, int]]] = []
    for _ in range(partitions):
        offset = draw(st.integers(0, 50))
        spans = []
        for _ in range(draw(st.integers(0, 8))):
            offset += draw(st.integers(0, 4))  # gap before the batch
            span = draw(st.integers(1, 6))
            size = draw(st.integers(1, span))  # compaction may leave fewer records than offsets
            spans.append((offset, offset + span - 1, size))
            offset += span
        per_tp.append(spans)
    order = draw(
        st.permutations([p for p, spans in enumerate(per_tp) for _ in spans]),
    )
    next_index = [0] * partitions
    batches = []
    for batch_id, p in enumerate(order):
        first, last, size = per_tp[p][next_index[p]]
        next_index[p] += 1
        batches.append(Batch(("topic", p), batch_id, first, last, size))
    return batches


def expected_watermarks(batches: list[Batch], acked: set[int]) -> dict[tuple[str, int], int]:
    """last offset + 1 of the longest fully acknowledged prefix of each partition."""
    marks: dict[tuple[str, int], int] = {}
    blocked: set[tuple[str, int]] = set()
    for b in batches:  # in tracking order, which is offset order per partition
        if b.tp in blocked:
            continue
        if b.batch_id in acked:
            marks[b.tp] = b.last + 1
        else:
            blocked.add(b.tp)
    return marks


def check_tracker(tracker: WatermarkTracker, batches: list[Batch], acked: set[int]) -> None:
    marks = expected_watermarks(batches, acked)
    assert tracker.watermarks() == marks
    for b in batches:
        if b.batch_id not in acked:
            assert tracker.watermarks().get(b.tp, b.first) <= b.first, (
                f"watermark passed unacknowledged batch {b}"
            )
    in_flight = [b for b in batches if b.tp not in marks or b.last >= marks[b.tp]]
    assert tracker.batches_in_flight == len(in_flight)
    assert tracker.records_in_flight == sum(b.size for b in in_flight)
    for tp in {b.tp for b in batches}:
        assert tracker.in_flight_for(tp) == sum(1 for b in in_flight if b.tp == tp)


@PROPERTIES
@given(batches=layouts(), data=st.data())
def test_any_ack_order_keeps_the_watermark_at_the_longest_acknowledged_prefix(
    batches: list[Batch], data: st.DataObject
) -> None:
    tracker = WatermarkTracker()
    for b in batches:
        tracker.track(b.tp, b.batch_id, b.first, b.last, b.size)
    check_tracker(tracker, batches, set())
    acked: set[int] = set()
    committed: dict[tuple[str, int], int] = {}
    for batch_id in data.draw(st.permutations([b.batch_id for b in batches]), label="acks"):
        b = batches[batch_id]
        assert tracker.ack(b.tp, batch_id) is True
        acked.add(batch_id)
        check_tracker(tracker, batches, acked)
        expected = {tp: o for tp, o in tracker.watermarks().items() if committed.get(tp, -1) < o}
        assert tracker.committable() == expected
        if data.draw(st.booleans(), label="commit now"):
            committed.update(tracker.committable())
            tracker.mark_committed(tracker.committable())
            assert tracker.committable() == {}
            assert tracker.committed() == committed
    assert tracker.batches_in_flight == 0
    assert tracker.records_in_flight == 0
    last = {}
    for b in batches:
        last[b.tp] = b.last + 1
    assert tracker.watermarks() == last


@PROPERTIES
@given(batches=layouts(), data=st.data())
def test_acks_after_forget_are_ignored_and_leave_other_partitions_alone(
    batches: list[Batch], data: st.DataObject
) -> None:
    tracker = WatermarkTracker()
    for b in batches:
        tracker.track(b.tp, b.batch_id, b.first, b.last, b.size)
    order = data.draw(st.permutations([b.batch_id for b in batches]), label="acks")
    cut = data.draw(st.integers(0, len(order)), label="forget after")
    gone = ("topic", data.draw(st.integers(0, 2), label="forgotten partition"))
    acked = set(order[:cut])
    for batch_id in order[:cut]:
        tracker.ack(batches[batch_id].tp, batch_id)
    tracker.forget([gone])
    kept = [b for b in batches if b.tp != gone]
    for batch_id in order[cut:]:
        b = batches[batch_id]
        assert tracker.ack(b.tp, batch_id) is (b.tp != gone)
        acked.add(batch_id)
    check_tracker(tracker, kept, acked)
    assert gone not in tracker.watermarks()
    assert gone not in tracker.committable()
    assert tracker.in_flight_for(gone) == 0


@PROPERTIES
@given(
    first=st.integers(0, 1000),
    span=st.integers(1, 50),
    data=st.data(),
    acked=st.booleans(),
)
def test_tracking_a_batch_out_of_offset_order_raises(
    first: int, span: int, data: st.DataObject, acked: bool
) -> None:
    tracker = WatermarkTracker()
    last = first + span - 1
    tracker.track(TP0, 0, first, last, span)
    if acked:
        tracker.ack(TP0, 0)
    before = tracker.watermarks()
    second_first = data.draw(st.integers(0, last), label="second batch starts at")
    second_last = data.draw(st.integers(second_first, second_first + 20), label="and ends at")
    note(f"first batch {first}..{last}, second {second_first}..{second_last}")
    with pytest.raises(ValueError, match="events/0"):
        tracker.track(TP0, 1, second_first, second_last, second_last - second_first + 1)
    assert tracker.watermarks() == before


class WatermarkMachine(RuleBasedStateMachine):
    """Interleaves track, ack, fail, commit and forget against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = WatermarkTracker()
        self.batches: list[Batch] = []  # since the last forget of each partition
        self.acked: set[int] = set()
        self.failed: dict[int, str] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.next_offset: dict[tuple[str, int], int] = {}
        self.next_id = 0

    @rule(p=st.integers(0, 2), gap=st.integers(0, 3), span=st.integers(1, 5), data=st.data())
    def track(self, p: int, gap: int, span: int, data: st.DataObject) -> None:
        tp = ("topic", p)
        first = self.next_offset.get(tp, 0) + gap
        size = data.draw(st.integers(1, span))
        batch = Batch(tp, self.next_id, first, first + span - 1, size)
        self.tracker.track(tp, batch.batch_id, batch.first, batch.last, batch.size)
        self.batches.append(batch)
        self.next_offset[tp] = batch.last + 1
        self.next_id += 1

    def _open(self) -> list[Batch]:
        return [b for b in self.batches if b.batch_id not in self.acked | set(self.failed)]

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from(self._open()))
        assert self.tracker.ack(batch.tp, batch.batch_id) is True
        self.acked.add(batch.batch_id)

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from(self._open()))
        self.tracker.fail(batch.tp, batch.batch_id, f"error {batch.batch_id}")
        self.failed[batch.batch_id] = f"error {batch.batch_id}"

    @rule(p=st.integers(0, 2), batch_id=st.integers(0, 1000))
    def ack_unknown(self, p: int, batch_id: int) -> None:
        tp = ("topic", p)
        known = {b.batch_id for b in self._open() if b.tp == tp}
        if batch_id not in known:
            before = self.tracker.watermarks()
            self.tracker.ack(tp, batch_id + 10_000)
            assert self.tracker.watermarks() == before

    @rule()
    def commit(self) -> None:
        offsets = self.tracker.committable()
        self.tracker.mark_committed(offsets)
        self.committed.update(offsets)

    @rule(p=st.integers(0, 2))
    def forget(self, p: int) -> None:
        tp = ("topic", p)
        gone = {b.batch_id for b in self.batches if b.tp == tp}
        self.tracker.forget([tp])
        self.batches = [b for b in self.batches if b.tp != tp]
        self.failed = {i: r for i, r in self.failed.items() if i not in gone}
        self.committed.pop(tp, None)
        self.next_offset[tp] = 0  # a re-assigned partition restarts from its commit

    @invariant()
    def watermarks_match_the_model(self) -> None:
        check_tracker(self.tracker, self.batches, self.acked)

    @invariant()
    def committable_is_what_advanced_since_the_last_commit(self) -> None:
        marks = expected_watermarks(self.batches, self.acked)
        expected = {tp: o for tp, o in marks.items() if self.committed.get(tp, -1) < o}
        assert self.tracker.committable() == expected
        assert self.tracker.committed() == self.committed

    @invariant()
    def failures_are_reported(self) -> None:
        assert self.tracker.failures == self.failed


WatermarkMachine.TestCase.settings = settings(
    deadline=None, database=None, max_examples=100, stateful_step_count=40
)
TestWatermarkStateMachine = WatermarkMachine.TestCase


class TestDurableBound:
    """A partition with state commits only below the first offset its changelog lacks."""

    def test_the_commit_stops_at_the_durable_bound_and_follows_it(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19), (TP1, 2, 0, 4))
        tracker.hold(TP0, 0)  # batch 0's changes gathered, not yet in a flush
        tracker.ack(TP0, 0)
        tracker.ack(TP0, 1)
        tracker.ack(TP1, 2)  # no bound: as before
        assert tracker.committable() == {TP0: 0, TP1: 5}
        assert tracker.watermarks() == {TP0: 0, TP1: 5}
        assert tracker.batches_in_flight == 0  # the credits are free all the same
        tracker.mark_committed({TP0: 0, TP1: 5})
        assert tracker.committable() == {}
        tracker.hold(TP0, 10)  # a flush with batch 0's changes acknowledged
        assert tracker.committable() == {TP0: 10}
        tracker.hold(TP0, None)  # every change acknowledged
        assert tracker.committable() == {TP0: 20}
        assert tracker.watermarks() == {TP0: 20, TP1: 5}

    def test_a_bound_above_the_watermark_changes_nothing(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19))
        tracker.hold(TP0, 15)
        tracker.ack(TP0, 0)
        assert tracker.committable() == {TP0: 10}

    def test_forget_drops_the_bound(self) -> None:
        tracker = tracked((TP0, 0, 0, 9))
        tracker.hold(TP0, 0)
        tracker.ack(TP0, 0)
        tracker.forget([TP0])
        tracker.track(TP0, 1, 10, 19, 10)
        tracker.ack(TP0, 1)
        assert tracker.committable() == {TP0: 20}

    def test_the_state_and_the_ledger_hold_each_their_own_bound(self) -> None:
        tracker = tracked((TP0, 0, 0, 9), (TP0, 1, 10, 19), (TP0, 2, 20, 29))
        tracker.hold(TP0, 10)  # the state's (the default holder)
        tracker.hold(TP0, 20, LEDGER_HOLDER)
        for batch_id in (0, 1, 2):
            tracker.ack(TP0, batch_id)
        assert tracker.watermarks() == {TP0: 10}
        assert sorted(tracker.bounds(TP0)) == [10, 20]
        assert (tracker.held(TP0, LEDGER_HOLDER), tracker.held(TP0, STATE_HOLDER)) == (20, 10)
        assert tracker.holding(LEDGER_HOLDER) == 1
        tracker.hold(TP0, None)  # the state's changes are in: the ledger's bound still holds
        assert tracker.watermarks() == {TP0: 20}
        assert tracker.held(TP0, STATE_HOLDER) is None
        tracker.hold(TP0, None, LEDGER_HOLDER)
        assert tracker.watermarks() == {TP0: 30}
        assert (tracker.bounds(TP0), tracker.holding(LEDGER_HOLDER)) == ([], 0)

"""The consumer's books: unit tests and property tests of Ledger, with no actor and no client."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.ledger import HELD_POLL_WAIT_S, Ledger
from streamer.core.records import RecordColumns
from streamer.messages import BatchAcked, BatchPartlyDelivered, SourceBatch
from streamer.settings import BatchSettings

# Properties run without a deadline (CI machines vary) and leave no example database.
PROPERTIES = settings(deadline=None, database=None)

TP0 = ("events", 0)
TP1 = ("events", 1)
# Batches of at most 10 records, a partial one waits for ever, none leaves early.
QUIET = BatchSettings(max_records=10, max_wait_s=3600.0, max_in_flight=8, eager_when_idle=False)


def columns(offsets: list[int] | range, value: bytes = b"v") -> RecordColumns:
    """Records with these offsets, a 2-byte key ("k0".. cut to 2) and ``value`` each."""
    offsets = list(offsets)
    return RecordColumns(
        offsets,
        [f"k{o}".encode()[:2] for o in offsets],
        [value] * len(offsets),
        [1_700_000_000_000 + o for o in offsets],
    )


def poll(
    ledger: Ledger, polled: dict[tuple[str, int], RecordColumns], now: float = 0.0
) -> list[SourceBatch]:
    """One round of the consumer's loop: plan, "poll" (the given records), take."""
    plan = ledger.plan(now, fetching=True)
    return ledger.take(polled, now, plan)


def ack(ledger: Ledger, source: SourceBatch, error: str | None = None) -> bool:
    return ledger.settle(
        BatchAcked(source.batch_id, source.topic, source.partition, error, source.epoch)
    )


def offsets_of(batches: list[SourceBatch]) -> list[list[int]]:
    return [b.offsets for b in batches]


class TestCredits:
    def test_nothing_is_taken_before_fetching_starts(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        plan = ledger.plan(0.0, fetching=False)
        assert (plan.ready, plan.max_records) == ([], 0)

    def test_a_poll_takes_at_most_what_the_free_batches_hold(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        assert ledger.plan(0.0, fetching=True).max_records == 8 * 10
        poll(ledger, {TP0: columns(range(60))})
        assert ledger.tracker.batches_in_flight == 6
        assert ledger.plan(0.0, fetching=True).max_records == 2 * 10
        assert Ledger(QUIET, max_poll_records=25).plan(0.0, fetching=True).max_records == 25

    def test_after_large_records_the_free_bytes_bound_the_next_poll(self) -> None:
        batch = BatchSettings(
            max_records=10, max_in_flight=8, max_in_flight_bytes=8000, eager_when_idle=False
        )
        ledger = Ledger(batch, max_poll_records=500)
        ledger.assign([TP0])
        # 998 bytes of value and a 2-byte key: 1000 bytes a record, one a batch (8000 / 8).
        sent = poll(ledger, {TP0: columns(range(3), b"x" * 998)})
        assert offsets_of(sent) == [[0], [1], [2]]
        assert ledger.plan(0.0, fetching=True).max_records == 5  # 5000 bytes are free

    def test_at_the_cap_it_takes_nothing_until_an_ack_frees_a_credit(self) -> None:
        batch = BatchSettings(max_records=10, max_in_flight=2, eager_when_idle=False)
        ledger = Ledger(batch, max_poll_records=500)
        ledger.assign([TP0])
        first, _second = poll(ledger, {TP0: columns(range(20))})
        assert not ledger.has_credit()
        assert ledger.plan(0.0, fetching=True).max_records == 0
        ack(ledger, first)
        assert ledger.has_credit()
        assert ledger.plan(0.0, fetching=True).max_records == 10

    def test_a_full_batch_the_credits_held_back_leaves_first_once_they_allow(self) -> None:
        batch = BatchSettings(max_records=10, max_in_flight=1, eager_when_idle=False)
        ledger = Ledger(batch, max_poll_records=500)
        ledger.assign([TP0])
        (first,) = poll(ledger, {TP0: columns(range(25))})
        assert first.offsets == list(range(10))
        assert ledger.batcher.holds_full_batches
        ack(ledger, first)
        plan = ledger.plan(0.0, fetching=True)
        assert plan.max_records == 0, "the released batch took the last credit"
        (second,) = ledger.take({}, 0.0, plan)
        assert second.offsets == list(range(10, 20))

    def test_a_held_back_batch_of_a_partition_the_poll_revoked_is_abandoned(self) -> None:
        batch = BatchSettings(max_records=10, max_in_flight=1, eager_when_idle=False)
        prepared: list[int] = []

        def prepare(source: SourceBatch) -> SourceBatch:
            prepared.append(source.first_offset)
            return source

        ledger = Ledger(batch, max_poll_records=500, prepare=prepare)
        ledger.assign([TP0])
        (first,) = poll(ledger, {TP0: columns(range(25))})
        ack(ledger, first)
        plan = ledger.plan(0.0, fetching=True)  # releases the held-back batch 10..19
        ledger.revoke([TP0])  # inside the poll
        assert ledger.take({}, 0.0, plan) == []
        assert prepared == [0]  # the state never saw the abandoned batch

    def test_a_poll_waits_no_longer_than_the_oldest_partial_batch(self) -> None:
        batch = BatchSettings(max_records=10, max_wait_s=0.2, eager_when_idle=False)
        ledger = Ledger(batch, max_poll_records=500)
        ledger.assign([TP0])
        assert ledger.plan(0.0, fetching=True).timeout_s == 0.2
        poll(ledger, {TP0: columns(range(3))}, now=10.0)
        assert ledger.plan(10.15, fetching=True).timeout_s == pytest.approx(0.05)
        slow = Ledger(QUIET, max_poll_records=500)
        assert slow.plan(0.0, fetching=True).timeout_s == 0.5

    def test_a_poll_does_not_wait_once_the_news_of_the_last_one_frees_a_partial_batch(
        self,
    ) -> None:
        # max_in_flight 8: partial batches leave while fewer than 2 wait in the stages.
        eager = BatchSettings(max_records=10, max_wait_s=0.05, max_in_flight=8)
        ledger = Ledger(eager, max_poll_records=500)
        ledger.assign([TP0, TP1])
        first = poll(ledger, {TP0: columns(range(3)), TP1: columns(range(2))})
        # Still in the stages: the next poll's records wait, and the poll only briefly,
        # for the news that frees them is read between polls.
        assert poll(ledger, {TP0: columns(range(3, 5))}) == []
        assert ledger.plan(0.0, fetching=True).timeout_s == HELD_POLL_WAIT_S
        # BatchProduced came while that poll waited: the buffered records go now.
        for source in first:
            ledger.produced(source.batch_id)
        plan = ledger.plan(0.0, fetching=True)
        assert plan.timeout_s == 0.0
        assert offsets_of(ledger.take({}, 0.0, plan)) == [[3, 4]]
        # Nothing buffered: the poll waits for records up to max_wait_s.
        assert ledger.plan(0.0, fetching=True).timeout_s == pytest.approx(0.05)

    def test_records_held_by_the_eager_rule_wait_no_longer_than_their_max_wait(self) -> None:
        eager = BatchSettings(max_records=10, max_wait_s=0.0005, max_in_flight=8)
        ledger = Ledger(eager, max_poll_records=500)
        ledger.assign([TP0])
        for offset in range(4):
            poll(ledger, {TP0: columns([offset])})
        assert poll(ledger, {TP0: columns([4])}) == []  # held: four batches in the stages
        assert ledger.plan(0.0, fetching=True).timeout_s == pytest.approx(0.0005)
        without_eager = Ledger(QUIET, max_poll_records=500)
        without_eager.assign([TP0])
        assert poll(without_eager, {TP0: columns([0])}) == []  # waits to fill, not for news
        assert without_eager.plan(0.0, fetching=True).timeout_s == 0.5

    def test_a_full_batch_the_credits_released_does_not_wait_for_the_poll(self) -> None:
        batch = BatchSettings(max_records=10, max_in_flight=2, eager_when_idle=False)
        ledger = Ledger(batch, max_poll_records=500)
        ledger.assign([TP0])
        first, second = poll(ledger, {TP0: columns(range(35))})
        assert ledger.batcher.holds_full_batches
        ack(ledger, first)
        ack(ledger, second)
        plan = ledger.plan(0.0, fetching=True)
        assert (plan.max_records, plan.timeout_s) == (10, 0.0)  # one credit left, no wait
        assert offsets_of(ledger.take({}, 0.0, plan)) == [list(range(20, 30))]


class TestDispatch:
    def test_batches_are_numbered_per_partition_and_tagged_with_the_epoch(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500, epoch=3)
        ledger.assign([TP0, TP1])
        sent = poll(ledger, {TP0: columns(range(20)), TP1: columns(range(10))})
        assert [(b.partition, b.seq, b.epoch) for b in sent] == [(0, 0, 3), (0, 1, 3), (1, 0, 3)]
        assert len({b.batch_id for b in sent}) == 3
        assert ledger.records_dispatched == 30
        assert ledger.status(fetching=True, paused=False).records_buffered == 0

    def test_records_of_a_partition_revoked_inside_the_poll_are_dropped(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP1])
        assert poll(ledger, {TP0: columns(range(10))}) == []
        assert ledger.batcher.buffered == 0

    def test_partial_batches_leave_at_once_while_little_is_in_flight(self) -> None:
        eager = BatchSettings(max_records=10, max_wait_s=3600.0, max_in_flight=8)
        ledger = Ledger(eager, max_poll_records=500)
        ledger.assign([TP0])
        assert offsets_of(poll(ledger, {TP0: columns(range(3))})) == [[0, 1, 2]]
        quiet = Ledger(QUIET, max_poll_records=500)
        quiet.assign([TP0])
        assert poll(quiet, {TP0: columns(range(3))}) == []
        assert offsets_of(quiet.drain(0.0)) == [[0, 1, 2]]

    def test_batches_waiting_only_for_the_broker_do_not_hold_partial_batches_back(self) -> None:
        # max_in_flight 8: eager while fewer than 2 batches wait in the stages and
        # fewer than 4 are in flight in all.
        eager = BatchSettings(max_records=10, max_wait_s=3600.0, max_in_flight=8)
        ledger = Ledger(eager, max_poll_records=500)
        ledger.assign([TP0, TP1])
        first = poll(ledger, {TP0: columns(range(3)), TP1: columns(range(2))})
        assert offsets_of(first) == [[0, 1, 2], [0, 1]]
        assert ledger.batches_in_stages == 2
        # Both still in the stages: a partial batch waits to fill.
        assert poll(ledger, {TP0: columns(range(3, 5))}) == []
        # Produced, waiting for the broker's acknowledgement: it leaves at once.
        for source in first:
            ledger.produced(source.batch_id)
        assert ledger.batches_in_stages == 0
        assert offsets_of(poll(ledger, {TP0: columns(range(5, 6))})) == [[3, 4, 5]]

    def test_partial_batches_wait_once_half_the_credits_are_in_use(self) -> None:
        eager = BatchSettings(max_records=10, max_wait_s=3600.0, max_in_flight=8)
        ledger = Ledger(eager, max_poll_records=500)
        ledger.assign([TP0])
        for offset in range(4):
            (sent,) = poll(ledger, {TP0: columns([offset])})
            ledger.produced(sent.batch_id)
        # Four in flight (half of 8), none in the stages: the next partial batch waits.
        assert poll(ledger, {TP0: columns([4])}) == []
        assert ledger.batcher.buffered == 1

    def test_an_acknowledged_batch_or_a_revoked_partition_leaves_the_stages_count(self) -> None:
        eager = BatchSettings(max_records=10, max_wait_s=3600.0, max_in_flight=8)
        ledger = Ledger(eager, max_poll_records=500)
        ledger.assign([TP0, TP1])
        zero, one = poll(ledger, {TP0: columns(range(2)), TP1: columns(range(2))})
        ack(ledger, zero)  # an ack can overtake its BatchProduced (two threads)
        assert ledger.batches_in_stages == 1
        ledger.revoke([TP1])
        assert ledger.batches_in_stages == 0
        ledger.produced(zero.batch_id)  # late, harmless
        assert ledger.batches_in_stages == 0
        assert one.partition == 1

    def test_a_rewind_counts_every_batch_sent_again_as_in_the_stages(self) -> None:
        eager = BatchSettings(max_records=10, max_wait_s=3600.0, max_in_flight=8)
        ledger = Ledger(eager, max_poll_records=500)
        ledger.assign([TP0])
        (sent,) = poll(ledger, {TP0: columns(range(2))})
        ledger.produced(sent.batch_id)
        resent = ledger.rewind(1, 0.0)
        assert [b.batch_id for b in resent] == [sent.batch_id]
        assert ledger.batches_in_stages == 1

    def test_a_partial_batch_leaves_when_it_is_old_enough(self) -> None:
        batch = BatchSettings(max_records=10, max_wait_s=1.0, eager_when_idle=False)
        ledger = Ledger(batch, max_poll_records=500)
        ledger.assign([TP0])
        assert poll(ledger, {TP0: columns(range(3))}, now=0.0) == []
        assert offsets_of(poll(ledger, {}, now=1.0)) == [[0, 1, 2]]


class TestDeliveries:
    def test_an_ack_of_an_older_epoch_still_moves_the_watermark(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        (old,) = poll(ledger, {TP0: columns(range(10))})
        ledger.rewind(1, 0.0)
        assert ack(ledger, old) is False
        assert ledger.tracker.watermarks() == {TP0: 10}
        assert ledger.rewind(2, 0.0) == []

    def test_a_failed_delivery_stops_the_watermark_before_its_batch_for_good(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        b0, b1, b2 = poll(ledger, {TP0: columns(range(30))})
        ack(ledger, b0)
        assert ack(ledger, b1, error="KafkaTimeoutError") is True
        ack(ledger, b2)
        assert ledger.tracker.watermarks() == {TP0: 10}

    def test_a_failure_of_a_copy_the_rewind_replaced_or_of_a_revoked_partition_is_ignored(
        self,
    ) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0, TP1])
        p0, p1 = poll(ledger, {TP0: columns(range(10)), TP1: columns(range(10))})
        ledger.rewind(1, 0.0)
        assert ack(ledger, p0, error="late, from epoch 0") is False
        ledger.revoke([TP1])
        assert ack(ledger, p1, error="late, revoked") is False
        assert ledger.tracker.failures == {}


class TestRewind:
    def test_a_rewind_sends_the_unacknowledged_batches_again_in_order_in_the_new_epoch(
        self,
    ) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0, TP1])
        b0, b1, b2, c0 = poll(ledger, {TP0: columns(range(30)), TP1: columns(range(10))})
        ack(ledger, b0)
        ack(ledger, b2)  # behind an unacknowledged one: sent again, in order
        again = ledger.rewind(1, 5.0)
        assert [(b.batch_id, b.seq, b.epoch, b.dispatched_at) for b in again] == [
            (b1.batch_id, 0, 1, 5.0),
            (b2.batch_id, 1, 1, 5.0),
            (c0.batch_id, 0, 1, 5.0),
        ]
        assert offsets_of(again) == [b1.offsets, b2.offsets, c0.offsets]
        assert [b.seq for b in poll(ledger, {TP0: columns(range(30, 40))})] == [2]

    def test_delivered_batches_above_the_ledger_bound_are_sent_again_until_it_passes(
        self,
    ) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        b0, b1, b2 = poll(ledger, {TP0: columns(range(30))})
        ledger.hold_ledger(TP0, 10)
        for batch in (b0, b1, b2):
            ack(ledger, batch)
        assert ledger.tracker.batches_in_flight == 0
        assert offsets_of(ledger.rewind(1, 0.0)) == [list(range(10, 20)), list(range(20, 30))]
        ledger.hold_ledger(TP0, 20)
        assert offsets_of(ledger.rewind(2, 0.0)) == [list(range(20, 30))]
        ledger.hold_ledger(TP0, None)
        assert ledger.rewind(3, 0.0) == []

    def test_batches_kept_for_the_ledger_stop_new_ones_at_four_per_slot(self) -> None:
        # A ledger changelog that never acknowledges: the delivered batches stay kept, and
        # past 4 x max_in_flight (2 here) of them no credit is left, whatever is in flight.
        ledger = Ledger(
            BatchSettings(
                max_records=10, max_wait_s=3600.0, max_in_flight=2, eager_when_idle=False
            ),
            max_poll_records=500,
        )
        ledger.assign([TP0])
        ledger.hold_ledger(TP0, 0)
        taken: list[SourceBatch] = []
        for start in range(0, 200, 20):
            batches = poll(ledger, {TP0: columns(range(start, start + 20))})
            for batch in batches:
                ack(ledger, batch)
            taken += batches
        assert len(taken) == 8  # 4 x 2 slots, the rest buffered in the batcher
        assert ledger.tracker.batches_in_flight == 0
        assert not ledger.has_credit()
        assert ledger.plan(0.0, fetching=True).max_records == 0
        ledger.hold_ledger(TP0, 40)  # the first four batches' predictions are in
        assert ledger.has_credit()
        assert len(poll(ledger, {})) == 2  # then the 2 in-flight slots bound it

    def test_a_rewind_sends_only_the_unanswered_tail_of_a_partly_delivered_batch(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        first, second = poll(ledger, {TP0: columns(range(20))})
        ledger.settle(BatchPartlyDelivered(first.batch_id, "events", 0, answered_below=7))
        again = ledger.rewind(1, 0.0)
        assert offsets_of(again) == [[7, 8, 9], list(range(10, 20))]
        assert again[0].keys == first.keys[7:]
        assert again[0].values == first.values[7:]
        assert again[0].timestamps_ms == first.timestamps_ms[7:]
        assert [b.batch_id for b in again] == [first.batch_id, second.batch_id]
        for source in again:
            ack(ledger, source)
        assert ledger.tracker.watermarks() == {TP0: 20}, "the tail's ack covers the whole batch"

    def test_a_partly_delivered_batch_that_is_wholly_answered_or_unknown_is_kept(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        (only,) = poll(ledger, {TP0: columns(range(10))})
        ledger.settle(BatchPartlyDelivered(only.batch_id, "events", 0, answered_below=10))
        ledger.settle(BatchPartlyDelivered(only.batch_id + 1, "events", 0, answered_below=5))
        ledger.settle(BatchPartlyDelivered(only.batch_id, "events", 1, answered_below=5))
        assert offsets_of(ledger.rewind(1, 0.0)) == [list(range(10))]


class TestRebalance:
    def test_a_revoke_returns_the_acknowledged_watermark_of_the_revoked_partitions(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0, TP1])
        p0a, _p0b, p1 = poll(ledger, {TP0: columns(range(20)), TP1: columns(range(10))})
        ack(ledger, p0a)
        ack(ledger, p1)
        assert ledger.revoke([TP0]) == {TP0: 10}
        assert ledger.assigned == [TP1]
        assert ledger.tracker.watermarks() == {TP1: 10}
        assert ledger.tracker.batches_in_flight == 0
        assert offsets_of(ledger.rewind(1, 0.0)) == [], "abandoned work is never sent again"

    def test_a_partition_given_back_resumes_at_its_oldest_unacknowledged_batch(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        b0, _b1 = poll(ledger, {TP0: columns(range(25))})  # 20..24 wait in the batcher
        ack(ledger, b0)
        ledger.revoke([TP0])
        assert ledger.assign([TP0]) == {TP0: 10}
        assert ledger.batcher.buffered == 0

    def test_a_partition_given_back_resumes_at_its_ledger_bound_below_the_undelivered(
        self,
    ) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        b0, b1, _b2 = poll(ledger, {TP0: columns(range(30))})
        ledger.hold_ledger(TP0, 0)  # batch 0's predictions: not in the ledger's changelog yet
        ack(ledger, b0)
        ack(ledger, b1)
        assert ledger.tracker.batches_in_flight == 1  # their credits are free
        assert ledger.first_undelivered(TP0) == 20
        assert ledger.revoke([TP0]) == {TP0: 0}
        assert ledger.assign([TP0]) == {TP0: 0}  # the next owner of the ledger records them

    def test_without_work_in_flight_it_resumes_at_the_oldest_buffered_record(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        (b0,) = poll(ledger, {TP0: columns(range(15))})
        ack(ledger, b0)
        ledger.revoke([TP0])
        assert ledger.assign([TP0]) == {TP0: 10}

    def test_with_nothing_in_flight_or_buffered_it_resumes_at_the_fetch_end(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        assert poll(ledger, {TP0: columns([3, 5, 8])}) == []  # compacted, a partial batch
        (b0,) = ledger.drain(0.0)
        ack(ledger, b0)
        ledger.revoke([TP0])
        assert ledger.assign([TP0]) == {TP0: 9}

    def test_only_a_partition_revoked_and_given_back_in_one_rebalance_is_sought(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0])
        poll(ledger, {TP0: columns(range(10))})
        ledger.revoke([TP0])
        assert ledger.assign([TP1]) == {}, "a partition new to this member starts at the commit"
        assert ledger.assign([TP0]) == {}, "the resume point is forgotten after the rebalance"
        assert ledger.assigned == [TP0, TP1]


class TestReports:
    def test_the_lag_counts_from_the_watermark_or_before_an_ack_from_the_fetch_position(
        self,
    ) -> None:
        ledger = Ledger(QUIET, max_poll_records=500)
        ledger.assign([TP0, TP1, ("events", 2)])
        p0, _p1 = poll(ledger, {TP0: columns(range(10)), TP1: columns(range(10))})
        ack(ledger, p0)
        progress = ledger.progress({TP0: 50, TP1: 30, ("events", 2): None}, paused=True)
        assert progress.lag == {TP0: 40, TP1: 20}
        assert progress.paused_partitions == 3
        assert (progress.in_flight_batches, progress.in_flight_records) == (1, 10)
        assert progress.in_flight_bytes == 10 * 3
        assert ledger.progress({}, paused=False).paused_partitions == 0

    def test_the_status_names_what_is_in_flight_buffered_and_committed(self) -> None:
        ledger = Ledger(QUIET, max_poll_records=500, epoch=2)
        ledger.assign([TP1, TP0])
        b0, _b1 = poll(ledger, {TP0: columns(range(25))})
        ack(ledger, b0)
        ledger.tracker.mark_committed({TP0: 10})
        status = ledger.status(fetching=True, paused=False)
        assert status.assigned == [TP0, TP1]
        assert (status.batches_in_flight, status.records_in_flight) == (1, 10)
        assert (status.records_dispatched, status.records_buffered) == (20, 5)
        assert (status.watermarks, status.committed, status.epoch) == ({TP0: 10}, {TP0: 10}, 2)


# --- properties ---------------------------------------------------------------


@dataclass
class Run:
    """What a random run did to one ledger: the records fetched per partition, and the batches."""

    ledger: Ledger
    fetched: dict[tuple[str, int], list[int]]
    sent: list[SourceBatch]
    acked: set[int]
    answered_below: dict[int, int]


@st.composite
def runs(draw: st.DrawFn, *, partly: bool) -> Run:
    """Polls of random sizes (with gaps) on two partitions, random acks, partial deliveries."""
    ledger = Ledger(
        BatchSettings(max_records=5, max_wait_s=3600.0, max_in_flight=1000, eager_when_idle=False),
        max_poll_records=10_000,
    )
    ledger.assign([TP0, TP1])
    fetched: dict[tuple[str, int], list[int]] = {TP0: [], TP1: []}
    sent: list[SourceBatch] = []
    for _ in range(draw(st.integers(1, 6))):
        polled = {}
        for tp in (TP0, TP1):
            offset = fetched[tp][-1] + 1 if fetched[tp] else draw(st.integers(0, 5))
            offsets = []
            for gap in draw(st.lists(st.integers(1, 3), max_size=12)):  # > 1: compacted
                offsets.append(offset)
                offset += gap
            if offsets:
                fetched[tp] += offsets
                polled[tp] = columns(offsets)
        sent += poll(ledger, polled)
    acked = {b.batch_id for b in sent if draw(st.booleans())}
    for b in sent:
        if b.batch_id in acked:
            ack(ledger, b)
    answered_below: dict[int, int] = {}
    for b in sent:
        if partly and len(b) > 1 and b.batch_id not in acked and draw(st.booleans()):
            below = b.offsets[draw(st.integers(1, len(b) - 1))]
            ledger.settle(BatchPartlyDelivered(b.batch_id, b.topic, b.partition, below))
            answered_below[b.batch_id] = below
    return Run(ledger, fetched, sent, acked, answered_below)


def unacknowledged_work(run: Run, tp: tuple[str, int]) -> list[list[int]]:
    """Each batch of ``tp`` not yet below the watermark, less its answered head."""
    mark = run.ledger.tracker.watermarks().get(tp, -1)
    work = []
    for b in run.sent:
        if (b.topic, b.partition) != tp or b.last_offset < mark:
            continue
        below = run.answered_below.get(b.batch_id)
        work.append([o for o in b.offsets if below is None or o >= below])
    return work


@PROPERTIES
@given(run=runs(partly=True), epoch=st.integers(1, 5))
def test_a_rewind_resends_exactly_the_unacknowledged_work_in_partition_order(
    run: Run, epoch: int
) -> None:
    again = run.ledger.rewind(epoch, 1.0)
    for tp in (TP0, TP1):
        mine = [b for b in again if (b.topic, b.partition) == tp]
        assert offsets_of(mine) == unacknowledged_work(run, tp)
        assert [b.seq for b in mine] == list(range(len(mine)))
    assert all(b.epoch == epoch for b in again)
    by_id = {b.batch_id: b for b in run.sent}
    for b in again:
        original = by_id[b.batch_id]
        cut = original.offsets.index(b.first_offset)
        assert b.keys == original.keys[cut:]
        assert b.values == original.values[cut:]
        assert b.timestamps_ms == original.timestamps_ms[cut:]
    # Acknowledging what was sent again delivers everything that was dispatched.
    for b in again:
        ack(run.ledger, b)
    ends = {(b.topic, b.partition): b.last_offset + 1 for b in run.sent}
    assert run.ledger.tracker.watermarks() == ends
    assert run.ledger.tracker.batches_in_flight == 0


@PROPERTIES
@given(run=runs(partly=False), drain=st.booleans())
def test_a_revoke_and_reassign_resumes_at_the_first_undelivered_offset(
    run: Run, drain: bool
) -> None:
    if drain:
        run.sent += run.ledger.drain(0.0)
    marks = run.ledger.tracker.watermarks()
    expected = {}
    for tp, fetched in run.fetched.items():
        if fetched:
            undelivered = [o for o in fetched if o >= marks.get(tp, -1)]
            expected[tp] = undelivered[0] if undelivered else fetched[-1] + 1
    committable = run.ledger.tracker.committable()
    assert run.ledger.revoke([TP0, TP1]) == committable
    assert run.ledger.assign([TP1, TP0]) == expected
    assert run.ledger.tracker.batches_in_flight == 0
    assert run.ledger.batcher.buffered == 0

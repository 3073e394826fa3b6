"""Micro-batching by size and age, per partition."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.batching import Budget, MicroBatcher
from streamer.core.records import RecordColumns

# Properties run without a deadline (CI machines vary) and leave no example database.
PROPERTIES = settings(deadline=None, database=None)

TP0 = ("events", 0)
TP1 = ("events", 1)


def cols(offsets: list[int]) -> RecordColumns:
    """Records with these offsets; key, value and timestamp are derived from the offset."""
    return RecordColumns(
        list(offsets),
        [f"k{o}".encode() for o in offsets],
        [f"v{o}".encode() for o in offsets],
        [1_700_000_000_000 + o for o in offsets],
    )


def offsets_of(
    ready: list[tuple[tuple[str, int], RecordColumns]],
) -> list[tuple[tuple[str, int], list[int]]]:
    """The released batches as (partition, offsets), after checking that the columns agree."""
    for _tp, batch in ready:
        assert batch == cols(batch.offsets), "a batch's columns came apart"
    return [(tp, batch.offsets) for tp, batch in ready]


class TestSizeLimit:
    def test_a_full_batch_is_released_at_once(self) -> None:
        batcher = MicroBatcher(max_records=3, max_wait_s=10.0)
        assert offsets_of(batcher.add(TP0, cols([1, 2]), now=0.0)) == []
        assert offsets_of(batcher.add(TP0, cols([3]), now=0.1)) == [(TP0, [1, 2, 3])]
        assert batcher.buffered == 0

    def test_records_beyond_max_records_start_the_next_batch(self) -> None:
        batcher = MicroBatcher(max_records=3, max_wait_s=10.0)
        ready = batcher.add(TP0, cols(list(range(8))), now=0.0)
        assert offsets_of(ready) == [(TP0, [0, 1, 2]), (TP0, [3, 4, 5])]
        assert batcher.buffered == 2
        assert offsets_of(batcher.drain()) == [(TP0, [6, 7])]

    def test_adding_no_records_releases_nothing_and_buffers_nothing(self) -> None:
        batcher = MicroBatcher(max_records=3, max_wait_s=0.0)
        assert offsets_of(batcher.add(TP0, cols([]), now=0.0)) == []
        assert batcher.time_to_next_deadline(0.0) is None
        assert offsets_of(batcher.expired(100.0)) == []

    def test_partitions_are_batched_separately(self) -> None:
        batcher = MicroBatcher(max_records=2, max_wait_s=10.0)
        assert offsets_of(batcher.add(TP0, cols([10]), now=0.0)) == []
        assert offsets_of(batcher.add(TP1, cols([20]), now=0.0)) == []
        assert offsets_of(batcher.add(TP1, cols([21]), now=0.0)) == [(TP1, [20, 21])]
        assert batcher.buffered == 1
        assert offsets_of(batcher.drain()) == [(TP0, [10])]

    @pytest.mark.parametrize("max_records", [0, -1])
    def test_max_records_below_one_raises(self, max_records: int) -> None:
        with pytest.raises(ValueError, match=f"max_records must be >= 1, got {max_records}"):
            MicroBatcher(max_records=max_records, max_wait_s=1.0)


class TestAgeLimit:
    def test_a_partial_batch_is_released_when_it_is_max_wait_s_old(self) -> None:
        batcher = MicroBatcher(max_records=10, max_wait_s=0.5)
        batcher.add(TP0, cols([1, 2]), now=100.0)
        assert offsets_of(batcher.expired(100.49)) == []
        assert offsets_of(batcher.expired(100.5)) == [(TP0, [1, 2])]
        assert batcher.buffered == 0
        assert offsets_of(batcher.expired(200.0)) == []

    def test_the_age_of_a_batch_counts_from_its_first_record(self) -> None:
        batcher = MicroBatcher(max_records=10, max_wait_s=0.5)
        batcher.add(TP0, cols([1]), now=100.0)
        batcher.add(TP0, cols([2]), now=100.4)
        assert offsets_of(batcher.expired(100.5)) == [(TP0, [1, 2])]

    def test_the_rest_after_a_full_batch_ages_from_when_it_was_added(self) -> None:
        batcher = MicroBatcher(max_records=2, max_wait_s=0.5)
        batcher.add(TP0, cols([1]), now=100.0)
        assert offsets_of(batcher.add(TP0, cols([2, 3]), now=100.4)) == [(TP0, [1, 2])]
        assert offsets_of(batcher.expired(100.5)) == []
        assert offsets_of(batcher.expired(100.9)) == [(TP0, [3])]

    def test_only_old_enough_partitions_expire(self) -> None:
        batcher = MicroBatcher(max_records=10, max_wait_s=1.0)
        batcher.add(TP0, cols([1]), now=0.0)
        batcher.add(TP1, cols([2]), now=0.8)
        assert offsets_of(batcher.expired(1.0)) == [(TP0, [1])]
        assert offsets_of(batcher.expired(1.8)) == [(TP1, [2])]

    def test_time_to_next_deadline_follows_the_oldest_partial_batch(self) -> None:
        batcher = MicroBatcher(max_records=10, max_wait_s=1.0)
        assert batcher.time_to_next_deadline(0.0) is None
        batcher.add(TP1, cols([2]), now=5.5)
        batcher.add(TP0, cols([1]), now=5.25)
        assert batcher.time_to_next_deadline(5.5) == 0.75
        assert batcher.time_to_next_deadline(7.0) == 0.0
        batcher.expired(6.25)
        assert batcher.time_to_next_deadline(6.25) == 0.25


class TestColumns:
    def test_a_batch_keeps_each_record_s_key_value_and_timestamp_with_its_offset(self) -> None:
        batcher = MicroBatcher(max_records=4, max_wait_s=10.0)
        batcher.add(TP0, cols([5, 6, 7]), now=0.0)
        ((tp, batch),) = batcher.add(TP0, cols([8, 9]), now=0.0)
        assert tp == TP0
        assert batch == RecordColumns(
            [5, 6, 7, 8],
            [b"k5", b"k6", b"k7", b"k8"],
            [b"v5", b"v6", b"v7", b"v8"],
            [1_700_000_000_005, 1_700_000_000_006, 1_700_000_000_007, 1_700_000_000_008],
        )
        assert batcher.first_offset(TP0) == 9
        assert batcher.first_offset(TP1) is None

    def test_the_columns_of_records_are_read_from_their_attributes(self) -> None:
        @dataclass
        class Row:
            offset: int
            key: bytes | None
            value: bytes | None
            timestamp: int

        assert RecordColumns.of([Row(3, None, b"x", -1), Row(4, b"k", None, 7)]) == RecordColumns(
            [3, 4], [None, b"k"], [b"x", None], [-1, 7]
        )


class TestDrainAndDiscard:
    def test_drain_releases_every_buffered_record(self) -> None:
        batcher = MicroBatcher(max_records=10, max_wait_s=10.0)
        batcher.add(TP0, cols([1, 2]), now=0.0)
        batcher.add(TP1, cols([3]), now=0.0)
        assert sorted(offsets_of(batcher.drain())) == [(TP0, [1, 2]), (TP1, [3])]
        assert batcher.buffered == 0
        assert offsets_of(batcher.drain()) == []

    def test_discard_drops_revoked_partitions_and_counts_their_records(self) -> None:
        batcher = MicroBatcher(max_records=10, max_wait_s=10.0)
        batcher.add(TP0, cols([1, 2]), now=0.0)
        batcher.add(TP1, cols([3]), now=0.0)
        assert batcher.discard([TP0, ("events", 9)]) == 2
        assert batcher.buffered == 1
        assert offsets_of(batcher.drain()) == [(TP1, [3])]


# Times in sixteenths of a second are exact in binary, so deadlines compare exactly.
SIXTEENTHS = st.integers(0, 16).map(lambda n: n / 16)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, int, float]]:
    """(op, partition, count, time step) with op in add/expire."""
    steps = []
    for _ in range(draw(st.integers(0, 40))):
        op = draw(st.sampled_from(["add", "add", "add", "expire"]))
        steps.append((op, draw(st.integers(0, 3)), draw(st.integers(0, 25)), draw(SIXTEENTHS)))
    return steps


@PROPERTIES
@given(
    max_records=st.integers(1, 10),
    max_wait_s=SIXTEENTHS,
    steps=operations(),
)
def test_batches_keep_order_never_exceed_max_records_and_lose_no_record(
    max_records: int, max_wait_s: float, steps: list[tuple[str, int, int, float]]
) -> None:
    batcher = MicroBatcher(max_records=max_records, max_wait_s=max_wait_s)
    sent: dict[tuple[str, int], list[int]] = {}
    released: list[tuple[tuple[str, int], list[int]]] = []
    now = 0.0
    counter = 0
    for op, p, count, step in steps:
        now += step
        tp = ("t", p)
        if op == "add":
            records = list(range(counter, counter + count))
            counter += count
            sent.setdefault(tp, []).extend(records)
            full = offsets_of(batcher.add(tp, cols(records), now))
            assert all(len(batch) == max_records for _, batch in full)
            released.extend(full)
        else:
            expired = offsets_of(batcher.expired(now))
            assert batcher.time_to_next_deadline(now) is None or (
                batcher.time_to_next_deadline(now) > 0
            )
            released.extend(expired)
        assert batcher.buffered == sum(map(len, sent.values())) - sum(len(b) for _, b in released)
    released.extend(offsets_of(batcher.drain()))
    assert batcher.buffered == 0
    got: dict[tuple[str, int], list[int]] = {}
    for tp, batch in released:
        assert 1 <= len(batch) <= max_records
        assert all(r in sent[tp] for r in batch), "a batch mixes partitions"
        got.setdefault(tp, []).extend(batch)
    assert got == {tp: records for tp, records in sent.items() if records}


def sized(offsets: list[int], value_bytes: int) -> RecordColumns:
    """Records whose key is empty and whose value has ``value_bytes`` bytes."""
    return RecordColumns(
        list(offsets),
        [b""] * len(offsets),
        [b"v" * value_bytes] * len(offsets),
        [0] * len(offsets),
    )


class TestByteLimitAndBudget:
    def test_a_batch_is_cut_at_max_bytes_and_a_larger_record_leaves_alone(self) -> None:
        batcher = MicroBatcher(max_records=100, max_wait_s=1.0, max_bytes=250)
        ready = batcher.add(TP0, sized([0, 1, 2], 100), now=0.0)
        # 300 bytes are full: 0 and 1 fit in 250 bytes; 2 waits as a partial batch.
        assert [b.offsets for _, b in ready] == [[0, 1]]
        assert not batcher.holds_full_batches
        ready = batcher.add(TP0, sized([3], 1000), now=0.0)
        # 2 leaves alone, and so does the 1000-byte record, over the limit by itself.
        assert [b.offsets for _, b in ready] == [[2], [3]]
        assert batcher.buffered == 0

    def test_the_budget_holds_full_batches_back_until_it_is_renewed(self) -> None:
        batcher = MicroBatcher(max_records=2, max_wait_s=1.0, max_bytes=None)
        budget = Budget(batches=1, nbytes=10**9)
        ready = batcher.add(TP0, cols(list(range(6))), now=0.0, budget=budget)
        assert offsets_of(ready) == [(TP0, [0, 1])]
        assert batcher.holds_full_batches
        assert batcher.expired(now=5.0) == [], "a held full batch never leaves as a partial"
        assert offsets_of(batcher.release(1.0, Budget(batches=5, nbytes=10**9))) == [
            (TP0, [2, 3]),
            (TP0, [4, 5]),
        ]
        assert not batcher.holds_full_batches

    def test_a_byte_budget_lets_one_batch_overdraw_it(self) -> None:
        batcher = MicroBatcher(max_records=1, max_wait_s=1.0, max_bytes=10**6)
        budget = Budget(batches=10, nbytes=150)
        ready = batcher.add(TP0, sized([0, 1, 2], 100), now=0.0, budget=budget)
        assert [b.offsets for _, b in ready] == [[0], [1]]
        assert budget.nbytes == -50
        assert batcher.buffered == 1

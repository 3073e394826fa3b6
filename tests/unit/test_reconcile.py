"""Reconciliation by offset ranges gives the counts of the record-based one, in less memory."""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.clients.reading import WholeTopicRead
from streamer.core.reconcile import OffsetRanges, Pacer, Reconciler, runs
from streamer.core.records import RecordColumns
from streamer.devtools.verify import TopicDump, TopicFeeder, reconcile
from streamer.errors import BrokerError

# --- the oracle: the record-based reconciliation that streamer.devtools.verify had before


@dataclass
class OldReconciliation:
    inputs: int
    scored: int
    dead_lettered: int
    duplicates: int
    lost: list[tuple[int, int]]
    outputs_by_source: dict[tuple[int, int], list[dict[str, Any]]]


def old_reconcile(
    inputs: TopicDump, outputs: TopicDump, dead_letters: TopicDump
) -> OldReconciliation:
    """A copy of the record-based ``reconcile``, kept as the oracle."""
    by_source: dict[tuple[int, int], list[dict[str, Any]]] = {}
    duplicates = 0
    for _key, value, _headers in outputs.records.values():
        doc = orjson.loads(value or b"null")
        source = (doc["partition"], doc["offset"])
        if source in by_source:
            duplicates += 1
        by_source.setdefault(source, []).append(doc)
    dead: set[tuple[int, int]] = set()
    for _key, _value, headers in dead_letters.records.values():
        h = dict(headers)
        source = (int(h["streamer.source.partition"]), int(h["streamer.source.offset"]))
        if source in dead or source in by_source:
            duplicates += 1
        dead.add(source)
    covered = set(by_source) | dead
    lost = sorted(set(inputs.records) - covered)
    return OldReconciliation(
        inputs=len(inputs),
        scored=len(by_source),
        dead_lettered=len(dead),
        duplicates=duplicates,
        lost=lost,
        outputs_by_source=by_source,
    )


# --- generated topics --------------------------------------------------------------


@dataclass
class Topics:
    inputs: TopicDump
    outputs: TopicDump
    dead_letters: TopicDump


def _output(partition: int, offset: int) -> bytes:
    return orjson.dumps(
        {"key": "k", "topic": "in", "partition": partition, "offset": offset, "score": 0.5}
    )


def _dead_letter_headers(partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        ("streamer.reason", b"invalid_json"),
        ("streamer.source.partition", str(partition).encode()),
        ("streamer.source.offset", str(offset).encode()),
    ]


@st.composite
def topics(draw: st.DrawFn) -> Topics:
    """Inputs with gaps in their offsets; outputs and dead letters that answer some of them,
    some twice or both ways, and a few that name offsets no input has."""
    partitions = draw(st.integers(1, 3))
    inputs = TopicDump()
    for partition in range(partitions):
        offsets = draw(st.sets(st.integers(0, 80), max_size=60))
        for offset in offsets:
            inputs.records[(partition, offset)] = (b"k", b"{}", [])
    candidates = [*inputs.records, (0, 500), (partitions, 3)]
    sources = st.sampled_from(candidates)
    answers = draw(st.lists(st.tuples(sources, st.booleans()), max_size=150))
    outputs, dead_letters = TopicDump(), TopicDump()
    rng = random.Random(draw(st.integers(0, 2**32)))
    out_next = [0, 0, 0]
    dead_next = 0
    for (partition, offset), is_dead in answers:
        if is_dead:
            dead_letters.records[(0, dead_next)] = (
                b"k",
                b"bad",
                _dead_letter_headers(partition, offset),
            )
            dead_next += 1
        else:
            out_partition = rng.randrange(3)
            outputs.records[(out_partition, out_next[out_partition])] = (
                b"k",
                _output(partition, offset),
                [],
            )
            out_next[out_partition] += 1
    return Topics(inputs, outputs, dead_letters)


def _expanded(lost_ranges: tuple[tuple[int, int, int], ...]) -> list[tuple[int, int]]:
    return [(p, o) for p, start, end in lost_ranges for o in range(start, end)]


def _assert_same_counts(new: Any, old: OldReconciliation) -> None:
    assert (new.inputs, new.scored, new.dead_lettered, new.duplicates) == (
        old.inputs,
        old.scored,
        old.dead_lettered,
        old.duplicates,
    )
    assert new.lost == len(old.lost)
    assert _expanded(new.lost_ranges) == old.lost


class TestTheRangeReconcilerAgreesWithTheRecordBasedOne:
    @given(topics())
    @settings(max_examples=300, deadline=None)
    def test_on_topic_dumps(self, generated: Topics) -> None:
        old = old_reconcile(generated.inputs, generated.outputs, generated.dead_letters)
        new = reconcile(generated.inputs, generated.outputs, generated.dead_letters)
        _assert_same_counts(new, old)

    @given(topics(), st.randoms(use_true_random=False), st.integers(1, 20))
    @settings(max_examples=300, deadline=None)
    def test_when_streamed_in_batches_in_any_order_of_the_partitions(
        self, generated: Topics, rng: random.Random, batch: int
    ) -> None:
        """The way the readers feed it: each partition in offset order, in batches,
        the partitions and topics interleaved in any order."""
        old = old_reconcile(generated.inputs, generated.outputs, generated.dead_letters)
        reconciler = Reconciler()
        feeder = TopicFeeder(reconciler, "in", "out", "in.dlq")
        queues = []
        for topic, dump in (
            ("in", generated.inputs),
            ("out", generated.outputs),
            ("in.dlq", generated.dead_letters),
        ):
            for partition in sorted({p for p, _o in dump.records}):
                rows = sorted((o, r) for (p, o), r in dump.records.items() if p == partition)
                chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
                queues.append(((topic, partition), chunks))
        while queues:
            index = rng.randrange(len(queues))
            tp, chunks = queues[index]
            chunk = chunks.pop(0)
            if not chunks:
                queues.pop(index)
            columns = RecordColumns(
                [o for o, _r in chunk],
                [r[0] for _o, r in chunk],
                [r[1] for _o, r in chunk],
                [-1] * len(chunk),
            )
            feeder(tp, columns, [r[2] for _o, r in chunk])
        _assert_same_counts(reconciler.result(), old)


def test_a_long_clean_run_is_one_range_per_partition() -> None:
    reconciler = Reconciler()
    for start in range(0, 1_000_000, 5000):
        for partition in range(4):
            batch = range(start, start + 5000)
            reconciler.add_inputs(partition, batch)
            reconciler.add_scored(partition, batch)
    result = reconciler.result()
    assert (result.inputs, result.scored, result.duplicates, result.lost) == (
        4_000_000,
        4_000_000,
        0,
        0,
    )
    assert reconciler.ranges_held() == 4 * 3  # inputs, scored, answered; no dead letters


def test_only_inputs_below_the_committed_offsets_must_be_answered() -> None:
    reconciler = Reconciler()
    reconciler.add_inputs(0, range(100))
    reconciler.add_inputs(1, range(100))
    reconciler.add_scored(0, range(60))
    reconciler.add_dead_lettered(1, [0, 1])
    assert reconciler.result({0: 60, 1: 2}).lost == 0
    assert reconciler.result({0: 61, 1: 100}).lost_ranges == ((0, 60, 61), (1, 2, 100))
    assert reconciler.result({0: 61}).lost_ranges == ((0, 60, 61),)  # 1 committed nothing
    assert reconciler.result().lost == 40 + 98


def test_a_dead_letter_for_a_scored_input_is_a_duplicate_and_counts_as_both() -> None:
    reconciler = Reconciler()
    reconciler.add_inputs(0, [0, 1])
    reconciler.add_scored(0, [0, 0])
    reconciler.add_dead_lettered(0, [0, 1, 1])
    result = reconciler.result()
    assert (result.scored, result.dead_lettered, result.duplicates, result.lost) == (1, 2, 3, 0)


# --- OffsetRanges ------------------------------------------------------------------


class TestOffsetRanges:
    @given(st.lists(st.lists(st.integers(0, 200), max_size=30), max_size=20))
    def test_holds_exactly_the_offsets_added_in_disjoint_non_touching_ranges(
        self, batches: list[list[int]]
    ) -> None:
        ranges, seen = OffsetRanges(), set()
        for batch in batches:
            new = len(set(batch) - seen)
            assert ranges.add(batch) == new
            seen.update(batch)
        assert len(ranges) == len(seen)
        assert [o for s, e in ranges.ranges() for o in range(s, e)] == sorted(seen)
        pairs = ranges.ranges()
        assert all(end < next_start for (_s, end), (next_start, _e) in pairwise(pairs))
        assert all(o in ranges for o in seen)
        assert not any(o in ranges for o in set(range(-1, 202)) - seen)

    @given(st.sets(st.integers(0, 100)), st.sets(st.integers(0, 100)))
    def test_without_is_the_set_difference(self, mine: set[int], theirs: set[int]) -> None:
        a, b = OffsetRanges(), OffsetRanges()
        a.add(mine)
        b.add(theirs)
        assert [o for s, e in a.without(b) for o in range(s, e)] == sorted(mine - theirs)

    @given(st.sets(st.integers(0, 100)), st.integers(-1, 102))
    def test_below_keeps_the_offsets_under_the_limit(self, offsets: set[int], limit: int) -> None:
        ranges = OffsetRanges()
        ranges.add(offsets)
        kept = ranges.below(limit)
        assert [o for s, e in kept.ranges() for o in range(s, e)] == sorted(
            o for o in offsets if o < limit
        )

    def test_runs_merge_consecutive_offsets_and_drop_repeats(self) -> None:
        assert runs([5, 3, 4, 4, 9, 10, 1]) == [(1, 2), (3, 6), (9, 11)]
        assert runs([]) == []
        assert runs(range(10)) == [(0, 10)]


# --- pacing ------------------------------------------------------------------------


class TestPacer:
    def test_pauses_a_partition_that_runs_ahead_of_the_oldest_of_its_topic(self) -> None:
        pacer = Pacer([("out", 0), ("out", 1), ("in", 0)], slack_ms=100)
        pacer.read(("out", 0), 1_000)
        pacer.read(("out", 1), 1_050)
        pacer.read(("in", 0), 9_000)  # another topic: not compared with 'out'
        assert pacer.ahead() == set()
        pacer.read(("out", 1), 1_200)
        assert pacer.ahead() == {("out", 1)}
        pacer.read(("out", 0), 1_150)
        assert pacer.ahead() == set()

    def test_a_partition_that_delivered_nothing_yet_holds_the_others_back(self) -> None:
        pacer = Pacer([("out", 0), ("out", 1)], slack_ms=100)
        pacer.read(("out", 0), 1_000)
        assert pacer.ahead() == {("out", 0)}
        pacer.finished(("out", 1))  # it was empty
        assert pacer.ahead() == set()

    def test_the_oldest_partition_is_never_paused(self) -> None:
        rng = random.Random(3)
        tps = [("out", p) for p in range(4)]
        pacer = Pacer(tps, slack_ms=10)
        for _ in range(500):
            pacer.read(rng.choice(tps), rng.randrange(10_000))
            assert len(pacer.ahead()) < len(tps)

    def test_the_slack_grows_to_twice_the_span_of_a_partitions_last_batch(self) -> None:
        """A fetch of a slow stream spans seconds: pausing after every one would stall it."""
        pacer = Pacer([("out", 0), ("out", 1)], slack_ms=100)
        pacer.read(("out", 0), 10_000, 7_000)
        pacer.read(("out", 1), 15_000, 12_000)  # 5 s ahead, batches of 3 s: within 6 s
        assert pacer.ahead() == set()
        pacer.read(("out", 1), 16_500, 16_000)  # a short batch: 6.5 s ahead > 2 x 0.5 s
        assert pacer.ahead() == {("out", 1)}

    def test_records_without_a_timestamp_are_not_paced(self) -> None:
        pacer = Pacer([("out", 0), ("out", 1)], slack_ms=100)
        pacer.read(("out", 0), -1)
        pacer.read(("out", 1), 5_000)
        assert pacer.ahead() == set()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestTheReadDeadlineFollowsProgress:
    def test_it_gives_up_only_after_the_idle_time_without_progress(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        clock = _Clock()
        monkeypatch.setattr("streamer.clients.reading.time.monotonic", clock)
        reports: list[tuple[int, int]] = []
        read = WholeTopicRead(
            ["in"],
            [("in", 0), ("in", 1)],
            idle_timeout_s=30.0,
            on_progress=lambda done, total: reports.append((done, total)),
        )
        for _ in range(100):  # 250 s in all, never 30 s without a record
            clock.now += 2.5
            read.delivered(("in", 0), [1] * 1000)
            read.step(lambda: 200_000, str)
        clock.now += 29.0
        read.step(lambda: 200_000, str)
        read.finished(("in", 0), 100_000)
        clock.now += 29.0
        read.step(lambda: 200_000, str)
        clock.now += 31.0
        with pytest.raises(BrokerError, match=r"no progress for 30s after 100000 records"):
            read.step(lambda: 200_000, lambda: "in/1 at 0 of 100000")
        assert reports[0] == (1000, 200_000)
        assert reports[-1][0] == 100_000

    def test_progress_is_reported_about_once_an_interval(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        clock = _Clock()
        monkeypatch.setattr("streamer.clients.reading.time.monotonic", clock)
        reports: list[tuple[int, int]] = []
        read = WholeTopicRead(
            ["in"],
            [("in", 0)],
            idle_timeout_s=30.0,
            on_progress=lambda done, total: reports.append((done, total)),
        )
        for _ in range(40):
            clock.now += 0.25
            read.delivered(("in", 0), [1] * 10)
            read.step(lambda: 400, str)
        read.done(lambda: 400)
        assert len(reports) == 11  # 10 s at one a second, and the last
        assert reports[-1] == (400, 400)

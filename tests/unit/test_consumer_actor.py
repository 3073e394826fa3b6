"""ConsumerActor with a scripted fake consumer and a recording preprocessor."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
from prometheus_client import CollectorRegistry

from streamer.actors import consumer as consumer_module
from streamer.actors.consumer import ConsumerActor
from streamer.actors.metrics import MetricsActor
from streamer.core.records import TP, RecordColumns
from streamer.errors import DeliveryError
from streamer.messages import (
    Attach,
    BatchAcked,
    BatchPartlyDelivered,
    CommitNow,
    ConsumerProgress,
    ConsumerStatus,
    GetStatus,
    Rewind,
    ScoreBatch,
    StopFetching,
)
from streamer.settings import BatchSettings, KafkaSettings, MetricsSettings
from tests.unit.fakes import (
    WAIT_S,
    FakeConsumer,
    FakeRecord,
    Mailbox,
    make_records,
    start_recorder,
    sync,
    wait_until,
)

ASK_S = 5.0
TP0 = ("events", 0)
TP1 = ("events", 1)
TP2 = ("events", 2)
# No commit on the interval unless a test asks for one; the early commits (kafka.commit_early)
# stay on, as by default.
KAFKA = KafkaSettings(input_topic="events", output_topic="scores", commit_interval_s=3600.0)


def values(n: int) -> list[bytes | None]:
    return [b'{"i": %d}' % i for i in range(n)]


class Harness:
    """A consumer actor over a FakeConsumer, feeding one recording preprocessor."""

    def __init__(
        self,
        records: dict[tuple[str, int], list[FakeRecord]],
        *,
        batch: BatchSettings,
        kafka: KafkaSettings = KAFKA,
        metrics: pykka.ActorRef | None = None,
        fake: FakeConsumer | None = None,
    ) -> None:
        self.fake = FakeConsumer(records) if fake is None else fake
        self.failures = Mailbox()
        self.preprocessor, self.batches = start_recorder()
        self.ref = ConsumerActor.start(
            kafka,
            batch,
            metrics=metrics,
            on_failure=lambda kind, error: self.failures.put((kind, error)),
            client_factory=lambda _settings, _max: self.fake,
        )
        self.ref.tell(Attach([self.preprocessor]))

    def status(self) -> ConsumerStatus:
        return self.ref.ask(GetStatus(), timeout=ASK_S)

    def wait_for_batches(self, count: int) -> list[Any]:
        messages = self.batches.wait_for(count)
        assert all(isinstance(m, ScoreBatch) for m in messages)
        return [m.source for m in messages]

    def ack(self, source: Any, error: str | None = None) -> None:
        self.ref.tell(BatchAcked(source.batch_id, source.topic, source.partition, error))

    def commit_now(self) -> dict[tuple[str, int], int]:
        return self.ref.ask(CommitNow(), timeout=ASK_S)


class GatedPolls(FakeConsumer):
    """A FakeConsumer whose polls, once ``gated``, wait at the gate until let through.

    As kafka-python's poll, which costs round trips to its I/O thread even with a
    timeout of 0: the actor is inside the client call for a while.
    """

    def __init__(self, records: dict[tuple[str, int], list[FakeRecord]]) -> None:
        super().__init__(records)
        self.gated = False
        self.waiting = 0  # polls at the gate now
        self._passes = threading.Semaphore(0)
        self._lock = threading.Lock()

    def let_one_through(self) -> None:
        self._passes.release()

    def open_gate(self) -> None:
        self.gated = False
        self._passes.release()  # the actor polls on its one thread: one poll at most waits

    def poll(self, timeout_s: float, max_records: int) -> dict[TP, RecordColumns]:
        if self.gated:
            with self._lock:
                self.waiting += 1
            self._passes.acquire(timeout=WAIT_S)
            with self._lock:
                self.waiting -= 1
        return super().poll(timeout_s, max_records)


class TestDispatch:
    def test_records_are_dispatched_in_per_partition_batches_of_at_most_max_records(self) -> None:
        records = {
            TP0: make_records(values(25)),
            TP1: make_records(values(25)),
            TP2: make_records(values(7), offsets=[0, 1, 2, 10, 11, 30, 31]),  # compacted
        }
        h = Harness(records, batch=BatchSettings(max_records=10, max_wait_s=0.05))
        sources = h.wait_for_batches(7)
        by_tp: dict[tuple[str, int], list[Any]] = {}
        for s in sources:
            assert 1 <= len(s) <= 10
            by_tp.setdefault((s.topic, s.partition), []).append(s)
        assert [len(s) for s in by_tp[TP0]] == [10, 10, 5]
        assert [len(s) for s in by_tp[TP1]] == [10, 10, 5]
        assert [len(s) for s in by_tp[TP2]] == [7]
        for tp, batches in by_tp.items():
            assert [s.seq for s in batches] == list(range(len(batches)))
            assert [o for s in batches for o in s.offsets] == [r.offset for r in records[tp]]
            assert [v for s in batches for v in s.values] == [r.value for r in records[tp]]
            assert [k for s in batches for k in s.keys] == [r.key for r in records[tp]]
            assert [t for s in batches for t in s.timestamps_ms] == [
                r.timestamp for r in records[tp]
            ]
        assert len({s.batch_id for s in sources}) == 7
        status = h.status()
        assert status.batches_in_flight == 7
        assert status.records_in_flight == 57
        assert status.records_dispatched == 57
        assert status.assigned == [TP0, TP1, TP2]
        for s in sources:
            h.ack(s)
        assert h.commit_now() == {TP0: 25, TP1: 25, TP2: 32}

    def test_a_partial_batch_leaves_at_once_while_nothing_is_in_flight(self) -> None:
        # max_wait_s is 30 s: only eager_when_idle can send these 3 records within the test.
        h = Harness(
            {TP0: make_records(values(3))},
            batch=BatchSettings(max_records=10, max_wait_s=30.0, max_in_flight=16),
        )
        [source] = h.wait_for_batches(1)
        assert source.offsets == [0, 1, 2]
        assert h.status().batches_in_flight == 1

    def test_a_partial_batch_waits_while_the_pipeline_is_busy_then_leaves(self) -> None:
        # max_in_flight 4: partial batches leave early only while fewer than 1 is in flight.
        h = Harness(
            {TP0: make_records(values(13))},
            batch=BatchSettings(max_records=10, max_wait_s=30.0, max_in_flight=4),
        )
        [full] = h.wait_for_batches(1)
        assert full.offsets == list(range(10))
        h.fake.wait_for_polls(h.fake.polls + 2)
        assert len(h.batches.items()) == 1  # offsets 10..12 wait: one batch is in flight
        assert h.status().records_buffered == 3
        h.ack(full)
        partial = h.wait_for_batches(2)[1]
        assert partial.offsets == [10, 11, 12]

    def test_a_batch_freed_by_news_leaves_before_the_next_poll_not_after_it(self) -> None:
        # The ack of the full batch frees the partial one (the eager rule). It must leave
        # before the client's next poll: on kafka-python that poll takes 1-4 ms even when
        # it may not wait (docs/performance.md); here it waits at the gate until the end.
        fake = GatedPolls({TP0: make_records(values(13))})
        h = Harness(
            {}, batch=BatchSettings(max_records=10, max_wait_s=30.0, max_in_flight=4), fake=fake
        )
        [full] = h.wait_for_batches(1)
        fake.wait_for_polls(fake.polls + 2)
        assert h.status().records_buffered == 3  # held: one batch is in flight
        fake.gated = True
        wait_until(lambda: fake.waiting == 1)
        h.ack(full)  # read once this poll returns
        fake.let_one_through()
        try:
            partial = h.wait_for_batches(2)[1]
            assert partial.offsets == [10, 11, 12]
            wait_until(lambda: fake.waiting == 1)  # the next poll, still at the gate
        finally:
            fake.open_gate()
        assert h.status().records_buffered == 0

    def test_batches_go_to_the_preprocessors_in_turn(self) -> None:
        fake = FakeConsumer({TP0: make_records(values(40))})
        first_ref, first = start_recorder()
        second_ref, second = start_recorder()
        ref = ConsumerActor.start(
            KAFKA, BatchSettings(max_records=10), client_factory=lambda _s, _m: fake
        )
        ref.tell(Attach([first_ref, second_ref]))
        assert [m.source.first_offset for m in first.wait_for(2)] == [0, 20]
        assert [m.source.first_offset for m in second.wait_for(2)] == [10, 30]

    def test_nothing_is_fetched_before_attach(self) -> None:
        fake = FakeConsumer({TP0: make_records(values(5))})
        ref = ConsumerActor.start(KAFKA, BatchSettings(), client_factory=lambda _s, _m: fake)
        fake.wait_for_polls(2)  # the ticker keeps the group membership alive
        status = ref.ask(GetStatus(), timeout=ASK_S)
        assert status.records_dispatched == 0
        assert status.fetching is False
        assert fake.positions[TP0] == 0


class TestLagWhilePaused:
    def test_the_lag_follows_the_brokers_end_offsets_while_the_partitions_are_paused(
        self, monkeypatch: Any
    ) -> None:
        monkeypatch.setattr(consumer_module, "END_OFFSETS_EVERY_S", 0.05)
        metrics, reports = start_recorder()
        h = Harness(
            {TP0: make_records(values(30))},
            batch=BatchSettings(max_records=10, max_in_flight=1, max_wait_s=0.05),
            metrics=metrics,
        )
        # A paused partition is not fetched: the client knows only what it asks for.
        h.fake.stale_highwater = True
        wait_until(lambda: h.status().paused)
        h.fake.append(TP0, make_records(values(20), offsets=range(30, 50)))

        def last_lag() -> int | None:
            progress = [m for m in reports.items() if isinstance(m, ConsumerProgress)]
            return progress[-1].lag.get(TP0) if progress else None

        # 50 records in the partition; the first batch (offsets 0..9) is in flight.
        wait_until(lambda: last_lag() == 40)
        assert h.fake.end_offset_refreshes >= 1
        assert h.status().records_dispatched == 10


class TestBackpressure:
    def test_it_pauses_at_max_in_flight_and_resumes_after_an_ack(self) -> None:
        h = Harness(
            {TP0: make_records(values(100))},
            batch=BatchSettings(max_records=10, max_in_flight=2, max_wait_s=0.05),
        )
        first, second = h.wait_for_batches(2)
        wait_until(lambda: h.status().paused)
        assert h.fake.paused == {TP0}
        polls = h.fake.polls
        h.fake.wait_for_polls(polls + 3)  # paused polls keep the membership, fetch nothing
        sync(h.preprocessor)
        assert len(h.batches.items()) == 2
        assert h.status().batches_in_flight == 2
        resumes = len(h.fake.resume_calls)

        h.ack(first)
        third = h.wait_for_batches(3)[2]
        assert third.offsets == list(range(20, 30))
        assert h.fake.resume_calls[resumes:][0] == [TP0]
        wait_until(lambda: h.status().paused)
        assert h.status().batches_in_flight == 2
        assert max(h.fake.max_records_seen) == 20

        h.ack(second)
        h.ack(third)
        assert [s.first_offset for s in h.wait_for_batches(5)[3:]] == [30, 40]
        assert h.commit_now() == {TP0: 30}

    def test_partial_batches_exceed_the_cap_by_at_most_one_per_partition_then_it_pauses(
        self,
    ) -> None:
        # One poll can end in a partial batch on every partition; released by age, they
        # may exceed max_in_flight (documented), but no new records are taken until
        # acknowledgements bring the count back under the cap.
        records = {("events", p): make_records(values(5)) for p in range(4)}
        h = Harness(records, batch=BatchSettings(max_records=10, max_in_flight=2, max_wait_s=0.05))
        sources = h.wait_for_batches(4)
        assert sorted(s.partition for s in sources) == [0, 1, 2, 3]
        wait_until(lambda: h.status().paused)
        assert h.status().batches_in_flight == 4
        for p in range(4):
            h.fake.append(("events", p), make_records(values(5), offsets=range(5, 10)))
        polls = h.fake.polls
        h.fake.wait_for_polls(polls + 3)
        sync(h.preprocessor)
        assert len(h.batches.items()) == 4
        for source in sources[:3]:
            h.ack(source)
        more = h.wait_for_batches(5)[4:]
        assert all(s.first_offset == 5 for s in more)
        assert h.status().batches_in_flight <= 2 + 4

    def test_it_pauses_at_max_in_flight_bytes_and_cuts_batches_by_bytes(self) -> None:
        # Records of exactly 1000 bytes (a 3-byte key "k10".. and 997 bytes of value).
        h = Harness(
            {TP0: make_records([b"x" * 997] * 20, offsets=range(10, 30))},
            batch=BatchSettings(
                max_records=10, max_in_flight=8, max_in_flight_bytes=4000, max_wait_s=0.05
            ),
        )
        # 4000 / 8 = 500 bytes per batch: one record each; the bytes pause it at 4 batches.
        sources = h.wait_for_batches(4)
        assert [s.offsets for s in sources] == [[10], [11], [12], [13]]
        wait_until(lambda: h.status().paused)
        polls = h.fake.polls
        h.fake.wait_for_polls(polls + 3)
        sync(h.preprocessor)
        assert len(h.batches.items()) == 4
        assert (h.status().batches_in_flight, h.status().bytes_in_flight) == (4, 4000)
        h.ack(sources[0])
        assert h.wait_for_batches(5)[4].offsets == [14]
        wait_until(lambda: h.status().paused)
        assert h.status().bytes_in_flight == 4000

    def test_a_record_larger_than_the_byte_cap_still_passes_alone(self) -> None:
        h = Harness(
            {TP0: make_records([b"y" * 5000, b"{}", b"{}"])},
            batch=BatchSettings(
                max_records=10, max_in_flight=2, max_in_flight_bytes=1000, max_wait_s=0.05
            ),
        )
        (huge,) = h.wait_for_batches(1)
        assert huge.offsets == [0]
        wait_until(lambda: h.status().paused)
        sync(h.preprocessor)
        assert len(h.batches.items()) == 1, "nothing else may join a batch over the cap"
        h.ack(huge)
        assert h.wait_for_batches(2)[1].offsets == [1, 2]
        assert h.commit_now() == {TP0: 1}


class TestRewind:
    def test_a_rewind_resends_only_the_unanswered_tail_of_a_partly_delivered_batch(
        self,
    ) -> None:
        h = Harness(
            {TP0: make_records(values(20))},
            batch=BatchSettings(max_records=10, max_in_flight=4, max_wait_s=0.05),
        )
        first, second = h.wait_for_batches(2)
        h.ref.tell(BatchPartlyDelivered(first.batch_id, "events", 0, answered_below=7))

        assert h.ref.ask(Rewind(epoch=1), timeout=ASK_S).batches_resent == 2
        again = h.wait_for_batches(4)[2:]
        assert [s.offsets for s in again] == [list(range(7, 10)), list(range(10, 20))]
        assert [(s.batch_id, s.epoch, s.seq) for s in again] == [
            (first.batch_id, 1, 0),
            (second.batch_id, 1, 1),
        ]
        assert again[0].keys == [f"k{o}".encode() for o in range(7, 10)]
        h.ack(again[0])
        h.ack(again[1])
        assert h.commit_now() == {TP0: 20}


class TestCommits:
    def test_commit_now_returns_exactly_the_contiguous_acknowledged_watermark(self) -> None:
        h = Harness(
            {TP0: make_records(values(30))},
            batch=BatchSettings(max_records=10, max_in_flight=10),
        )
        b0, b1, b2 = h.wait_for_batches(3)
        assert h.commit_now() == {}
        assert h.fake.commits == []
        h.ack(b0)
        h.ack(b2)
        assert h.commit_now() == {TP0: 10}
        assert h.fake.last_commit() == {TP0: 10}
        h.ack(b1)
        assert h.commit_now() == {TP0: 30}
        assert h.fake.commits == [{TP0: 10}, {TP0: 30}]
        status = h.status()
        assert status.committed == {TP0: 30}
        assert status.batches_in_flight == 0

    def test_periodic_commits_never_pass_an_unacknowledged_offset(self) -> None:
        kafka = KafkaSettings(input_topic="events", output_topic="scores", commit_interval_s=0.05)
        h = Harness(
            {TP0: make_records(values(30))},
            kafka=kafka,
            batch=BatchSettings(max_records=10, max_in_flight=10),
        )
        b0, b1, b2 = h.wait_for_batches(3)
        h.ack(b2)
        h.ack(b0)
        wait_until(lambda: {TP0: 10} in h.fake.async_commits)
        polls = h.fake.polls
        h.fake.wait_for_polls(polls + 3)
        assert {c[TP0] for c in h.fake.async_commits} == {10}
        wait_until(lambda: h.status().committed == {TP0: 10})
        h.ack(b1)
        wait_until(lambda: {TP0: 30} in h.fake.async_commits)
        assert [c[TP0] for c in h.fake.async_commits] == [10, 30]
        wait_until(lambda: h.status().committed == {TP0: 30})
        assert h.fake.commits == []

    def test_a_quiet_pipeline_commits_at_once_and_once_within_the_interval(self) -> None:
        # Within the hour-long interval nothing is committed while a batch is in flight; the
        # acknowledgement that leaves none commits the watermark at once, and only once.
        h = Harness({TP0: make_records(values(20))}, batch=BatchSettings(max_records=10))
        b0, b1 = h.wait_for_batches(2)
        h.ack(b0)
        h.fake.wait_for_polls(h.fake.polls + 3)
        assert h.fake.async_commits == []
        h.ack(b1)
        wait_until(lambda: {TP0: 20} in h.fake.async_commits)
        h.fake.wait_for_polls(h.fake.polls + 3)
        assert h.fake.async_commits == [{TP0: 20}]
        wait_until(lambda: h.status().committed == {TP0: 20})
        assert h.fake.commits == []

    def test_max_in_flight_acknowledgements_make_a_commit_due_within_the_interval(self) -> None:
        # max_in_flight 2: the second acknowledgement since the last commit commits the
        # watermark while a batch is still in flight, an hour before the interval is over.
        h = Harness(
            {TP0: make_records(values(30))}, batch=BatchSettings(max_records=10, max_in_flight=2)
        )
        b0, b1 = h.wait_for_batches(2)
        h.ack(b0)
        [b2] = h.wait_for_batches(3)[2:]
        h.fake.wait_for_polls(h.fake.polls + 3)
        assert h.fake.async_commits == []
        h.ack(b1)
        wait_until(lambda: {TP0: 20} in h.fake.async_commits)
        assert h.status().batches_in_flight == 1
        h.ack(b2)
        wait_until(lambda: {TP0: 30} in h.fake.async_commits)
        assert h.fake.async_commits == [{TP0: 20}, {TP0: 30}]

    def test_a_full_window_of_records_not_of_small_batches_makes_a_commit_due(self) -> None:
        # max_in_flight 4 x max_records 10: the window holds 40 records. With the first batch
        # held in flight, seven acknowledged batches of 5 records (35) commit nothing; the
        # eighth (40) commits the partitions acknowledged.
        tps = [("events", p) for p in range(9)]
        h = Harness(
            {tp: make_records(values(5)) for tp in tps},
            batch=BatchSettings(max_records=10, max_in_flight=4, max_wait_s=0.01),
        )

        def ack_the(count: int) -> None:  # the count-th batch dispatched
            batch = h.wait_for_batches(count)[count - 1]
            h.ack(batch)
            acked.append((batch.topic, batch.partition))

        acked: list[tuple[str, int]] = []
        for count in range(2, 9):
            ack_the(count)
        h.wait_for_batches(9)
        h.fake.wait_for_polls(h.fake.polls + 5)
        assert h.fake.async_commits == []
        ack_the(9)
        wait_until(lambda: h.fake.async_commits != [])
        assert h.fake.async_commits == [dict.fromkeys(acked, 5)]
        assert h.status().batches_in_flight == 1

    def test_a_pipeline_is_quiet_only_once_no_record_came_for_max_wait_s(self) -> None:
        # Nothing in flight nor buffered, but the last records came less than max_wait_s
        # (an hour) ago: the stream may be flowing between two fetches, no commit yet.
        h = Harness(
            {TP0: make_records(values(20))},
            batch=BatchSettings(max_records=10, max_wait_s=3600.0),
        )
        b0, b1 = h.wait_for_batches(2)
        h.ack(b0)
        h.ack(b1)
        wait_until(lambda: h.status().batches_in_flight == 0)
        h.fake.wait_for_polls(h.fake.polls + 5)
        assert h.fake.async_commits == []
        assert h.commit_now() == {TP0: 20}

    def test_by_default_records_flowing_are_committed_a_second_after_the_start_not_per_poll(
        self,
    ) -> None:
        # The defaults: an acknowledged batch with two still in flight (fewer than
        # max_in_flight acknowledged, not quiet) waits for the 1 s interval.
        started = time.monotonic()
        h = Harness(
            {TP0: make_records(values(30))},
            kafka=KafkaSettings(input_topic="events", output_topic="scores"),
            batch=BatchSettings(max_records=10, max_in_flight=10),
        )
        b0, _b1, _b2 = h.wait_for_batches(3)
        h.ack(b0)
        wait_until(lambda: {TP0: 10} in h.fake.async_commits)
        assert time.monotonic() - started >= 1.0
        assert h.fake.async_commits == [{TP0: 10}]
        assert h.status().batches_in_flight == 2

    def test_with_commit_early_off_a_quiet_pipeline_waits_for_the_interval(self) -> None:
        started = time.monotonic()
        kafka = KafkaSettings(
            input_topic="events", output_topic="scores", commit_interval_s=0.5, commit_early=False
        )
        h = Harness(
            {TP0: make_records(values(20))}, kafka=kafka, batch=BatchSettings(max_records=10)
        )
        b0, b1 = h.wait_for_batches(2)
        h.ack(b0)
        h.ack(b1)
        wait_until(lambda: {TP0: 20} in h.fake.async_commits)
        assert time.monotonic() - started >= 0.5
        assert h.fake.async_commits == [{TP0: 20}]

    def test_with_commit_early_off_nothing_is_committed_within_the_interval(self) -> None:
        # max_in_flight 2: two acknowledgements, then a quiet pipeline; with commit_early off
        # neither commits within the hour-long interval. CommitNow still does.
        kafka = KafkaSettings(
            input_topic="events",
            output_topic="scores",
            commit_interval_s=3600.0,
            commit_early=False,
        )
        h = Harness(
            {TP0: make_records(values(30))},
            kafka=kafka,
            batch=BatchSettings(max_records=10, max_in_flight=2),
        )
        b0, b1 = h.wait_for_batches(2)
        h.ack(b0)
        h.ack(b1)
        [b2] = h.wait_for_batches(3)[2:]
        h.ack(b2)
        wait_until(lambda: h.status().batches_in_flight == 0)
        h.fake.wait_for_polls(h.fake.polls + 5)
        assert h.fake.async_commits == []
        assert h.commit_now() == {TP0: 30}
        assert h.fake.commits == [{TP0: 30}]

    def test_a_revoked_partition_is_forgotten_and_its_late_acks_ignored(self) -> None:
        h = Harness(
            {TP0: make_records(values(20)), TP1: make_records(values(20))},
            batch=BatchSettings(max_records=10, max_in_flight=10),
        )
        sources = h.wait_for_batches(4)
        p0 = [s for s in sources if s.partition == 0]
        p1 = [s for s in sources if s.partition == 1]
        h.ack(p0[0])
        h.status()
        h.fake.revoke_on_next_poll([TP0])
        wait_until(lambda: h.status().assigned == [TP1])
        # The acknowledged work of the revoked partition is committed on the way out.
        assert h.fake.async_commits == [{TP0: 10}]
        status = h.status()
        assert status.batches_in_flight == 2
        assert status.records_in_flight == 20
        assert TP0 not in status.watermarks
        h.ack(p0[1])  # late: the partition belongs to another member now
        h.ack(p1[0])
        assert h.commit_now() == {TP1: 10}
        assert TP0 not in h.status().watermarks

    def test_a_partition_given_back_in_one_rebalance_resumes_at_its_first_undelivered_offset(
        self,
    ) -> None:
        # kafka-python keeps the fetch position of a partition that comes back in
        # the same rebalance: without a seek, abandoned records would be skipped.
        h = Harness(
            {TP0: make_records(values(25))},
            batch=BatchSettings(
                max_records=10, max_wait_s=30.0, max_in_flight=10, eager_when_idle=False
            ),
        )
        b0, b1 = h.wait_for_batches(2)
        wait_until(lambda: h.fake.positions[TP0] == 25)  # 20..24 wait in the batcher
        h.ack(b0)
        h.status()
        h.fake.revoke_on_next_poll([TP0], reassign=True)
        wait_until(lambda: h.fake.seeks == [(TP0, 10)])
        h.wait_for_batches(3)
        h.ref.ask(StopFetching(), timeout=ASK_S)  # releases the re-read 20..24
        again = h.wait_for_batches(4)[2:]
        assert [s.offsets for s in again] == [list(range(10, 20)), list(range(20, 25))]
        h.ack(b1)  # late, from before the rebalance: ignored
        assert h.fake.async_commits == [{TP0: 10}]  # b0, committed on the way out
        assert h.commit_now() == {}
        for source in again:
            h.ack(source)
        assert h.commit_now() == {TP0: 25}

    def test_a_failed_delivery_stops_fetching_and_the_watermark_for_good(self) -> None:
        h = Harness(
            {TP0: make_records(values(30))},
            batch=BatchSettings(max_records=10, max_in_flight=10),
        )
        b0, b1, b2 = h.wait_for_batches(3)
        h.ack(b0)
        h.ack(b1, error="KafkaTimeoutError: timed out")
        h.ack(b2)
        ((kind, error),) = h.failures.wait_for(1)
        assert kind == "producer"
        assert isinstance(error, DeliveryError)
        assert f"batch {b1.batch_id} from events/0" in str(error)
        assert "KafkaTimeoutError: timed out" in str(error)
        assert h.status().fetching is False
        assert h.commit_now() == {TP0: 10}
        assert h.ref.is_alive()

    def test_a_late_failure_of_a_revoked_partition_is_ignored(self) -> None:
        h = Harness(
            {TP0: make_records(values(10)), TP1: make_records(values(10))},
            batch=BatchSettings(max_records=10),
        )
        sources = h.wait_for_batches(2)
        h.fake.revoke_on_next_poll([TP0])
        wait_until(lambda: h.status().assigned == [TP1])
        h.ack(next(s for s in sources if s.partition == 0), error="boom")
        assert h.status().fetching is True
        assert h.failures.items() == []


class TestShutdown:
    def test_stop_fetching_dispatches_buffered_records_and_takes_no_more(self) -> None:
        h = Harness(
            {TP0: make_records(values(15))},
            batch=BatchSettings(max_records=10, max_wait_s=30.0, eager_when_idle=False),
        )
        h.wait_for_batches(1)
        wait_until(lambda: h.fake.positions[TP0] == 15)
        status = h.ref.ask(StopFetching(), timeout=ASK_S)
        assert status.fetching is False
        assert status.batches_in_flight == 2
        first, rest = h.wait_for_batches(2)
        assert rest.offsets == list(range(10, 15))
        assert h.fake.paused == {TP0}
        h.fake.append(TP0, make_records(values(10), offsets=range(15, 25)))
        polls = h.fake.polls
        h.fake.wait_for_polls(polls + 3)
        sync(h.preprocessor)
        assert len(h.batches.items()) == 2
        h.ack(first)
        h.ack(rest)
        assert h.commit_now() == {TP0: 15}

    def test_a_normal_stop_closes_the_client_without_committing(self) -> None:
        h = Harness({TP0: make_records(values(10))}, batch=BatchSettings(max_records=10))
        (batch,) = h.wait_for_batches(1)
        h.ack(batch)
        h.status()
        h.ref.stop(timeout=ASK_S)
        assert h.fake.closed is True
        assert h.fake.commits == []


def test_the_consumer_reports_consumed_records_in_flight_commits_and_lag() -> None:
    registry = CollectorRegistry()
    metrics = MetricsActor.start(MetricsSettings(enabled=False), registry)
    h = Harness(
        {TP0: make_records(values(30))},
        batch=BatchSettings(max_records=10, max_in_flight=10),
        metrics=metrics,
    )
    b0, _b1, _b2 = h.wait_for_batches(3)
    h.ack(b0)
    h.commit_now()  # forces a progress report
    metrics.ask(GetStatus(), timeout=ASK_S)
    value = registry.get_sample_value
    assert value("streamer_records_consumed_total") == 30.0
    assert value("streamer_in_flight_batches") == 2.0
    assert value("streamer_in_flight_records") == 20.0
    assert value("streamer_committed_offset", {"topic": "events", "partition": "0"}) == 10.0
    assert value("streamer_consumer_lag", {"topic": "events", "partition": "0"}) == 20.0
    assert value("streamer_paused_partitions") == 0.0

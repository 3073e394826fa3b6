"""The producer sends a batch's state changelog records with its answers, in one delivery."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pykka

from streamer.actors.producer import ProducerActor
from streamer.messages import (
    BatchAcked,
    BatchProduced,
    GetStatus,
    PartitionsRevoked,
    ScoredBatch,
    ServedValues,
    StateFlush,
    StateFlushed,
)
from streamer.settings import FormatSettings
from tests.unit.fakes import FakeProducer, Mailbox, Sent, start_recorder, wait_until
from tests.unit.test_stage_actors import ASK_S, KAFKA, good, scored

CHANGELOG = "g.events.state-abc-changelog"
CHANGES = ((b"\x02\x00card", b"state"), (b"\x01" + bytes(8), None), (b"\x00meta", b"meta"))


def start(
    fake: FakeProducer, *, log_features: bool = False
) -> tuple[pykka.ActorRef, Mailbox, list[tuple[str, BaseException]]]:
    failures: list[tuple[str, BaseException]] = []
    consumer, acks = start_recorder(ignore=(BatchProduced,))
    actor = ProducerActor.start(
        KAFKA,
        consumer,
        on_failure=lambda kind, error: failures.append((kind, error)),
        client_factory=lambda _settings: fake,
        formats=FormatSettings(),
        changelog_topic=CHANGELOG,
        log_features=log_features,
    )
    return actor, acks, failures


def with_state(batch_id: int = 0, seq: int = 0, dispatched_at: float | None = None) -> ScoredBatch:
    batch = scored([good(1, 1), good(2, 2)], valid=[0, 1], predictions=[0.1, 0.2], seq=seq)
    source = dataclasses.replace(
        batch.source,
        batch_id=batch_id,
        changelog=CHANGES,
        state_names=("n",),
        state_values=ServedValues.of([(1.0,), (2.0,)], 1),
        dispatched_at=time.monotonic() if dispatched_at is None else dispatched_at,
    )
    return dataclasses.replace(batch, source=source)


def test_changelog_records_follow_the_answers_and_the_ack_covers_both() -> None:
    fake = FakeProducer()
    actor, acks, failures = start(fake, log_features=True)
    actor.tell(with_state())
    assert acks.wait_for(1) == [BatchAcked(0, "events", 0, None)]
    sent = fake.records()
    assert [s.topic for s in sent] == ["scores", "scores", CHANGELOG, CHANGELOG, CHANGELOG]
    assert [(s.key, s.value) for s in sent[2:]] == list(CHANGES)
    assert [orjson.loads(s.value)["state_features"] for s in sent[:2]] == [{"n": 1.0}, {"n": 2.0}]
    assert failures == []
    actor.stop()


def test_a_failed_changelog_record_fails_the_batch_and_is_never_a_dead_letter() -> None:
    def fail_changelog(sent: Sent) -> BaseException | None:
        return RuntimeError("partition offline") if sent.topic == CHANGELOG else None

    fake = FakeProducer(fail_when=fail_changelog)
    actor, acks, failures = start(fake)
    actor.tell(with_state())
    wait_until(lambda: failures)
    assert "state changelog" in str(failures[0][1])
    assert all(s.topic != "events.dlq" for s in fake.records())
    assert acks.items() == []  # neither acknowledged nor partly delivered: sent again whole


def test_batches_of_a_revoked_partition_dispatched_before_send_no_changelog() -> None:
    fake = FakeProducer()
    actor, acks, _failures = start(fake)
    before = time.monotonic()
    actor.tell(PartitionsRevoked((("events", 0),), before + 1.0))
    actor.tell(with_state(dispatched_at=before))  # abandoned: another member owns the state
    actor.tell(with_state(batch_id=1, seq=1, dispatched_at=before + 2.0))  # assigned again
    acks.wait_for(2)
    topics = [s.topic for s in fake.records()]
    assert topics.count(CHANGELOG) == len(CHANGES)
    assert topics[-1] == CHANGELOG
    actor.ask(GetStatus(), timeout=ASK_S)
    actor.stop()


def flush(
    flush_id: int, seq: int, epoch: int = 0, made_at: float | None = None, key: bytes = b"k"
) -> StateFlush:
    changes = ((b"\x02\x00" + key, b"v%d" % flush_id), (b"\x00meta", b"meta%d" % flush_id))
    made = time.monotonic() if made_at is None else made_at
    return StateFlush("events", 0, flush_id, changes, made, epoch, seq)


def test_a_gathered_flush_goes_to_the_changelog_alone_and_is_acknowledged() -> None:
    fake = FakeProducer()
    actor, acks, failures = start(fake)
    actor.tell(flush(7, seq=0))
    assert acks.wait_for(1) == [StateFlushed("events", 0, 7)]
    assert [(s.topic, s.key, s.value) for s in fake.records()] == [
        (CHANGELOG, b"\x02\x00k", b"v7"),
        (CHANGELOG, b"\x00meta", b"meta7"),
    ]
    assert failures == []
    actor.stop()


def test_flushes_keep_their_order_through_a_lost_one_and_a_rewind() -> None:
    fake = FakeProducer()
    actor, acks, _failures = start(fake)
    actor.tell(flush(1, seq=0))
    # Flush 2 went to a producer that died: 3 must not land before it (nor 2 after 3).
    actor.tell(flush(3, seq=2))
    actor.tell(flush(2, seq=0, epoch=1))  # the rewind: every unacknowledged one, from 0
    actor.tell(flush(3, seq=1, epoch=1))
    actor.tell(flush(4, seq=2, epoch=0))  # an older epoch's: dropped, it comes again
    actor.tell(flush(4, seq=2, epoch=1))
    acked = acks.wait_for(4)
    assert [a.flush_id for a in acked] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    metas = [s.value for s in fake.records() if s.key == b"\x00meta"]
    assert metas == [b"meta1", b"meta2", b"meta3", b"meta4"]
    actor.stop()


def test_a_flush_of_a_revoked_partition_made_before_is_not_sent() -> None:
    fake = FakeProducer()
    actor, acks, _failures = start(fake)
    before = time.monotonic()
    actor.tell(PartitionsRevoked((("events", 0),), before + 1.0))
    actor.tell(flush(1, seq=0, made_at=before))  # another member owns the state now
    actor.tell(flush(2, seq=1, made_at=before + 2.0))  # assigned again since
    assert acks.wait_for(1) == [StateFlushed("events", 0, 2)]
    assert [s.value for s in fake.records() if s.key == b"\x00meta"] == [b"meta2"]
    actor.stop()


def test_a_failed_flush_record_restarts_the_producer_and_is_not_acknowledged() -> None:
    def fail_changelog(sent: Sent) -> BaseException | None:
        return RuntimeError("partition offline") if sent.topic == CHANGELOG else None

    fake = FakeProducer(fail_when=fail_changelog)
    actor, acks, failures = start(fake)
    actor.tell(flush(1, seq=0))
    wait_until(lambda: failures)
    assert "state changelog" in str(failures[0][1])
    assert acks.items() == []


def test_a_revoke_is_answered_once_the_client_has_flushed_what_was_sent() -> None:
    fake = FakeProducer()
    actor, _acks, _failures = start(fake)
    actor.tell(flush(1, seq=0))
    before = time.monotonic()
    answer = actor.ask(PartitionsRevoked((("events", 0),), before, 2.5), timeout=ASK_S)
    assert answer is True
    assert fake.flushes == [2.5]  # the changelog records sent before the revoke, acknowledged
    assert actor.ask(PartitionsRevoked((("events", 1),), before), timeout=ASK_S) is True
    assert fake.flushes == [2.5]  # told without a budget (a test's or a file's): no flush
    actor.stop()

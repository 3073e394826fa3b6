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
        state_values=((1.0,), (2.0,)),
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

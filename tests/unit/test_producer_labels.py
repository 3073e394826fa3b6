"""The producer records the champion's scores and joins label batches in its prediction ledger."""

from __future__ import annotations

import dataclasses

import orjson
import pykka

from streamer.actors.producer import ProducerActor
from streamer.core.labels.join import coordinates_identity
from streamer.core.labels.ledger import COUNTS_KEY, batch_key, decode_batch
from streamer.core.labels.live import MARKS_KEY
from streamer.core.state.codec import META_KEY
from streamer.messages import (
    BatchAcked,
    BatchDelivered,
    BatchProduced,
    ChallengerScored,
    LabelBatch,
    LabelsJoined,
    LabelsRevoked,
    LedgerHeld,
    PartitionsAssigned,
    PartitionsRevoked,
)
from streamer.settings import build_settings
from streamer.topology.labels import LedgerKeeper
from tests.unit.fakes import FakeProducer, Mailbox, Sent, start_recorder, wait_until
from tests.unit.test_stage_actors import KAFKA, good, scored, source

LEDGER = "streamer.events.ledger-changelog"
SETTINGS = build_settings(
    {
        "kafka": {"input_topic": "events", "output_topic": "scores"},
        "labels": {"topic": "events.labels"},
        "challenger": [{"name": "cand", "output_topic": "scores.cand"}],
    },
    environ={},
)


def start(fake: FakeProducer) -> tuple[pykka.ActorRef, Mailbox, Mailbox, list[object]]:
    failures: list[object] = []
    consumer, acks = start_recorder(ignore=(BatchProduced,))
    metrics, events = start_recorder(ignore=(BatchDelivered,))
    actor = ProducerActor.start(
        KAFKA,
        consumer,
        metrics=metrics,
        on_failure=lambda kind, error: failures.append((kind, error)),
        client_factory=lambda _settings: fake,
        ledger=LedgerKeeper(SETTINGS, None),
    )
    return actor, acks, events, failures


def labels(docs: list[object], *, batch_id: int, seq: int = 0) -> LabelBatch:
    values = [orjson.dumps(doc) if isinstance(doc, dict) else doc for doc in docs]
    batch = source(values, batch_id=batch_id, seq=seq)  # type: ignore[arg-type]
    return LabelBatch(dataclasses.replace(batch, topic="events.labels"))


def test_scores_and_labels_go_to_the_ledger_changelog_in_flushes_beside_their_batches() -> None:
    fake = FakeProducer()
    actor, acks, events, failures = start(fake)
    actor.tell(scored([good(1, 1), b"[1]", good(2, 2)], valid=[0, 2], predictions=[0.25, 0.75]))
    # The bounds come before the batch's ack; the flush's ack (here at once) moves them on.
    assert acks.wait_for(3) == [
        LedgerHeld(0, 0, None),
        BatchAcked(0, "events", 0, None),
        LedgerHeld(0, None, None),
    ]
    assert [s.topic for s in fake.records() if s.topic != LEDGER] == ["scores", "scores"]
    ledger = [s for s in fake.records() if s.topic == LEDGER]
    # One record for the batch's predictions, then the counts, the marks and the meta record.
    assert [s.key for s in ledger] == [batch_key(2), COUNTS_KEY, MARKS_KEY, META_KEY]
    recorded_batch = decode_batch(ledger[0].value)  # type: ignore[arg-type]
    assert recorded_batch.first_offset == 0
    # By source coordinates: the offsets, not the identities.
    assert recorded_batch.offsets_array().tolist() == [0, 2]
    assert recorded_batch.ids == []
    assert recorded_batch.scores_list() == [0.25, 0.75]

    joined = labels(
        [
            {"topic": "events", "partition": 0, "offset": 2, "label": 1},
            b"not json",
            {"topic": "events", "partition": 0, "offset": 9, "label": 0},
        ],
        batch_id=1,
    )
    actor.tell(joined)
    assert acks.wait_for(6)[3:] == [
        LedgerHeld(0, None, 0),  # the labels from offset 0
        BatchAcked(1, "events.labels", 0, None),
        LedgerHeld(0, None, None),
    ]
    dead = [s for s in fake.records() if s.topic == "events.dlq"]
    assert [dict(s.headers or [])["streamer.reason"] for s in dead] == [b"malformed"]
    assert dict(dead[0].headers or [])["streamer.stage"] == b"labels"
    wait_until(lambda: len(events.items()) == 3)
    reset, recorded, join = events.items()
    assert isinstance(reset, LabelsJoined)
    assert reset.reset
    assert isinstance(recorded, LabelsJoined)
    assert (recorded.counts.outputs, recorded.held, recorded.joined) == (2, 2, ())
    assert isinstance(join, LabelsJoined)
    assert [j.identity for j in join.joined] == [coordinates_identity("events", 0, 2)]
    assert (join.counts.joined, join.counts.labels) == (1, {"unmatched": 1})

    # A challenger's scores go in a flush of their own (none was in flight).
    challenger = ChallengerScored(
        scored([good(1, 1)], valid=[0], predictions=[0.5], first_offset=2).source,
        (0,),
        (0.5,),
        "cand",
        "2",
        "2026-12-06T06:00:00.000Z",
    )
    actor.tell(challenger)
    actor.tell(
        scored([good(3, 3)], valid=[0], predictions=[0.1], batch_id=2, seq=1, first_offset=3)
    )
    wait_until(lambda: len(events.items()) == 5)
    (changed,) = events.items()[3].joined
    assert [c.name for c in changed.prediction.challengers] == ["cand"]
    assert events.items()[4].joined == ()  # type: ignore[attr-defined]

    actor.tell(PartitionsRevoked((("events", 0), ("events.labels", 0)), 0.0))
    wait_until(lambda: len(events.items()) == 6)
    assert events.items()[5] == LabelsRevoked((0,))
    assert failures == []
    actor.stop()


def test_assigned_partitions_ledgers_are_restored_before_their_first_batch() -> None:
    fake = FakeProducer()
    actor, acks, events, failures = start(fake)
    # The labels partition has no ledger of its own: its labels join input partition 0's.
    actor.tell(PartitionsAssigned((("events", 0), ("events", 1), ("events.labels", 0))))
    wait_until(lambda: len(events.items()) == 2)
    restored = events.items()
    assert [(r.partition, r.reset, r.joined, r.held) for r in restored] == [  # type: ignore[attr-defined]
        (0, True, (), 0),
        (1, True, (), 0),
    ]
    assert fake.records() == []  # a restore sends nothing

    # The first batch finds its ledger ready: recorded, not restored again.
    actor.tell(scored([good(1, 1)], valid=[0], predictions=[0.5]))
    assert acks.wait_for(3)[1] == BatchAcked(0, "events", 0, None)
    wait_until(lambda: len(events.items()) == 3)
    recorded = events.items()[2]
    assert isinstance(recorded, LabelsJoined)
    assert (recorded.partition, recorded.reset, recorded.held) == (0, False, 1)
    assert failures == []
    actor.stop()


def test_a_keeper_prepares_each_partition_once() -> None:
    keeper = LedgerKeeper(SETTINGS, None)
    keeper.prepare([2, 0])
    assert keeper.partitions == [0, 2]
    assert [r.partition for r in keeper.take_resets()] == [2, 0]
    keeper.prepare([0, 1])  # 0 is open already: only 1 is restored
    assert keeper.partitions == [0, 1, 2]
    assert [r.partition for r in keeper.take_resets()] == [1]
    keeper.close()


def test_a_batch_is_acknowledged_with_its_answers_and_the_bounds_wait_for_the_flush() -> None:
    fake = FakeProducer(auto_ack=False)
    actor, acks, events, failures = start(fake)
    actor.tell(scored([good(1, 1)], valid=[0], predictions=[0.5], first_offset=7))
    wait_until(lambda: len(fake.records()) == 5)
    flush, answer = fake.records()[:4], fake.records()[4]
    assert [s.topic for s in flush] == [LEDGER] * 4
    answer.future.succeed()
    # Its slot is free: acknowledged, while the commit stays below offset 7.
    assert acks.wait_for(2) == [LedgerHeld(0, 7, None), BatchAcked(0, "events", 0, None)]
    actor.tell(
        scored([good(2, 2)], valid=[0], predictions=[0.5], batch_id=1, seq=1, first_offset=8)
    )
    wait_until(lambda: len(fake.records()) == 6)  # its answer: no flush while one is out
    for sent in flush:
        sent.future.succeed()
    # The first flush is in: the second batch's changes leave, and hold the commit at 8.
    assert acks.wait_for(3)[2] == LedgerHeld(0, 8, None)
    wait_until(lambda: len(fake.records()) == 10)
    assert [s.topic for s in fake.records()[6:]] == [LEDGER] * 4

    def recorded() -> list[tuple[int, int]]:  # the recorder actor gets them on its own thread
        joined = [e for e in events.items() if isinstance(e, LabelsJoined) and not e.reset]
        return [(r.counts.outputs, r.held) for r in joined]

    wait_until(lambda: recorded() != [])
    assert recorded() == [(1, 1)]  # the first flush's
    for sent in fake.records()[5:]:
        sent.future.succeed()
    assert acks.wait_for(5)[3:] == [BatchAcked(1, "events", 0, None), LedgerHeld(0, None, None)]
    assert failures == []
    actor.stop()


def test_a_failed_ledger_flush_fails_the_producer_and_the_bounds_stay() -> None:
    def fail_ledger(sent: Sent) -> BaseException | None:
        return RuntimeError("partition offline") if sent.topic == LEDGER else None

    fake = FakeProducer(fail_when=fail_ledger)
    actor, acks, events, failures = start(fake)
    actor.tell(scored([good(1, 1)], valid=[0], predictions=[0.5]))
    wait_until(lambda: failures)
    assert "ledger changelog" in str(failures[0][1])  # type: ignore[index]
    # The answers were acknowledged; the commit stays held below the batch for good.
    assert acks.items() == [LedgerHeld(0, 0, None), BatchAcked(0, "events", 0, None)]
    assert [e for e in events.items() if isinstance(e, LabelsJoined) and not e.reset] == []

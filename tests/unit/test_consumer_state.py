"""The consumer actor applies the state to each batch it cuts; commits, revokes, status."""

from __future__ import annotations

import dataclasses
import logging
import threading

import orjson
import pykka
import pytest

from streamer.actors.consumer import ConsumerActor
from streamer.core.state.codec import META_KEY, SERVED_PREFIX, served_key
from streamer.messages import (
    Attach,
    BatchAcked,
    CommitNow,
    ConsumerStatus,
    GetInFlight,
    GetStatus,
    PartitionsRevoked,
    Rewind,
    ScoreBatch,
    StateFlush,
    StateFlushed,
    StopFetching,
)
from streamer.settings import BatchSettings, KafkaSettings, build_settings
from streamer.topology.state import StateKeeper
from tests.unit.fakes import FakeConsumer, Mailbox, make_records, start_recorder, wait_until
from tests.unit.test_consumer_actor import ASK_S, KAFKA, TP0, TP1

FEATURES = [{"name": "n", "key": "card", "agg": "count", "window": "1h", "time": "ts"}]
SETTINGS = build_settings(
    {
        "kafka": {"input_topic": "events", "output_topic": "scores"},
        "state": {
            "features": FEATURES,
            "changelog_interval_s": 0,  # each batch carries its changes (the gathered: below)
        },
    },
    environ={},
)


def events(n: int) -> list[bytes | None]:
    return [orjson.dumps({"card": f"c{i % 3}", "ts": 1000 * i}) for i in range(n)]


def start_fetching(
    fake: FakeConsumer,
    keeper: StateKeeper,
    producer: pykka.ActorRef,
    *,
    kafka: KafkaSettings = KAFKA,
    labels_topic: str = "",
) -> tuple[pykka.ActorRef, Mailbox]:
    """A consumer with state over ``fake``, fetching: the actor and what its preprocessor got."""
    preprocessor, batches = start_recorder()
    ref = ConsumerActor.start(
        kafka,
        BatchSettings(max_records=5, max_in_flight=10),
        client_factory=lambda _settings, _max: fake,
        state=keeper,
        producer=producer,
        labels_topic=labels_topic,
    )
    ref.tell(Attach([preprocessor]))
    return ref, batches


def test_batches_leave_with_their_features_and_commits_forget_what_was_served() -> None:
    fake = FakeConsumer({TP0: make_records(events(10)), TP1: make_records(events(10))})
    producer, told = start_recorder()
    keeper = StateKeeper(SETTINGS, None)
    ref, batches = start_fetching(fake, keeper, producer)
    sources = [m.source for m in batches.wait_for(4) if isinstance(m, ScoreBatch)]
    p0 = sorted((s for s in sources if s.partition == 0), key=lambda s: s.first_offset)
    assert [v[0] for v in p0[0].state_values.rows() + p0[1].state_values.rows()] == [
        1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0,
    ]  # fmt: skip
    assert p0[0].changelog[-1][0] == META_KEY
    status: ConsumerStatus = ref.ask(GetStatus(), timeout=ASK_S)
    assert status.state_keys == 6  # three cards in each of two partitions

    ref.tell(BatchAcked(p0[0].batch_id, "events", 0, None))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 5}
    # What the batch below the commit was served (one run, keyed by its last offset) is
    # deleted, and the deletion rides with the partition's next batch to the changelog.
    fake.append(TP0, make_records(events(1), offsets=[10]))
    (nxt,) = [m.source for m in batches.wait_for(5)[4:]]
    served_deleted = [k for k, v in nxt.changelog if k.startswith(SERVED_PREFIX) and v is None]
    assert served_deleted == [served_key(4)]

    fake.revoke_on_next_poll([TP0])
    wait_until(lambda: ref.ask(GetStatus(), timeout=ASK_S).assigned == [TP1])
    (revoked,) = told.wait_for(1)
    assert isinstance(revoked, PartitionsRevoked)
    assert revoked.tps == (TP0,)
    assert revoked.before > nxt.dispatched_at  # the producer drops those batches' changelog
    # The actor's thread closes the revoked partition's store at its next poll.
    wait_until(lambda: ref.ask(GetStatus(), timeout=ASK_S).state_keys == 3)
    ref.stop()


def test_gathered_changes_leave_in_flushes_that_hold_the_commit_until_acknowledged() -> None:
    now = [0.0]
    gathered = build_settings(
        {
            "kafka": {"input_topic": "events", "output_topic": "scores"},
            "state": {
                "features": FEATURES,
                "changelog_interval_s": 5.0,
            },
        },
        environ={},
    )
    fake = FakeConsumer({TP0: make_records(events(10))})
    producer, told = start_recorder()
    ref, batches = start_fetching(fake, StateKeeper(gathered, None, clock=lambda: now[0]), producer)
    a, b = sorted(
        (m.source for m in batches.wait_for(2) if isinstance(m, ScoreBatch)),
        key=lambda s: s.first_offset,
    )
    assert a.changelog == b.changelog == ()  # gathered, not carried
    ref.tell(BatchAcked(a.batch_id, "events", 0, None))
    ref.tell(BatchAcked(b.batch_id, "events", 0, None))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 0}  # answered, not durable
    assert told.items() == []  # the interval is not over

    now[0] = 5.0  # the next tick sends the partition's changes, each key once, meta last
    (first,) = told.wait_for(1)
    assert isinstance(first, StateFlush)
    assert (first.topic, first.partition, first.epoch, first.seq) == ("events", 0, 0, 0)
    keys = [key for key, _ in first.changes]
    assert keys[-1] == META_KEY
    assert len(keys) == len(set(keys))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 0}  # sent, not acknowledged
    ref.tell(StateFlushed("events", 0, first.flush_id))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 10}

    # One more record; its flush goes to a producer that dies: the rewind sends it again.
    fake.append(TP0, make_records(events(1), offsets=[10]))
    (c,) = [m.source for m in batches.wait_for(3)[2:]]
    ref.tell(BatchAcked(c.batch_id, "events", 0, None))
    now[0] = 10.0
    second = told.wait_for(2)[1]
    assert isinstance(second, StateFlush)
    assert (second.epoch, second.seq) == (0, 1)
    ref.ask(Rewind(1), timeout=ASK_S)
    again = told.wait_for(3)[2]
    assert again == dataclasses.replace(second, made_at=again.made_at, epoch=1, seq=0)
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 10}
    ref.tell(StateFlushed("events", 0, second.flush_id))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 11}

    # The shutdown's drain: what is gathered leaves at once, and counts as in flight.
    fake.append(TP0, make_records(events(1), offsets=[11]))
    (d,) = [m.source for m in batches.wait_for(4)[3:]]
    ref.ask(StopFetching(), timeout=ASK_S)
    ref.tell(BatchAcked(d.batch_id, "events", 0, None))
    flushed = told.wait_for(4)[3]
    assert isinstance(flushed, StateFlush)
    assert flushed.epoch == 1
    assert ref.ask(GetInFlight(), timeout=ASK_S).batches_in_flight >= 1
    ref.tell(StateFlushed("events", 0, flushed.flush_id))

    def drained() -> bool:
        for message in told.items():  # forgotten served runs may follow: acknowledge them
            if isinstance(message, StateFlush):
                ref.tell(StateFlushed("events", 0, message.flush_id))
        return ref.ask(GetInFlight(), timeout=ASK_S).batches_in_flight == 0

    wait_until(drained)
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 12}
    ref.stop()


class _SlowHandOver(pykka.ThreadingActor):
    """A producer that answers PartitionsRevoked only once the test releases it."""

    def __init__(self, release: threading.Event, told: Mailbox) -> None:
        super().__init__()
        self._release = release
        self._told = told

    def on_receive(self, message: object) -> object:
        self._told.put(message)
        if isinstance(message, PartitionsRevoked):
            self._release.wait(ASK_S)
            self._told.put("answered")
            return True
        return None


def _revoking_consumer(
    kafka: KafkaSettings, producer: pykka.ActorRef
) -> tuple[pykka.ActorRef, FakeConsumer]:
    fake = FakeConsumer({TP0: make_records(events(4)), TP1: make_records(events(4))})
    ref, batches = start_fetching(fake, StateKeeper(SETTINGS, None), producer, kafka=kafka)
    batches.wait_for(2)
    fake.revoke_on_next_poll([TP0])
    return ref, fake


def test_a_revoke_returns_only_once_the_producer_has_sent_what_it_had() -> None:
    release, told = threading.Event(), Mailbox()
    producer = _SlowHandOver.start(release, told)
    kafka = dataclasses.replace(KAFKA, session_timeout_s=3.0)
    ref, _fake = _revoking_consumer(kafka, producer)
    (revoked,) = [m for m in told.wait_for(1) if isinstance(m, PartitionsRevoked)]
    assert revoked.tps == (TP0,)
    assert revoked.flush_s == 3.0  # the producer flushes its client at most this long
    # The consumer is inside the rebalance callback, waiting for the producer's answer.
    with pytest.raises(pykka.Timeout):
        ref.ask(GetStatus(), timeout=0.3)
    release.set()
    assert ref.ask(GetStatus(), timeout=ASK_S).assigned == [TP1]
    assert told.items()[-1] == "answered"
    ref.stop()
    producer.stop()


def test_a_revoke_goes_on_with_a_warning_when_the_producer_does_not_answer_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release, told = threading.Event(), Mailbox()
    producer = _SlowHandOver.start(release, told)
    kafka = dataclasses.replace(KAFKA, session_timeout_s=0.2, heartbeat_interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="streamer.actors.consumer"):
        ref, _fake = _revoking_consumer(kafka, producer)
        wait_until(lambda: ref.ask(GetStatus(), timeout=ASK_S).assigned == [TP1])
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "revoked events/0" in warning.getMessage()
    assert "kafka.session_timeout_s" in warning.getMessage()
    release.set()
    ref.stop()
    producer.stop()


def test_a_revoke_does_not_wait_for_a_producer_that_is_gone() -> None:
    release, told = threading.Event(), Mailbox()
    producer = _SlowHandOver.start(release, told)
    producer.stop()
    ref, _fake = _revoking_consumer(dataclasses.replace(KAFKA, session_timeout_s=30.0), producer)
    wait_until(lambda: ref.ask(GetStatus(), timeout=ASK_S).assigned == [TP1], timeout=2.0)
    ref.stop()

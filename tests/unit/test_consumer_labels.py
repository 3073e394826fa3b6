"""The consumer reads the labels topic in its group and sends label batches to the producer."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pykka

from streamer.actors.consumer import ConsumerActor
from streamer.messages import (
    Attach,
    BatchAcked,
    CommitNow,
    GetInFlight,
    LabelBatch,
    LedgerHeld,
    PartitionsAssigned,
    PartitionsRevoked,
    Rewind,
    Rewound,
    ScoreBatch,
)
from streamer.settings import BatchSettings
from streamer.topology.state import StateKeeper
from tests.unit.fakes import WAIT_S, FakeConsumer, Mailbox, make_records, start_recorder
from tests.unit.test_consumer_actor import ASK_S, KAFKA, TP0
from tests.unit.test_consumer_state import SETTINGS, events, start_fetching

LABELS_TP = ("events.labels", 0)


def started() -> tuple[pykka.ActorRef, FakeConsumer, Mailbox, Mailbox]:
    """A consumer of 3 events and 2 labels, fetching: the actor, its client, scored, told."""
    label_values = [orjson.dumps({"topic": "events", "partition": 0, "offset": i}) for i in (1, 2)]
    fake = FakeConsumer({TP0: make_records(events(3)), LABELS_TP: make_records(label_values)})
    producer, told = start_recorder()
    ref, scored = start_fetching(
        fake, StateKeeper(SETTINGS, None), producer, labels_topic="events.labels"
    )
    return ref, fake, scored, told


def test_label_batches_go_to_the_producer_without_state_and_commit_on_their_ack() -> None:
    ref, fake, scored, told = started()
    (score,) = scored.wait_for(1)
    # First the assignment (the producer restores the ledgers then), then the label batch.
    assigned, label = told.wait_for(2)
    assert assigned == PartitionsAssigned((TP0, LABELS_TP))
    assert fake.subscribed == ["events", "events.labels"]
    assert isinstance(score, ScoreBatch)
    assert len(score.source.state_values)  # the input's batch got its features
    assert isinstance(label, LabelBatch)
    assert (label.source.topic, label.source.offsets) == ("events.labels", [0, 1])
    assert label.source.state_values is None  # a label batch has none
    assert label.source.changelog == ()

    ref.tell(BatchAcked(label.source.batch_id, "events.labels", 0, None))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {LABELS_TP: 2}

    fake.revoke_on_next_poll([TP0, LABELS_TP])
    (revoked,) = [m for m in told.wait_for(3) if isinstance(m, PartitionsRevoked)]
    assert revoked.tps == (TP0, LABELS_TP)
    ref.stop()


def test_the_ledger_bounds_hold_the_commit_and_keep_the_delivered_batches_for_a_rewind() -> None:
    ref, _fake, scored, told = started()
    (score,) = scored.wait_for(1)
    _assigned, label = told.wait_for(2)
    assert isinstance(score, ScoreBatch)
    assert isinstance(label, LabelBatch)
    assert score.source.changelog  # each batch carries its state changes here
    # The producer tells the bounds before the acks: delivered, not in the ledger's changelog.
    ref.tell(LedgerHeld(0, 0, 1))
    ref.tell(BatchAcked(score.source.batch_id, "events", 0, None))
    ref.tell(BatchAcked(label.source.batch_id, "events.labels", 0, None))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 0, LABELS_TP: 1}
    # The drain waits for the two bounds; the credits do not (the batches are delivered).
    in_flight = ref.ask(GetInFlight(), timeout=ASK_S)
    assert (in_flight.batches_in_flight, in_flight.records_in_flight) == (2, 0)

    # A producer that died lost its ledger's flushes: a rewind sends the kept batches again,
    # the scored one without its state changes (they were delivered with its answers).
    assert ref.ask(Rewind(1), timeout=ASK_S) == Rewound(1, 2)
    again = scored.wait_for(2)[1]
    assert isinstance(again, ScoreBatch)
    assert (again.source.offsets, again.source.epoch) == (score.source.offsets, 1)
    assert again.source.changelog == ()
    assert isinstance(told.wait_for(3)[2], LabelBatch)

    ref.tell(LedgerHeld(0, None, None))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {TP0: 3, LABELS_TP: 2}
    assert ref.ask(GetInFlight(), timeout=ASK_S).batches_in_flight == 0
    assert ref.ask(Rewind(2), timeout=ASK_S) == Rewound(2, 0)  # nothing kept any more
    ref.stop()


class _Restoring(pykka.ThreadingActor):
    """A producer whose ledgers' restore lasts until ``release`` is set."""

    def __init__(self, release: threading.Event, told: Mailbox) -> None:
        super().__init__()
        self._release = release
        self._told = told

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PartitionsAssigned):
            self._release.wait(WAIT_S)
        self._told.put(message)
        return None


def test_no_batch_is_cut_and_the_daemon_is_not_ready_before_the_ledgers_are_restored() -> None:
    release, told, ready = threading.Event(), Mailbox(), threading.Event()
    producer = _Restoring.start(release, told)
    preprocessor, scored = start_recorder()
    fake = FakeConsumer({TP0: make_records(events(3)), LABELS_TP: make_records([b"{}"])})
    ref = ConsumerActor.start(
        KAFKA,
        BatchSettings(max_records=5, max_in_flight=10),
        client_factory=lambda _settings, _max: fake,
        on_ready=ready.set,
        producer=producer,
        labels_topic="events.labels",
    )
    ref.tell(Attach([preprocessor]))
    # The client fetched (the assignment happens inside its first poll): nothing is cut yet.
    time.sleep(0.3)
    assert fake.subscribed == ["events", "events.labels"]
    assert (scored.items(), told.items(), ready.is_set()) == ([], [], False)

    release.set()
    (score,) = scored.wait_for(1)
    assert isinstance(score, ScoreBatch)
    assert score.source.offsets == [0, 1, 2]
    assigned, label = told.wait_for(2)
    assert assigned == PartitionsAssigned((TP0, LABELS_TP))
    assert isinstance(label, LabelBatch)
    assert ready.is_set()
    ref.stop()
    producer.stop()

"""The consumer reads the labels topic in its group and sends label batches to the producer."""

from __future__ import annotations

import orjson

from streamer.actors.consumer import ConsumerActor
from streamer.messages import (
    Attach,
    BatchAcked,
    CommitNow,
    LabelBatch,
    PartitionsAssigned,
    PartitionsRevoked,
    ScoreBatch,
)
from streamer.settings import BatchSettings
from streamer.topology.state import StateKeeper
from tests.unit.fakes import FakeConsumer, make_records, start_recorder
from tests.unit.test_consumer_actor import ASK_S, KAFKA, TP0
from tests.unit.test_consumer_state import SETTINGS, events

LABELS_TP = ("events.labels", 0)


def test_label_batches_go_to_the_producer_without_state_and_commit_on_their_ack() -> None:
    label_values = [orjson.dumps({"topic": "events", "partition": 0, "offset": i}) for i in (1, 2)]
    fake = FakeConsumer({TP0: make_records(events(3)), LABELS_TP: make_records(label_values)})
    preprocessor, scored = start_recorder()
    producer, told = start_recorder()
    ref = ConsumerActor.start(
        KAFKA,
        BatchSettings(max_records=5, max_in_flight=10),
        client_factory=lambda _settings, _max: fake,
        state=StateKeeper(SETTINGS, None),
        producer=producer,
        labels_topic="events.labels",
    )
    ref.tell(Attach([preprocessor]))
    (score,) = scored.wait_for(1)
    # First the assignment (the producer restores the ledgers then), then the label batch.
    assigned, label = told.wait_for(2)
    assert assigned == PartitionsAssigned((TP0, LABELS_TP))
    assert fake.subscribed == ["events", "events.labels"]
    assert isinstance(score, ScoreBatch)
    assert score.source.state_values  # the input's batch got its features
    assert isinstance(label, LabelBatch)
    assert (label.source.topic, label.source.offsets) == ("events.labels", [0, 1])
    assert label.source.state_values == ()  # a label batch has none
    assert label.source.changelog == ()

    ref.tell(BatchAcked(label.source.batch_id, "events.labels", 0, None))
    assert ref.ask(CommitNow(), timeout=ASK_S) == {LABELS_TP: 2}

    fake.revoke_on_next_poll([TP0, LABELS_TP])
    (revoked,) = [m for m in told.wait_for(3) if isinstance(m, PartitionsRevoked)]
    assert revoked.tps == (TP0, LABELS_TP)
    ref.stop()

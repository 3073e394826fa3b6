"""PreprocessorActor, ModelActor and ProducerActor with fake neighbours."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pykka
import pytest
from prometheus_client import CollectorRegistry

from streamer.actors.metrics import MetricsActor
from streamer.actors.model import ModelActor
from streamer.actors.preprocess import PreprocessorActor
from streamer.actors.producer import ProducerActor
from streamer.core.features import FeatureSpec, prepare_batch
from streamer.core.models import ModelDefaults
from streamer.core.models.linear import LinearModel, load_linear
from streamer.errors import DeliveryError
from streamer.messages import (
    BatchAcked,
    BatchPartlyDelivered,
    BatchProduced,
    FeatureBatch,
    Flush,
    GetStatus,
    ProducerStatus,
    Rejection,
    ScoreBatch,
    ScoredBatch,
    SourceBatch,
)
from streamer.settings import BatchSettings, KafkaSettings, MetricsSettings, PreprocessSettings
from tests.unit.fakes import FakeProducer, Mailbox, Sent, start_recorder, sync, wait_until

ASK_S = 5.0
KAFKA = KafkaSettings(input_topic="events", output_topic="scores")
SPEC = FeatureSpec(("a", "b"), np.array([1.0, 2.0]), np.array([2.0, 4.0]))


def source(
    values: list[bytes | None],
    *,
    batch_id: int = 0,
    seq: int = 0,
    partition: int = 0,
    first_offset: int = 0,
) -> SourceBatch:
    offsets = list(range(first_offset, first_offset + len(values)))
    return SourceBatch(
        batch_id=batch_id,
        topic="events",
        partition=partition,
        seq=seq,
        offsets=offsets,
        keys=[f"key-{o}".encode() for o in offsets],
        values=values,
        timestamps_ms=[1_700_000_000_000 + o for o in offsets],
        dispatched_at=time.monotonic(),
    )


def good(a: float, b: float) -> bytes:
    return orjson.dumps({"a": a, "b": b})


class TestPreprocessorActor:
    def test_it_forwards_a_feature_batch_with_rejections_to_a_model(self) -> None:
        model_ref, mailbox = start_recorder()
        actor = PreprocessorActor.start(PreprocessSettings(), BatchSettings(), SPEC, [model_ref])
        batch = source([good(3, 6), b"[1]", good(1, 2), None], batch_id=4, seq=2)
        actor.tell(ScoreBatch(batch))
        (message,) = mailbox.wait_for(1)
        assert isinstance(message, FeatureBatch)
        assert message.source is batch
        assert message.features.tolist() == [[1.0, 1.0], [0.0, 0.0]]
        assert message.valid_rows.tolist() == [0, 2]
        assert message.rejections == (
            Rejection(1, "not_object", "value is JSON list, expected an object", "preprocess"),
            Rejection(3, "empty_value", "the record has no value (null or empty)", "preprocess"),
        )
        assert message.dropped_rows == ()
        assert message.preprocess_seconds > 0

    def test_the_drop_policy_reports_dropped_rows_instead_of_rejections(self) -> None:
        model_ref, mailbox = start_recorder()
        settings = PreprocessSettings(missing="drop", standardize=False)
        actor = PreprocessorActor.start(settings, BatchSettings(), SPEC, [model_ref])
        actor.tell(ScoreBatch(source([orjson.dumps({"a": 1}), good(5, 7), b"{"])))
        (message,) = mailbox.wait_for(1)
        assert message.features.tolist() == [[5.0, 7.0]]
        assert message.valid_rows.tolist() == [1]
        assert message.dropped_rows == (0,)
        assert [(r.index, r.reason) for r in message.rejections] == [(2, "invalid_json")]

    def test_it_applies_max_record_bytes(self) -> None:
        model_ref, mailbox = start_recorder()
        value = good(1, 2)
        actor = PreprocessorActor.start(
            PreprocessSettings(), BatchSettings(max_record_bytes=len(value) - 1), SPEC, [model_ref]
        )
        actor.tell(ScoreBatch(source([value])))
        (message,) = mailbox.wait_for(1)
        assert [r.reason for r in message.rejections] == ["oversized"]

    def test_batches_go_to_the_models_in_turn(self) -> None:
        first_ref, first = start_recorder()
        second_ref, second = start_recorder()
        actor = PreprocessorActor.start(
            PreprocessSettings(), BatchSettings(), SPEC, [first_ref, second_ref]
        )
        for batch_id in range(4):
            actor.tell(ScoreBatch(source([good(1, 2)], batch_id=batch_id, seq=batch_id)))
        assert [m.source.batch_id for m in first.wait_for(2)] == [0, 2]
        assert [m.source.batch_id for m in second.wait_for(2)] == [1, 3]


@pytest.fixture(scope="module")
def demo_model() -> LinearModel:
    return load_linear(None)


class Exploding(ModelDefaults):
    """Wraps a model; raises for rows whose first standardized feature is above ``limit``."""

    def __init__(self, model: LinearModel, limit: float) -> None:
        self._model = model
        self._limit = limit
        self.name = "exploding"
        self.version = "v9"
        self.spec = model.spec
        self.output_names = model.output_names

    def predict(self, features: np.ndarray) -> np.ndarray:
        if np.any(features[:, 0] > self._limit):
            msg = "feature out of range"
            raise OverflowError(msg)
        return self._model.predict(features)


class TestModelActor:
    def test_it_scores_the_batch_and_forwards_everything_to_the_producer(
        self, demo_model: LinearModel
    ) -> None:
        producer_ref, mailbox = start_recorder()
        actor = ModelActor.start(demo_model, producer_ref)
        rows = np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.5, 3.0]])
        rejection = Rejection(1, "invalid_json", "bad", "preprocess")
        batch = FeatureBatch(
            source=source([b"x"] * 3),
            features=rows,
            valid_rows=np.array([0, 2]),
            rejections=(rejection,),
            dropped_rows=(),
            preprocess_seconds=0.25,
        )
        actor.tell(batch)
        (message,) = mailbox.wait_for(1)
        assert isinstance(message, ScoredBatch)
        assert message.source is batch.source
        assert np.array_equal(message.predictions, demo_model.predict(rows))
        assert message.output_names == ("score",)
        assert message.valid_rows.tolist() == [0, 2]
        assert message.rejections == (rejection,)
        assert (message.model_name, message.model_version) == (
            demo_model.name,
            demo_model.version,
        )
        assert message.preprocess_seconds == 0.25
        assert message.model_seconds > 0

    def test_rows_the_model_fails_on_become_model_errors_with_their_batch_index(
        self, demo_model: LinearModel
    ) -> None:
        producer_ref, mailbox = start_recorder()
        actor = ModelActor.start(Exploding(demo_model, limit=5.0), producer_ref)
        rows = np.zeros((4, 5))
        rows[1, 0] = 6.0
        rows[3, 0] = 7.0
        earlier = Rejection(2, "not_object", "list", "preprocess")
        actor.tell(
            FeatureBatch(
                source=source([b"x"] * 6),
                features=rows,
                valid_rows=np.array([0, 1, 3, 5]),
                rejections=(earlier,),
                dropped_rows=(4,),
            )
        )
        (message,) = mailbox.wait_for(1)
        assert message.valid_rows.tolist() == [0, 3]
        assert np.array_equal(message.predictions, demo_model.predict(rows[[0, 2]]))
        assert message.rejections == (
            earlier,
            Rejection(1, "model_error", "OverflowError: feature out of range", "model"),
            Rejection(5, "model_error", "OverflowError: feature out of range", "model"),
        )
        assert message.dropped_rows == (4,)
        assert message.model_name == "exploding"


def scored(
    values: list[bytes | None],
    *,
    valid: list[int],
    predictions: list[float],
    rejections: tuple[Rejection, ...] = (),
    dropped: tuple[int, ...] = (),
    batch_id: int = 0,
    seq: int = 0,
    partition: int = 0,
    first_offset: int = 0,
) -> ScoredBatch:
    return ScoredBatch(
        source=source(
            values, batch_id=batch_id, seq=seq, partition=partition, first_offset=first_offset
        ),
        predictions=np.array(predictions, dtype=np.float64),
        output_names=("score",),
        valid_rows=np.array(valid, dtype=np.int64),
        rejections=rejections,
        dropped_rows=dropped,
        model_name="demo-fraud",
        model_version="v1",
    )


def start_producer(
    fake: FakeProducer, metrics: pykka.ActorRef | None = None
) -> tuple[pykka.ActorRef, pykka.ActorRef, Mailbox]:
    consumer_ref, acks = start_recorder(ignore=(BatchProduced,))
    actor = ProducerActor.start(
        KAFKA, consumer_ref, metrics=metrics, client_factory=lambda _settings: fake
    )
    return actor, consumer_ref, acks


def status(actor: pykka.ActorRef) -> ProducerStatus:
    return actor.ask(GetStatus(), timeout=ASK_S)


def source_offset(sent: Sent) -> tuple[str, int]:
    """(topic, input offset) of an output or a dead letter."""
    if sent.topic == "scores":
        return sent.topic, orjson.loads(sent.value)["offset"]
    return sent.topic, int(sent.header_map["streamer.source.offset"])


class TestProducerActor:
    def test_outputs_and_dead_letters_are_produced_in_input_order(self) -> None:
        fake = FakeProducer()
        actor, _, acks = start_producer(fake)
        values = [good(1, 1), b"not json", good(2, 2), good(3, 3), b"[]", good(4, 4)]
        actor.tell(
            scored(
                values,
                valid=[0, 2, 5],
                predictions=[0.25, 0.5, 0.75],
                rejections=(
                    Rejection(4, "not_object", "value is JSON list", "preprocess"),
                    Rejection(1, "invalid_json", "value is not valid JSON", "preprocess"),
                ),
                dropped=(3,),
                first_offset=40,
                partition=2,
                batch_id=9,
            )
        )
        assert status(actor) == ProducerStatus(
            waiting_for_order=0, batches_produced=1, unanswerable=0
        )
        sent = fake.records()
        assert [source_offset(s) for s in sent] == [
            ("scores", 40),
            ("events.dlq", 41),
            ("scores", 42),
            ("events.dlq", 44),
            ("scores", 45),
        ]
        assert [s.key for s in sent] == [b"key-40", b"key-41", b"key-42", b"key-44", b"key-45"]
        output = orjson.loads(sent[0].value)
        assert output["score"] == 0.25
        assert (output["topic"], output["partition"], output["key"]) == ("events", 2, "key-40")
        assert output["model"] == {"name": "demo-fraud", "version": "v1"}
        assert sent[1].value == b"not json"
        assert sent[1].headers is not None
        headers = sent[1].header_map
        assert headers["streamer.reason"] == b"invalid_json"
        assert headers["streamer.error"] == b"value is not valid JSON"
        assert headers["streamer.stage"] == b"preprocess"
        assert headers["streamer.source.topic"] == b"events"
        assert headers["streamer.source.partition"] == b"2"
        assert headers["streamer.model.version"] == b"v1"
        assert headers["streamer.failed_at"] == output["scored_at"].encode()
        assert sent[0].headers is None
        assert acks.wait_for(1) == [BatchAcked(9, "events", 2, None)]

    def test_a_dead_letter_without_a_value_is_sent_as_empty_bytes(self) -> None:
        fake = FakeProducer()
        actor, _, _ = start_producer(fake)
        rejection = Rejection(0, "empty_value", "no value", "preprocess")
        actor.tell(scored([None], valid=[], predictions=[], rejections=(rejection,)))
        status(actor)
        (sent,) = fake.records()
        assert (sent.topic, sent.value, sent.key) == ("events.dlq", b"", b"key-0")

    def test_batches_that_arrive_out_of_order_are_produced_in_sequence_order(self) -> None:
        fake = FakeProducer()
        actor, _, acks = start_producer(fake)

        def batch(seq: int) -> ScoredBatch:
            return scored(
                [good(seq, seq)] * 2,
                valid=[0, 1],
                predictions=[0.5, 0.5],
                seq=seq,
                batch_id=100 + seq,
                first_offset=10 * seq,
            )

        other = scored([good(0, 0)], valid=[0], predictions=[0.5], partition=1, batch_id=7)
        actor.tell(batch(2))
        actor.tell(batch(1))
        actor.tell(other)
        assert status(actor) == ProducerStatus(
            waiting_for_order=2, batches_produced=1, unanswerable=0
        )
        assert [source_offset(s) for s in fake.records()] == [("scores", 0)]  # partition 1
        actor.tell(batch(0))
        assert status(actor) == ProducerStatus(
            waiting_for_order=0, batches_produced=4, unanswerable=0
        )
        partition0 = [
            orjson.loads(s.value)["offset"]
            for s in fake.records()
            if orjson.loads(s.value)["partition"] == 0
        ]
        assert partition0 == [0, 1, 10, 11, 20, 21]
        assert [a.batch_id for a in acks.wait_for(4)] == [7, 100, 101, 102]

    def test_batch_acked_is_told_only_after_every_delivery_resolved(self) -> None:
        fake = FakeProducer(auto_ack=False)
        actor, consumer_ref, acks = start_producer(fake)
        rejection = Rejection(1, "invalid_json", "bad", "preprocess")
        actor.tell(
            scored(
                [good(1, 1), b"{", good(2, 2)],
                valid=[0, 2],
                predictions=[0.1, 0.2],
                rejections=(rejection,),
                batch_id=3,
            )
        )
        status(actor)
        sent = fake.records()
        assert len(sent) == 3
        sent[2].future.succeed()
        sent[0].future.succeed()
        sync(consumer_ref)  # an ack told so far would now be recorded
        assert acks.items() == []
        sent[1].future.succeed()
        assert acks.wait_for(1)[0] == BatchAcked(3, "events", 0, None)

    def test_batch_produced_is_told_once_the_client_holds_the_answers_before_any_ack(
        self,
    ) -> None:
        fake = FakeProducer(auto_ack=False)
        consumer_ref, told = start_recorder()
        actor = ProducerActor.start(KAFKA, consumer_ref, client_factory=lambda _settings: fake)
        actor.tell(
            scored([good(1, 1), good(2, 2)], valid=[0, 1], predictions=[0.1, 0.2], batch_id=5)
        )
        assert told.wait_for(1) == [BatchProduced(5)]
        for sent in fake.records():
            sent.future.succeed()
        assert told.wait_for(2)[1] == BatchAcked(5, "events", 0, None)

    def test_a_failed_delivery_kills_the_producer_and_tells_only_what_was_answered(self) -> None:
        failures: list[tuple[str, BaseException]] = []
        fake = FakeProducer(auto_ack=False)
        consumer, acks = start_recorder(ignore=(BatchProduced,))
        actor = ProducerActor.start(
            KAFKA,
            consumer,
            on_failure=lambda kind, error: failures.append((kind, error)),
            client_factory=lambda _settings: fake,
        )
        actor.tell(scored([good(1, 1)] * 3, valid=[0, 1, 2], predictions=[0.1] * 3, batch_id=5))
        status(actor)
        sent = fake.records()
        sent[1].future.fail(TimeoutError("delivery timed out after 120s"))
        sent[0].future.succeed()
        sent[2].future.succeed()
        wait_until(lambda: not actor.is_alive())
        assert [kind for kind, _ in failures] == ["producer"]
        error = failures[0][1]
        assert isinstance(error, DeliveryError)
        assert str(error) == (
            "delivery failed for batch 5 of events/0 (offsets 0..2): "
            "TimeoutError: delivery timed out after 120s"
        )
        assert fake.closed is True
        sync(consumer)
        # Offset 0 was acknowledged before the failed offset 1: a rewind sends 1.. only.
        assert acks.items() == [BatchPartlyDelivered(5, "events", 0, 1)]

    def test_a_batch_with_nothing_to_send_is_acked_at_once(self) -> None:
        fake = FakeProducer(auto_ack=False)
        actor, _, acks = start_producer(fake)
        actor.tell(scored([b"{}", b"{}"], valid=[], predictions=[], dropped=(0, 1), batch_id=8))
        assert acks.wait_for(1) == [BatchAcked(8, "events", 0, None)]
        assert fake.records() == []
        assert status(actor) == ProducerStatus(
            waiting_for_order=0, batches_produced=1, unanswerable=0
        )

    def test_delivered_batches_are_counted_in_the_metrics(self) -> None:
        registry = CollectorRegistry()
        metrics = MetricsActor.start(MetricsSettings(enabled=False), registry)
        fake = FakeProducer()
        actor, _, acks = start_producer(fake, metrics=metrics)
        actor.tell(
            scored(
                [good(1, 1), b"{", good(2, 2), b"[]", b"x"],
                valid=[0, 2],
                predictions=[0.1, 0.2],
                rejections=(
                    Rejection(1, "invalid_json", "bad", "preprocess"),
                    Rejection(3, "not_object", "list", "preprocess"),
                ),
                dropped=(4,),
            )
        )
        acks.wait_for(1)
        status(actor)  # deliveries settle inside the send loop, so BatchDelivered is told
        metrics.ask(GetStatus(), timeout=ASK_S)
        value = registry.get_sample_value
        assert value("streamer_records_produced_total") == 2.0
        assert value("streamer_dead_letters_total", {"reason": "invalid_json"}) == 1.0
        assert value("streamer_dead_letters_total", {"reason": "not_object"}) == 1.0
        assert value("streamer_dead_letters_total", {"reason": "model_error"}) == 0.0
        assert value("streamer_records_dropped_total") == 1.0
        assert value("streamer_batches_total") == 1.0
        assert value("streamer_batch_size_records_sum") == 5.0
        assert value("streamer_stage_duration_seconds_count", {"stage": "produce"}) == 1.0

    def test_flush_reaches_the_client_and_stop_closes_it(self) -> None:
        fake = FakeProducer()
        actor, _, _ = start_producer(fake)
        actor.ask(Flush(2.5), timeout=ASK_S)
        assert fake.flushes == [2.5]
        actor.stop(timeout=ASK_S)
        assert fake.closed is True


def test_prepare_then_score_equals_the_offline_reference(demo_model: LinearModel) -> None:
    """The preprocessor and model stages together agree with predict_one row by row."""
    values = [
        orjson.dumps(
            dict(zip(demo_model.spec.names, [float(i), 3.5, i % 4, 700 + i, 0.3], strict=True))
        )
        for i in range(50)
    ]
    prepared = prepare_batch(values, demo_model.spec)
    scores = demo_model.predict(prepared.features)
    for i, row in enumerate(prepared.features.tolist()):
        assert abs(scores[i] - demo_model.predict_one(row)) <= 1e-12

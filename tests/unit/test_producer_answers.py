"""The producer actor gives every record exactly one answer when the client refuses some."""

from __future__ import annotations

import dataclasses

import orjson
import pykka
import pytest
from prometheus_client import CollectorRegistry

from streamer.actors.metrics import MetricsActor
from streamer.actors.producer import ProducerActor
from streamer.errors import UnanswerableRecordError
from streamer.messages import BatchAcked, BatchProduced, GetStatus, Rejection
from streamer.settings import MetricsSettings
from tests.unit.fakes import FakeProducer, Mailbox, Sent, start_recorder, sync, wait_until
from tests.unit.test_stage_actors import ASK_S, KAFKA, good, scored

LIMITED = dataclasses.replace(KAFKA, max_request_bytes=64 * 1024, dead_letter_prefix_bytes=100)


def start(
    fake: FakeProducer,
    *,
    on_unanswerable: str = "stop",
    metrics: pykka.ActorRef | None = None,
) -> tuple[pykka.ActorRef, pykka.ActorRef, list[tuple[str, BaseException]], Mailbox]:
    failures: list[tuple[str, BaseException]] = []
    consumer, acks = start_recorder(ignore=(BatchProduced,))
    actor = ProducerActor.start(
        LIMITED,
        consumer,
        metrics=metrics,
        on_failure=lambda kind, error: failures.append((kind, error)),
        client_factory=lambda _settings: fake,
        on_unanswerable=on_unanswerable,
    )
    return actor, consumer, failures, acks


def is_dead_letter(sent: Sent) -> bool:
    return sent.topic == "events.dlq"


class TestRefusedAnswers:
    def test_a_prediction_the_client_refuses_becomes_a_produce_rejected_dead_letter(self) -> None:
        registry = CollectorRegistry()
        metrics = MetricsActor.start(MetricsSettings(enabled=False), registry)
        # The prediction of offset 1 (its key makes it large) is refused by the client.
        fake = FakeProducer(refuse_when=lambda s: s.topic == "scores" and b"key-1" in s.value)
        actor, _, failures, acks = start(fake, metrics=metrics)

        actor.tell(scored([good(1, 1)] * 3, valid=[0, 1, 2], predictions=[0.1, 0.2, 0.3]))

        assert acks.wait_for(1) == [BatchAcked(0, "events", 0, None)]
        sent = fake.records()
        assert [orjson.loads(s.value)["offset"] for s in sent if s.topic == "scores"] == [0, 2]
        (letter,) = [s for s in sent if is_dead_letter(s)]
        assert letter.value == good(1, 1)
        assert letter.key == b"key-1"
        assert letter.header_map["streamer.reason"] == b"produce_rejected"
        assert letter.header_map["streamer.stage"] == b"produce"
        assert letter.header_map["streamer.source.offset"] == b"1"
        assert b"RecordRejectedError" in letter.header_map["streamer.error"]
        assert failures == []
        assert actor.is_alive()
        actor.ask(GetStatus(), timeout=ASK_S)
        metrics.ask(GetStatus(), timeout=ASK_S)
        value = registry.get_sample_value
        assert value("streamer_records_produced_total") == 2.0
        assert value("streamer_dead_letters_total", {"reason": "produce_rejected"}) == 1.0
        metrics.stop()

    def test_an_oversized_value_is_dead_lettered_cut_to_fit_and_never_refused(self) -> None:
        limit = LIMITED.max_request_bytes
        fake = FakeProducer(refuse_when=lambda s: len(s.value) + len(s.key or b"") > limit)
        actor, _, failures, acks = start(fake)
        big = b'{"a": "' + b"x" * 200_000 + b'"}'
        rejection = Rejection(1, "oversized", "value is 200009 bytes", "preprocess")

        actor.tell(scored([good(1, 1), big], valid=[0], predictions=[0.5], rejections=(rejection,)))

        acks.wait_for(1)
        assert fake.refused == []
        (letter,) = [s for s in fake.records() if is_dead_letter(s)]
        assert letter.value == big[:100]
        assert letter.header_map["streamer.reason"] == b"oversized"
        assert letter.header_map["streamer.value.size"] == str(len(big)).encode()
        assert letter.header_map["streamer.value.truncated"] == b"true"
        assert failures == []

    def test_a_refused_dead_letter_is_sent_again_as_headers_only(self) -> None:
        fake = FakeProducer(refuse_when=lambda s: is_dead_letter(s) and s.value != b"")
        actor, _, failures, acks = start(fake)
        rejection = Rejection(0, "invalid_json", "value is not valid JSON", "preprocess")

        actor.tell(scored([b"nope"], valid=[], predictions=[], rejections=(rejection,)))

        acks.wait_for(1)
        (letter,) = fake.records()
        assert (letter.topic, letter.key, letter.value) == ("events.dlq", None, b"")
        assert letter.header_map["streamer.reason"] == b"invalid_json"
        assert letter.header_map["streamer.value.size"] == b"4"
        assert letter.header_map["streamer.key.truncated"] == b"true"
        assert failures == []

    def test_an_unanswerable_record_stops_the_pipeline_naming_its_offset_by_default(self) -> None:
        fake = FakeProducer(refuse_when=is_dead_letter)
        actor, consumer, failures, acks = start(fake)
        rejection = Rejection(1, "invalid_json", "bad", "preprocess")

        actor.tell(
            scored([good(1, 1), b"{"], valid=[0], predictions=[0.5], rejections=(rejection,))
        )

        wait_until(lambda: not actor.is_alive())
        ((kind, error),) = failures
        assert kind == "producer"
        assert isinstance(error, UnanswerableRecordError)
        assert not error.restartable
        assert "record events/0@1 is unanswerable" in str(error)
        assert "supervision.on_unanswerable" in str(error)
        sync(consumer)
        assert acks.items() == []

    @pytest.mark.parametrize("refused_prediction", [False, True])
    def test_with_skip_an_unanswerable_record_is_counted_and_the_batch_acked(
        self, refused_prediction: bool
    ) -> None:
        registry = CollectorRegistry()
        metrics = MetricsActor.start(MetricsSettings(enabled=False), registry)

        def refuse(sent: Sent) -> bool:
            return is_dead_letter(sent) or (refused_prediction and b'"offset":0' in sent.value)

        fake = FakeProducer(refuse_when=refuse)
        actor, _, failures, acks = start(fake, on_unanswerable="skip", metrics=metrics)
        rejection = Rejection(1, "invalid_json", "bad", "preprocess")

        actor.tell(
            scored([good(1, 1), b"{"], valid=[0], predictions=[0.5], rejections=(rejection,))
        )

        assert acks.wait_for(1) == [BatchAcked(0, "events", 0, None)]
        unanswerable = 2 if refused_prediction else 1
        assert actor.ask(GetStatus(), timeout=ASK_S).unanswerable == unanswerable
        metrics.ask(GetStatus(), timeout=ASK_S)
        value = registry.get_sample_value
        assert value("streamer_records_unanswerable_total") == unanswerable
        assert value("streamer_records_produced_total") == (0 if refused_prediction else 1)
        assert value("streamer_dead_letters_total", {"reason": "invalid_json"}) == 0.0
        assert failures == []
        metrics.stop()

"""The demo generator sends through the ``kafka.client`` backend."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streamer import generator
from streamer.clients.base import Backend
from streamer.core.demo_data import make_record
from streamer.settings import KafkaSettings
from tests.unit.fakes import FakeProducer


@pytest.fixture
def chosen() -> list[str]:
    return []


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch, chosen: list[str]) -> FakeProducer:
    fake = FakeProducer()

    def backend(name: str) -> Backend:
        chosen.append(name)
        unused: Any = None
        return Backend(name, consumer=unused, producer=lambda _k: fake, ensure_topics=unused)

    monkeypatch.setattr(generator, "backend", backend)
    return fake


class TestProduceDemo:
    def test_it_sends_count_records_through_the_chosen_backend_and_closes_it(
        self, producer: FakeProducer, chosen: list[str]
    ) -> None:
        kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
        produced = [0]
        sent = generator.produce_demo(
            kafka, "tx", rate=0, count=12_000, bad_ratio=0.0, seed=3, produced=produced
        )
        assert sent == produced[0] == len(producer.sent) == 12_000
        assert chosen == [kafka.client]
        assert {s.topic for s in producer.sent} == {"tx"}
        assert producer.flushes
        assert producer.closed

    def test_the_records_are_the_seeded_demo_records_in_order(self, producer: FakeProducer) -> None:
        generator.produce_demo(KafkaSettings(), "tx", rate=0, count=5, bad_ratio=0.01, seed=7)
        rng = random.Random(7)
        expected = [make_record(rng, bad_ratio=0.01) for _ in range(5)]
        # The same cards in the same order (the values carry the wall-clock event time).
        assert [s.key for s in producer.sent] == [key for key, _value in expected]

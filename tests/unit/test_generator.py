"""The demo generator sends through the ``kafka.client`` backend."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import orjson
import pytest

from streamer import generator
from streamer.clients.base import Backend
from streamer.core.demo_data import DemoClock, LabelSchedule, make_record, make_transaction
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


class TestLabels:
    def test_a_transaction_is_the_record_make_record_makes_with_its_id_and_truth(self) -> None:
        rng_a, rng_b = random.Random(5), random.Random(5)
        clock_a, clock_b = DemoClock(start_ms=0), DemoClock(start_ms=0)
        made = [make_transaction(rng_a, bad_ratio=0.2, clock=clock_a) for _ in range(2000)]
        records = [make_record(rng_b, bad_ratio=0.2, clock=clock_b) for _ in range(2000)]
        assert [m.key for m in made] == [key for key, _value in records]
        for transaction in made:
            if transaction.fraudulent is None:
                assert transaction.transaction_id is None
                continue
            event = orjson.loads(transaction.value)
            assert event["transaction_id"] == transaction.transaction_id
            # With the clock, the fraud is the compromised cards' bursts.
            assert transaction.fraudulent == event["card_id"].startswith("card-9")
        assert {m.fraudulent for m in made} == {True, False, None}

    def test_the_schedule_labels_a_sample_after_its_delay_with_the_truth(self) -> None:
        schedule = LabelSchedule(random.Random(1), share=0.25, delay_s=(2.0, 5.0))
        rng = random.Random(2)
        made = [make_transaction(rng, bad_ratio=0.05) for _ in range(4000)]
        for index, transaction in enumerate(made):
            schedule.sent(transaction, now_s=1000.0 + index / 1000)  # 4 s of transactions
        by_id = {m.transaction_id: m for m in made if m.transaction_id is not None}
        assert schedule.due(1001.99) == []  # nothing before 2 s
        early = schedule.due(1005.0)
        rest = schedule.due(float("inf"))
        assert len(schedule) == 0
        labels = [(key, orjson.loads(value)) for key, value in early + rest]
        assert 900 < len(labels) < 1100  # a quarter of the well-formed ones
        times = [label["labelled_at"] for _key, label in labels]
        assert times == sorted(times)  # in the order they come due
        for key, label in labels:
            transaction = by_id[label["transaction_id"]]
            assert key == transaction.key  # keyed like it: the same partition
            assert label["label"] == int(bool(transaction.fraudulent))
        sent_at = {m.transaction_id: 1000.0 + i / 1000 for i, m in enumerate(made)}
        for _key, label in labels:
            delay = label["labelled_at"] / 1000 - sent_at[label["transaction_id"]]
            assert 2.0 - 1e-3 <= delay <= 5.0 + 1e-3
        for _key, label in labels[: len(early)]:
            assert label["labelled_at"] <= 1_005_000

    def test_labels_go_to_their_topic_and_the_transactions_stay_the_seeded_ones(
        self, producer: FakeProducer
    ) -> None:
        schedule = LabelSchedule(random.Random(4), share=0.5, delay_s=(0.01, 0.02))
        labels = generator.DemoLabels("labels", schedule)
        sent = generator.produce_demo(
            KafkaSettings(), "tx", rate=0, count=3000, bad_ratio=0.01, seed=7, labels=labels
        )
        transactions = [s for s in producer.sent if s.topic == "tx"]
        rng = random.Random(7)
        expected = [make_record(rng, bad_ratio=0.01) for _ in range(3000)]
        assert [s.key for s in transactions] == [key for key, _value in expected]
        sent_labels = [s for s in producer.sent if s.topic == "labels"]
        assert sent == 3000
        assert 1300 < len(sent_labels) == labels.sent < 1700
        keys = {
            orjson.loads(s.value)["transaction_id"]: s.key
            for s in transactions
            if s.value[:1] == b"{" and b"transaction_id" in s.value
        }
        for label in sent_labels:
            assert keys[orjson.loads(label.value)["transaction_id"]] == label.key

    def test_the_last_labels_go_when_due_not_at_once(self, producer: FakeProducer) -> None:
        """The pipeline gets as long to score the last transactions as any other."""
        schedule = LabelSchedule(random.Random(5), share=1.0, delay_s=(0.3, 0.4))
        labels = generator.DemoLabels("labels", schedule)
        started = time.monotonic()
        generator.produce_demo(
            KafkaSettings(), "tx", rate=0, count=50, bad_ratio=0.0, labels=labels
        )
        assert time.monotonic() - started >= 0.3
        assert len(schedule) == 0
        assert len([s for s in producer.sent if s.topic == "labels"]) == labels.sent == 50

    def test_released_labels_go_at_once_after_the_last_transaction(
        self, producer: FakeProducer
    ) -> None:
        schedule = LabelSchedule(random.Random(6), share=1.0, delay_s=(600.0, 700.0))
        labels = generator.DemoLabels("labels", schedule)
        thread = threading.Thread(
            target=generator.produce_demo,
            args=(KafkaSettings(), "tx"),
            kwargs={"rate": 0, "count": 40, "bad_ratio": 0.0, "labels": labels},
        )
        thread.start()
        assert labels.transactions_done.wait(10)
        assert [s.topic for s in producer.sent] == ["tx"] * 40  # the labels wait
        labels.release.set()
        thread.join(10)
        assert not thread.is_alive()
        assert [s.topic for s in producer.sent].count("labels") == labels.sent == 40

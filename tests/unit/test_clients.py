"""The client backend interface: choosing a backend, and counting a batch's deliveries."""

from __future__ import annotations

import sys

import pytest

from streamer.clients import OutputGroup, backend, send_batch
from streamer.clients.base import BatchDelivery, latest_end
from streamer.clients.kafka_python import _BatchWatch
from streamer.errors import ConfigError
from streamer.settings import build_settings

from .fakes import FakeFuture, FakeProducer


class TestChoosingABackend:
    def test_kafka_python_is_the_default(self) -> None:
        settings = build_settings(
            {"kafka": {"input_topic": "in", "output_topic": "out"}}, environ={}
        )

        assert settings.kafka.client == "kafka-python"
        assert backend(settings.kafka.client).name == "kafka-python"

    def test_an_unknown_client_is_a_config_error_naming_the_choices(self) -> None:
        with pytest.raises(ConfigError, match=r"kafka\.client must be one of 'kafka-python'"):
            build_settings({"kafka": {"client": "aiokafka"}}, environ={})
        with pytest.raises(ConfigError, match=r"kafka\.client"):
            backend("aiokafka")

    def test_a_missing_library_says_which_extra_installs_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "confluent_kafka", None)
        monkeypatch.delitem(sys.modules, "streamer.clients.confluent", raising=False)

        with pytest.raises(ConfigError, match=r"pip install 'streamer\[confluent\]'"):
            backend("confluent")


class TestBatchDelivery:
    def test_it_fires_once_after_every_send_and_the_arm(self) -> None:
        fired: list[str | None] = []
        delivery = BatchDelivery(2, fired.append)

        delivery.ok()
        delivery.ok()
        assert fired == [], "it must not fire before arm(): more sends may follow"
        delivery.arm()

        assert fired == [None]

    def test_the_first_failure_is_reported(self) -> None:
        fired: list[str | None] = []
        delivery = BatchDelivery(2, fired.append)
        delivery.arm()

        delivery.failed(TimeoutError("expired"))
        delivery.failed(RuntimeError("later"))

        assert fired == ["TimeoutError: expired"]


class TestSendBatchThroughSend:
    def test_groups_are_sent_in_order_with_their_keys_and_headers(self) -> None:
        producer = FakeProducer()
        fired: list[str | None] = []
        groups = [
            OutputGroup("scores", [b"a", b"b"], [b"k1", None]),
            OutputGroup("dlq", [b"c"], [b"k3"], [[("streamer.reason", b"x")]]),
        ]

        send_batch(producer, groups, fired.append)

        assert [(s.topic, s.value, s.key, s.headers) for s in producer.records()] == [
            ("scores", b"a", b"k1", None),
            ("scores", b"b", None, None),
            ("dlq", b"c", b"k3", [("streamer.reason", b"x")]),
        ]
        assert fired == [None]

    def test_it_waits_for_every_acknowledgement(self) -> None:
        producer = FakeProducer(auto_ack=False)
        fired: list[str | None] = []
        send_batch(producer, [OutputGroup("scores", [b"a", b"b"], [None, None])], fired.append)

        producer.records()[1].future.succeed()
        assert fired == []
        producer.records()[0].future.fail(OSError("broker gone"))

        assert fired == ["OSError: broker gone"]

    def test_an_empty_batch_is_done_at_once(self) -> None:
        fired: list[str | None] = []

        send_batch(FakeProducer(), [], fired.append)

        assert fired == [None]


class _Future(FakeFuture):
    """A FakeFuture with kafka-python's ``is_done`` and ``exception`` attributes."""

    @property
    def is_done(self) -> bool:
        return self.done


class TestBatchWatch:
    def test_it_fires_only_when_the_last_pending_future_settles_in_any_order(self) -> None:
        futures = [_Future() for _ in range(5)]
        fired: list[str | None] = []
        _BatchWatch(list(futures), fired.append).advance()

        for index in (3, 4, 1, 2):
            futures[index].succeed()
            assert fired == []
        futures[0].succeed()

        assert fired == [None]

    def test_a_failed_record_fails_the_batch(self) -> None:
        futures = [_Future() for _ in range(3)]
        fired: list[str | None] = []
        _BatchWatch(list(futures), fired.append).advance()

        futures[1].fail(TimeoutError("delivery timeout"))
        futures[0].succeed()
        futures[2].succeed()

        assert fired == ["TimeoutError: delivery timeout"]

    def test_futures_done_before_the_watch_starts_count(self) -> None:
        futures = [_Future() for _ in range(2)]
        for future in futures:
            future.succeed()
        fired: list[str | None] = []

        _BatchWatch(list(futures), fired.append).advance()

        assert fired == [None]


class TestLatestEnd:
    @pytest.mark.parametrize(
        ("fetched", "refreshed", "end"),
        [(None, None, None), (120, None, 120), (None, 80, 80), (120, 80, 120), (120, 500, 500)],
    )
    def test_the_newer_of_the_fetched_and_the_refreshed_end_offset(
        self, fetched: int | None, refreshed: int | None, end: int | None
    ) -> None:
        assert latest_end(fetched, refreshed) == end

"""The client backend interface: choosing a backend, and counting a batch's deliveries."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import kafka.errors as kafka_errors
import pytest

from streamer.clients import OutputGroup, backend, send_batch
from streamer.clients import kafka_python as kafka_python_backend
from streamer.clients.base import BatchDelivery, RecordRejectedError, SendFailure, latest_end
from streamer.clients.kafka_python import _BatchWatch
from streamer.errors import ConfigError
from streamer.settings import build_settings
from tests.unit.fakes import FakeFuture, FakeProducer


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
        fired: list[Sequence[SendFailure]] = []
        delivery = BatchDelivery(2, fired.append)

        delivery.ok()
        delivery.ok()
        assert fired == [], "it must not fire before arm(): more sends may follow"
        delivery.arm()

        assert fired == [[]]

    def test_every_failure_is_reported_with_its_index_in_order(self) -> None:
        fired: list[Sequence[SendFailure]] = []
        delivery = BatchDelivery(3, fired.append)
        delivery.arm()

        delivery.failed(2, RecordRejectedError("too large"))
        delivery.ok()
        delivery.failed(0, TimeoutError("expired"))

        assert fired == [
            [
                SendFailure(0, "TimeoutError: expired", record_level=False),
                SendFailure(2, "RecordRejectedError: too large", record_level=True),
            ]
        ]


class TestSendBatchThroughSend:
    def test_groups_are_sent_in_order_with_their_keys_and_headers(self) -> None:
        producer = FakeProducer()
        fired: list[Sequence[SendFailure]] = []
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
        assert fired == [[]]

    def test_it_waits_for_every_acknowledgement(self) -> None:
        producer = FakeProducer(auto_ack=False)
        fired: list[Sequence[SendFailure]] = []
        send_batch(producer, [OutputGroup("scores", [b"a", b"b"], [None, None])], fired.append)

        producer.records()[1].future.succeed()
        assert fired == []
        producer.records()[0].future.fail(OSError("broker gone"))

        assert fired == [[SendFailure(0, "OSError: broker gone", record_level=False)]]

    def test_a_record_refused_by_send_itself_is_a_record_failure_and_the_rest_is_sent(
        self,
    ) -> None:
        producer = FakeProducer(refuse_when=lambda sent: sent.value == b"huge")
        fired: list[Sequence[SendFailure]] = []

        send_batch(
            producer, [OutputGroup("scores", [b"a", b"huge", b"c"], [None] * 3)], fired.append
        )

        assert [s.value for s in producer.records()] == [b"a", b"c"]
        assert len(fired) == 1
        assert [(f.index, f.record_level) for f in fired[0]] == [(1, True)]

    def test_an_empty_batch_is_done_at_once(self) -> None:
        fired: list[Sequence[SendFailure]] = []

        send_batch(FakeProducer(), [], fired.append)

        assert fired == [[]]


class _Future(FakeFuture):
    """A FakeFuture with kafka-python's ``is_done`` and ``exception`` attributes."""

    @property
    def is_done(self) -> bool:
        return self.done


class TestBatchWatch:
    def test_it_fires_only_when_the_last_pending_future_settles_in_any_order(self) -> None:
        futures = [_Future() for _ in range(5)]
        fired: list[Sequence[SendFailure]] = []
        _BatchWatch(list(futures), [], fired.append).advance()

        for index in (3, 4, 1, 2):
            futures[index].succeed()
            assert fired == []
        futures[0].succeed()

        assert fired == [[]]

    def test_each_failed_record_is_reported_and_classified_by_its_error_code(self) -> None:
        futures = [_Future() for _ in range(3)]
        fired: list[Sequence[SendFailure]] = []
        _BatchWatch(list(futures), [], fired.append).advance()

        futures[2].fail(kafka_errors.MessageSizeTooLargeError("1.5 MB"))
        futures[1].fail(kafka_errors.KafkaTimeoutError("delivery timeout"))
        futures[0].succeed()

        assert len(fired) == 1
        assert [(f.index, f.record_level) for f in fired[0]] == [(1, False), (2, True)]
        assert "MessageSizeTooLargeError" in fired[0][1].error

    def test_records_refused_by_send_count_as_done(self) -> None:
        futures = [_Future(), None, _Future()]
        refused = [SendFailure(1, "MessageSizeTooLargeError: big", record_level=True)]
        fired: list[Sequence[SendFailure]] = []
        _BatchWatch(futures, refused, fired.append).advance()

        futures[0].succeed()  # type: ignore[union-attr]
        futures[2].succeed()  # type: ignore[union-attr]

        assert fired == [refused]

    def test_futures_done_before_the_watch_starts_count(self) -> None:
        futures = [_Future() for _ in range(2)]
        for future in futures:
            future.succeed()
        fired: list[Sequence[SendFailure]] = []

        _BatchWatch(list(futures), [], fired.append).advance()

        assert fired == [[]]


class TestRecordLevelErrors:
    """A record-level refusal is told apart from a connection failure by its error code."""

    @pytest.mark.parametrize(
        ("error", "record_level"),
        [
            (kafka_errors.MessageSizeTooLargeError("big"), True),
            (kafka_errors.RecordListTooLargeError(), True),
            (kafka_errors.InvalidTimestampError(), True),
            (kafka_errors.InvalidRecordError(), True),
            (TypeError("key must be bytes"), True),
            (kafka_errors.KafkaTimeoutError("expired"), False),
            (kafka_errors.NotLeaderForPartitionError(), False),
            (kafka_errors.TopicAuthorizationFailedError(), False),
            (kafka_errors.UnknownProducerIdError(), False),
            (OSError("connection reset"), False),
        ],
    )
    def test_kafka_python(self, error: BaseException, record_level: bool) -> None:
        assert kafka_python_backend.is_record_level(error) is record_level

    @pytest.mark.parametrize(
        ("code", "record_level"),
        [
            ("MSG_SIZE_TOO_LARGE", True),
            ("RECORD_LIST_TOO_LARGE", True),
            ("INVALID_TIMESTAMP", True),
            ("INVALID_RECORD", True),
            ("_INVALID_ARG", True),
            ("_MSG_TIMED_OUT", False),
            ("_TRANSPORT", False),
            ("NOT_LEADER_FOR_PARTITION", False),
            ("TOPIC_AUTHORIZATION_FAILED", False),
        ],
    )
    def test_confluent(self, code: str, record_level: bool) -> None:
        confluent_kafka = pytest.importorskip("confluent_kafka")
        from streamer.clients import confluent as confluent_backend

        error = confluent_kafka.KafkaError(getattr(confluent_kafka.KafkaError, code))
        assert confluent_backend.is_record_level(error) is record_level
        assert confluent_backend.is_record_level(confluent_kafka.KafkaException(error)) is (
            record_level
        )

    def test_confluent_fatal_errors_are_never_record_level(self) -> None:
        confluent_kafka = pytest.importorskip("confluent_kafka")
        from streamer.clients import confluent as confluent_backend

        error = confluent_kafka.KafkaError(confluent_kafka.KafkaError.INVALID_RECORD, fatal=True)
        assert not confluent_backend.is_record_level(error)


class TestLatestEnd:
    @pytest.mark.parametrize(
        ("fetched", "refreshed", "end"),
        [(None, None, None), (120, None, 120), (None, 80, 80), (120, 80, 120), (120, 500, 500)],
    )
    def test_the_newer_of_the_fetched_and_the_refreshed_end_offset(
        self, fetched: int | None, refreshed: int | None, end: int | None
    ) -> None:
        assert latest_end(fetched, refreshed) == end


class _Messages:
    """A confluent consumer whose consume() returns these messages once."""

    def __init__(self, messages: list[object]) -> None:
        self.messages = messages

    def consume(self, count: int, timeout: float) -> list[object]:
        taken, self.messages = self.messages[:count], self.messages[count:]
        return taken


class TestConfluentConsume:
    def test_records_of_two_topics_with_the_same_partition_stay_apart_in_order(self) -> None:
        # The input and the labels topic (co-partitioned) in one poll: a label must never be
        # grouped as an input record of the same partition number, nor the reverse.
        confluent_kafka = pytest.importorskip("confluent_kafka")
        from streamer.clients.confluent import _consume

        def message(topic: str, partition: int, offset: int) -> object:
            value = f"{topic}-{offset}".encode()
            return confluent_kafka.Message(
                topic=topic, partition=partition, offset=offset, value=value, timestamp=(1, 7)
            )

        polled = _consume(
            _Messages(  # type: ignore[arg-type]
                [
                    message("in", 3, 10),
                    message("in", 3, 11),
                    message("labels", 3, 0),
                    message("labels", 3, 1),
                    message("in", 3, 12),
                    message("in", 1, 4),
                    message("labels", 1, 0),
                ]
            ),
            100,
            1.0,
        )

        assert {tp: columns.offsets for tp, columns in polled.items()} == {
            ("in", 3): [10, 11, 12],
            ("labels", 3): [0, 1],
            ("in", 1): [4],
            ("labels", 1): [0],
        }
        assert polled[("labels", 3)].values == [b"labels-0", b"labels-1"]
        assert polled[("in", 3)].timestamps == [7, 7, 7]


class _StuckKafkaProducer:
    """kafka-python's producer when the broker acknowledges nothing within the timeout."""

    def flush(self, timeout: float) -> None:
        msg = f"Timeout after waiting for {timeout} secs."
        raise kafka_errors.KafkaTimeoutError(msg)


class _AcknowledgingKafkaProducer:
    def flush(self, timeout: float) -> None:
        pass


@pytest.mark.parametrize(
    ("client", "flushed"), [(_StuckKafkaProducer, False), (_AcknowledgingKafkaProducer, True)]
)
def test_a_kafka_python_flush_says_whether_everything_was_acknowledged(
    client: type, flushed: bool
) -> None:
    producer = kafka_python_backend.Producer.__new__(kafka_python_backend.Producer)
    producer._producer = client()  # type: ignore[assignment]
    assert producer.flush(0.01) is flushed

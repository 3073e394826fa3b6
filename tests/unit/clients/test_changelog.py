"""The changelog reading and checking that both backends share (no broker: fetches are scripted)."""

from __future__ import annotations

import time

import pytest

from streamer.clients import backend
from streamer.clients.changelog import (
    ChangelogRecord,
    check_changelog,
    read_range,
    wait_for_watermark,
)
from streamer.errors import BrokerError, ConfigError

Poll = tuple[list[ChangelogRecord], int | None]


class Scripted:
    """A fetch that answers the given polls in turn, then nothing; counts its calls."""

    def __init__(self, polls: list[Poll], delay_s: float = 0.0) -> None:
        self.polls = list(polls)
        self.calls = 0
        self.delay_s = delay_s

    def __call__(self) -> Poll:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.polls.pop(0) if self.polls else ([], None)


def record(offset: int, value: bytes | None = b"v") -> ChangelogRecord:
    return (offset, b"k%d" % offset, value)


def read_all(polls: list[Poll], start: int, end: int) -> tuple[list[list[ChangelogRecord]], int]:
    """The chunks read from ``polls`` and how many fetches it took."""
    fetch = Scripted(polls)
    chunks = list(read_range(fetch, start, end, idle_timeout_s=5.0, where=lambda: "cl/0"))
    return chunks, fetch.calls


class TestReadRange:
    def test_chunks_come_as_fetched_and_it_stops_at_the_record_before_the_end(self) -> None:
        polls: list[Poll] = [([record(0), record(1, None)], 2), ([record(2)], 3), ([record(3)], 4)]

        chunks, calls = read_all(polls, 0, 3)

        assert chunks == [[record(0), record(1, None)], [record(2)]]
        assert calls == 2, "the record at end - 1 ends the read: no fetch after it"

    def test_records_at_or_past_the_end_are_left_out(self) -> None:
        polls: list[Poll] = [([record(5), record(6), record(7), record(8)], 9)]

        chunks, _ = read_all(polls, 5, 7)

        assert chunks == [[record(5), record(6)]]

    def test_gaps_left_by_compaction_end_at_the_position_not_at_a_count(self) -> None:
        # Offsets 1, 2 and 4 were compacted away; the last one before the end is 3.
        polls: list[Poll] = [([record(0)], None), ([record(3)], 4), ([], 5)]

        chunks, calls = read_all(polls, 0, 5)

        assert chunks == [[record(0)], [record(3)]]
        assert calls == 3, "it ends when the position (or an end event) reaches the end"

    def test_an_end_event_before_any_record_ends_an_empty_range(self) -> None:
        chunks, calls = read_all([([], 10)], 7, 10)

        assert chunks == []
        assert calls == 1

    def test_an_empty_range_fetches_nothing(self) -> None:
        chunks, calls = read_all([([record(0)], 1)], 4, 4)

        assert (chunks, calls) == ([], 0)

    def test_a_read_that_gets_nothing_raises_after_the_idle_timeout(self) -> None:
        fetch = Scripted([([record(0)], 1)])

        with pytest.raises(
            BrokerError, match=r"stalled: nothing arrived .* at cl/0, before offset 5"
        ):
            list(read_range(fetch, 0, 5, idle_timeout_s=0.05, where=lambda: "cl/0"))
        assert fetch.calls > 2, "it polled again until the deadline"

    def test_progress_moves_the_deadline(self) -> None:
        # One record per fetch, each within the timeout, for longer than the timeout in all.
        fetch = Scripted([([record(i)], None) for i in range(15)], delay_s=0.02)

        chunks = list(read_range(fetch, 0, 15, idle_timeout_s=0.2, where=lambda: "cl/0"))

        assert [chunk[0][0] for chunk in chunks] == list(range(15))


class TestWaitForWatermark:
    def test_the_first_answer_is_returned(self) -> None:
        answers = [None, None, 0]

        assert wait_for_watermark(lambda: answers.pop(0), 5.0, lambda: "cl/1") == 0

    def test_no_answer_raises_within_the_timeout(self) -> None:
        with pytest.raises(BrokerError, match=r"no fetch of cl/1 answered within 0.05s"):
            wait_for_watermark(lambda: None, 0.05, lambda: "cl/1")


class TestCheckChangelog:
    def test_as_many_or_more_partitions_and_compact_pass(self) -> None:
        for partitions in (4, 6):
            check_changelog(
                "cl", "in", partitions=partitions, input_partitions=4, cleanup_policy="compact"
            )

    def test_an_unreported_cleanup_policy_is_not_checked(self) -> None:
        check_changelog("cl", "in", partitions=4, input_partitions=4, cleanup_policy=None)

    def test_fewer_partitions_than_the_input_name_the_topic_and_the_fix(self) -> None:
        with pytest.raises(ConfigError) as raised:
            check_changelog("cl", "in", partitions=2, input_partitions=4, cleanup_policy="compact")

        message = str(raised.value)
        assert message.startswith("config error: state.changelog_topic: topic 'cl' has 2 ")
        assert "'in' has 4" in message
        assert "--partitions 4" in message
        assert "\n" not in message

    def test_the_ledger_changelog_names_its_own_setting(self) -> None:
        with pytest.raises(ConfigError) as raised:
            check_changelog(
                "cl",
                "in",
                partitions=4,
                input_partitions=4,
                cleanup_policy="delete",
                setting="labels.ledger_topic",
            )
        message = str(raised.value)
        assert message.startswith("config error: labels.ledger_topic: topic 'cl' has cleanup")
        assert message.endswith("or set labels.ledger_topic to a new topic")

    @pytest.mark.parametrize("policy", ["delete", "compact,delete", "delete, compact"])
    def test_a_policy_that_deletes_is_refused(self, policy: str) -> None:
        with pytest.raises(ConfigError, match=rf"topic 'cl' has cleanup\.policy={policy}, .*"):
            check_changelog("cl", "in", partitions=4, input_partitions=4, cleanup_policy=policy)


@pytest.mark.parametrize("name", ["kafka-python", "confluent"])
def test_each_backend_has_a_changelog_reader_and_ensure_changelog(name: str) -> None:
    pytest.importorskip("confluent_kafka" if name == "confluent" else "kafka")

    chosen = backend(name)

    assert chosen.changelog_reader is not None
    assert chosen.changelog_reader.__name__ == "ChangelogReader"
    assert chosen.ensure_changelog is not None
    assert chosen.ensure_changelog.__name__ == "ensure_changelog"
    assert chosen.partition_counts is not None
    assert chosen.partition_counts.__name__ == "partition_counts"

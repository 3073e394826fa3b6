"""A replay commits a dead letter only once the broker acknowledged its copy in the input."""

from __future__ import annotations

import types

import pytest

import streamer.replay
from streamer.core.records import TP, RecordColumns
from streamer.errors import BrokerError
from streamer.replay import replay_dead_letters
from streamer.settings import build_settings
from tests.unit.fakes import FakeProducer

SETTINGS = build_settings(
    {"kafka": {"input_topic": "events", "output_topic": "scores"}}, environ={}
)
DLQ: TP = (SETTINGS.kafka.dead_letter_topic_name, 0)


class _DeadLetters:
    """A dead-letter topic of three records, none committed yet."""

    def __init__(self) -> None:
        self.partitions = [DLQ]
        self.commits: list[dict[TP, int]] = []
        self._polled = False

    def end_offsets(self, timeout_s: float) -> dict[TP, int]:
        return {DLQ: 3}

    def start_at_committed(self, timeout_s: float) -> dict[TP, int]:
        return {DLQ: 0}

    def poll(
        self, timeout_s: float
    ) -> dict[TP, tuple[RecordColumns, list[list[tuple[str, bytes]]]]]:
        if self._polled:
            return {}
        self._polled = True
        records = RecordColumns([0, 1, 2], [b"k0", b"k1", b"k2"], [b"0", b"1", b"2"], [0, 0, 0])
        return {DLQ: (records, [[("streamer.reason", b"model_error")]] * 3)}

    def commit(self, offsets: dict[TP, int]) -> None:
        self.commits.append(dict(offsets))

    def close(self) -> None:
        pass


class _Unacknowledged(FakeProducer):
    def flush(self, timeout_s: float) -> bool:
        super().flush(timeout_s)
        return False  # the broker did not acknowledge them within the timeout


@pytest.mark.parametrize(
    ("producer", "committed"), [(FakeProducer, [{DLQ: 3}]), (_Unacknowledged, [])]
)
def test_a_replay_commits_only_what_the_broker_acknowledged(
    monkeypatch: pytest.MonkeyPatch, producer: type[FakeProducer], committed: list[dict[TP, int]]
) -> None:
    reader, sent = _DeadLetters(), producer()
    chosen = types.SimpleNamespace(
        group_reader=lambda _settings, _topic: reader, producer=lambda _settings: sent
    )
    monkeypatch.setattr(streamer.replay, "backend", lambda _name: chosen)
    if committed:
        assert replay_dead_letters(SETTINGS, timeout_s=1.0).replayed == 3
    else:
        with pytest.raises(BrokerError, match=r"not acknowledged .* within 1 s"):
            replay_dead_letters(SETTINGS, timeout_s=1.0)
    assert [s.value for s in sent.records()] == [b"0", b"1", b"2"]
    assert reader.commits == committed

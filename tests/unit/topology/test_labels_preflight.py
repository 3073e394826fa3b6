"""Start-up checks of delayed labels: the labels topic co-partitioned, the ledger changelog."""

from __future__ import annotations

from typing import Any

import pytest

from streamer.clients.base import Backend
from streamer.core.models import load_configured
from streamer.core.state.codec import CODEC_VERSION, META_KEY, Meta, encode
from streamer.errors import ConfigError
from streamer.settings import Settings, build_settings
from streamer.topology.preflight import labels_ledger
from tests.unit.topology.test_state_keeper import MemoryChangelog


def make_settings(**labels: Any) -> Settings:
    return build_settings(
        {
            "kafka": {"input_topic": "tx", "output_topic": "out", "group_id": "fraud"},
            "labels": {"topic": "tx.labels", **labels},
        },
        environ={},
    )


class NamedChangelog(MemoryChangelog):
    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic


def backend(
    counts: dict[str, int],
    ensured: list[tuple[Any, ...]],
    written: MemoryChangelog | None = None,
) -> Backend:
    def ensure(_settings: Any, topic: str, input_topic: str, setting: str) -> None:
        ensured.append((topic, input_topic, setting))

    def reader(_settings: Any, topic: str) -> MemoryChangelog:
        return written if written is not None else NamedChangelog(topic)

    return Backend(
        name="fake",
        consumer=None,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
        ensure_topics=lambda *_a: None,
        changelog_reader=reader,  # type: ignore[arg-type]
        ensure_changelog=ensure,
        partition_counts=lambda _s: dict(counts),
    )


def test_a_co_partitioned_labels_topic_gets_its_ledger_changelog_ensured() -> None:
    settings = make_settings()
    ensured: list[tuple[Any, ...]] = []
    opener = labels_ledger(
        settings, backend({"tx": 3, "tx.labels": 3}, ensured), load_configured(settings)
    )
    assert ensured == [("fraud.tx.ledger-changelog", "tx", "labels.ledger_topic")]
    assert opener is not None
    assert opener().topic == "fraud.tx.ledger-changelog"  # type: ignore[attr-defined]


def test_a_ledger_changelog_of_the_older_format_exits_2_with_one_line() -> None:
    """Format 1 sent each prediction as two records: this version does not restore it."""
    settings = make_settings()
    written = MemoryChangelog()
    older = Meta(CODEC_VERSION, "prediction-ledger-1", "tx", 1, 7, (), 0)
    written.append(1, ((b"Lpc1/1/tx", b"x"), (META_KEY, encode(older))))
    with pytest.raises(ConfigError) as error:
        labels_ledger(
            settings, backend({"tx": 2, "tx.labels": 2}, [], written), load_configured(settings)
        )
    assert str(error.value) == (
        "config error: labels.ledger_topic: the prediction ledger changelog "
        "'fraud.tx.ledger-changelog' (partition 1) is in format 'prediction-ledger-1', not "
        "'prediction-ledger-4', which this version cannot restore; delete that topic and the "
        "ledger-* directories of state.dir (the ledgers start empty), or set "
        "labels.ledger_topic to a new topic"
    )
    assert written.closed


@pytest.mark.parametrize(
    ("counts", "has"),
    [({"tx": 3, "tx.labels": 2}, "has 2 partitions"), ({"tx": 3}, "does not exist")],
)
def test_a_labels_topic_not_co_partitioned_exits_2_with_one_line(
    counts: dict[str, int], has: str
) -> None:
    settings = make_settings()
    with pytest.raises(ConfigError) as error:
        labels_ledger(settings, backend(counts, []), load_configured(settings))
    assert str(error.value) == (
        f"config error: labels.topic: topic 'tx.labels' {has}, but the labels must be "
        "co-partitioned with the input topic 'tx' (3 partitions); create it with 3 partitions "
        "and produce each label to its record's partition"
    )


def test_a_score_field_the_model_lacks_exits_2() -> None:
    settings = make_settings(score_field="proba_1")
    with pytest.raises(ConfigError, match=r"labels.score_field='proba_1' is not an output"):
        labels_ledger(settings, backend({"tx": 1, "tx.labels": 1}, []), load_configured(settings))


def test_without_a_labels_topic_nothing_is_checked() -> None:
    settings = make_settings(topic="")
    assert labels_ledger(settings, None, load_configured(settings)) is None

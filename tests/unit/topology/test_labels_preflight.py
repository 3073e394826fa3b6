"""Start-up checks of delayed labels: the labels topic co-partitioned, the ledger changelog."""

from __future__ import annotations

from typing import Any

import pytest

from streamer.clients.base import Backend
from streamer.core.models import load_configured
from streamer.errors import ConfigError
from streamer.settings import Settings, build_settings
from streamer.topology.preflight import labels_ledger


def make_settings(**labels: Any) -> Settings:
    return build_settings(
        {
            "kafka": {"input_topic": "tx", "output_topic": "out", "group_id": "fraud"},
            "labels": {"topic": "tx.labels", **labels},
        },
        environ={},
    )


def backend(counts: dict[str, int], ensured: list[tuple[Any, ...]]) -> Backend:
    def ensure(_settings: Any, topic: str, input_topic: str, setting: str) -> None:
        ensured.append((topic, input_topic, setting))

    return Backend(
        name="fake",
        consumer=None,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
        ensure_topics=lambda *_a: None,
        changelog_reader=lambda _s, topic: topic,  # type: ignore[arg-type,return-value]
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
    assert opener() == "fraud.tx.ledger-changelog"  # type: ignore[comparison-overlap]


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

"""The demo's labels: its settings, and the champion's quality on the live line and summary."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from sklearn.metrics import precision_score, recall_score

from streamer import demo
from streamer.actors.metrics import PipelineMetrics, live_quality
from streamer.core.labels.ledger import Joined, LedgerCounts, LedgerLabel, ModelScore, Prediction
from streamer.messages import LabelsJoined

CHAMPION = ("demo-fraud", "8ab50a45bb60")


def demo_metrics() -> PipelineMetrics:
    """The metrics of the demo's pipeline: its model, its [labels] and monitoring.threshold."""
    settings = demo._settings("127.0.0.1:1", 0)
    metrics = PipelineMetrics(CollectorRegistry())
    metrics.model_info.info({"name": CHAMPION[0], "version": CHAMPION[1]})
    metrics.watch_labels(live_quality(settings.labels, settings.monitoring.threshold))
    return metrics


def labelled(count: int, seed: int) -> tuple[list[Joined], np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    records, labels, scores = [], [], []
    for i in range(count):
        label = float(rng.random() < 0.1)
        score = rng.random() * 0.6 + 0.35 * label
        champion = ModelScore(*CHAMPION, score, i)
        # An older model version's record: not the model in use, not on the line.
        if i % 10 == 0:
            champion = ModelScore(CHAMPION[0], "old", score, i)
        else:
            labels.append(label)
            scores.append(score)
        prediction = Prediction(i, champion, (), LedgerLabel(label, i + 3_000_000))
        records.append(Joined(i.to_bytes(4, "big"), prediction))
    return records, np.array(labels), np.array(scores)


def test_the_demo_joins_its_labels_by_transaction_id_with_their_time() -> None:
    labels = demo._settings("127.0.0.1:1", 0).labels
    assert (labels.topic, labels.id_field, labels.time_field) == (
        demo.LABELS,
        "transaction_id",
        "labelled_at",
    )
    assert labels.score_field == "score"  # the demo model's output field


def test_the_live_line_and_the_summary_show_the_champions_precision_and_recall() -> None:
    metrics = demo_metrics()
    records, y, s = labelled(800, seed=3)
    counts = LedgerCounts(outputs=900, joined=800, labels={"unmatched": 7})
    metrics.apply(LabelsJoined(0, tuple(records[:500]), counts, held=900))
    metrics.apply(LabelsJoined(1, tuple(records[500:]), LedgerCounts(joined=0), held=0))
    found = demo.champion_quality(metrics.registry)
    decided = s >= 0.5
    assert (found.model, found.version, found.records) == (*CHAMPION, y.size)
    assert found.precision == precision_score(y, decided)
    assert found.recall == recall_score(y, decided)
    shown = f"precision {found.precision:.3f} recall {found.recall:.3f}"
    assert demo._Progress(metrics.registry).quality() == "  " + shown
    assert demo._quality_line(metrics.registry, sent=810) == (
        f"labels: 810 sent, 800 joined (unmatched 7); champion {CHAMPION[0]} {CHAMPION[1]} "
        f"over the last {y.size} labelled records: {shown}"
    )


def test_before_any_label_joins_the_line_says_so() -> None:
    metrics = demo_metrics()
    assert demo._Progress(metrics.registry).quality() == "  no labels joined yet"
    metrics.apply(LabelsJoined(2, (), LedgerCounts(labels={"unmatched": 4}), held=10))
    assert demo._Progress(metrics.registry).quality() == "  no labels joined yet"
    assert demo._quality_line(metrics.registry, sent=4) == "labels: 4 sent, 0 joined (unmatched 4)"


def test_a_pipeline_that_joined_no_label_yet_says_so() -> None:
    registry = PipelineMetrics(CollectorRegistry()).registry
    assert demo._quality_line(registry, sent=12) == ("labels: 12 sent, none joined yet")


def test_a_live_line_reads_the_registry_once() -> None:
    """Each collect() may compute the quality report again: a line costs one, not ten."""
    metrics = demo_metrics()
    records, _y, _s = labelled(100, seed=4)
    metrics.apply(LabelsJoined(0, tuple(records), LedgerCounts(joined=100), held=100))
    collects = []
    source = metrics.registry
    original = source.collect

    def counted() -> Iterator[Metric]:
        collects.append(1)
        return original()

    source.collect = counted  # type: ignore[method-assign]
    line = demo._Progress(source).line()
    assert line.endswith(demo._Progress(metrics.registry).quality())
    assert len(collects) == 2  # the line's scrape, and the quality() of the assertion


def test_the_live_line_counts_the_transactions_committed_not_the_labels() -> None:
    metrics = PipelineMetrics(CollectorRegistry())
    metrics.committed_offset.labels(topic=demo.INPUT, partition="0").set(700)
    metrics.committed_offset.labels(topic=demo.INPUT, partition="1").set(300)
    metrics.committed_offset.labels(topic="labels", partition="0").set(90)
    assert demo._Progress(metrics.registry).committed() == 1000

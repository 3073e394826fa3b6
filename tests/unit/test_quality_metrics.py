"""The metrics actor's live quality metrics: label messages in, scikit-learn's values out.

Each test feeds :class:`LabelsJoined` / :class:`LabelsRevoked` to the metrics,
scrapes the registry and compares every sample with scikit-learn's own call on
the records the window holds (in the window's order, so that every sum is
taken in the same order: ``==``, not approximately).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.calibration import calibration_curve
from sklearn.metrics import mean_absolute_error, roc_auc_score, root_mean_squared_error

from streamer.actors.metrics import MetricsActor, PipelineMetrics, live_quality
from streamer.core.labels.export import LiveQuality
from streamer.core.labels.ledger import Joined, LedgerCounts, LedgerLabel, ModelScore, Prediction
from streamer.core.labels.metrics import window_report
from streamer.core.labels.window import LabelWindow
from streamer.messages import GetStatus, LabelsJoined, LabelsRevoked
from streamer.settings import LabelsSettings, MetricsSettings
from tests.unit.core.labels.test_metrics import sklearn_classification

SECOND = 1_000_000
THRESHOLD = 0.5
CHAMPION, CHALLENGER = ("fraud", "3"), ("candidate", "7")


def joined_record(
    rng: random.Random, identity: int, time_us: int, *, challenger: bool = True
) -> Joined:
    """A labelled prediction: the champion's score, maybe a challenger's, a label with a time."""
    label = 1.0 if rng.random() < 0.3 else 0.0
    # Scores that lean towards the label, with ties (rounded) so the curves have steps.
    champion = round(min(1.0, max(0.0, rng.gauss(0.35 + 0.3 * label, 0.25))), 2)
    scores = (ModelScore(*CHALLENGER, round(rng.random(), 2), time_us + 5),) if challenger else ()
    return Joined(
        identity.to_bytes(8, "big"),
        Prediction(
            time_us,
            ModelScore(*CHAMPION, champion, time_us),
            scores,
            LedgerLabel(label, time_us + rng.randint(1, 90) * SECOND),
        ),
    )


def stream(seed: int, count: int, partitions: int) -> dict[int, list[Joined]]:
    """``count`` joined records over ``partitions``, prediction times shuffled across them."""
    rng = random.Random(seed)
    out: dict[int, list[Joined]] = {p: [] for p in range(partitions)}
    for identity in range(count):
        record = joined_record(
            rng, identity, rng.randint(0, 1000) * SECOND, challenger=rng.random() < 0.8
        )
        out[rng.randrange(partitions)].append(record)
    return out


def counts(joined: int = 0, **labels: int) -> LedgerCounts:
    return LedgerCounts(outputs=3 * joined, joined=joined, labels=labels)


def metrics_with_labels(**settings: object) -> PipelineMetrics:
    metrics = PipelineMetrics(CollectorRegistry())
    labels = LabelsSettings(topic="labels", **settings)  # type: ignore[arg-type]
    metrics.watch_labels(live_quality(labels, THRESHOLD))
    return metrics


def feed(metrics: PipelineMetrics, partitions: dict[int, list[Joined]], chunk: int = 7) -> None:
    """Each partition's records in chunks, partitions interleaved, like the producer does."""
    offsets = dict.fromkeys(partitions, 0)
    while any(offsets[p] < len(records) for p, records in partitions.items()):
        for partition, records in partitions.items():
            start = offsets[partition]
            if start >= len(records):
                continue
            offsets[partition] = start + chunk
            metrics.apply(
                LabelsJoined(
                    partition,
                    tuple(records[start : start + chunk]),
                    counts(min(start + chunk, len(records))),
                    held=len(records),
                )
            )


def window_order(records: Sequence[Joined]) -> list[Joined]:
    return sorted(records, key=lambda r: (r.prediction.time_us, r.identity))


def sample(metrics: PipelineMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def samples(metrics: PipelineMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


def sklearn_metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """The data scientist's own calls; NaN where scikit-learn finds a metric undefined."""
    return sklearn_classification(y, s, THRESHOLD)


def assert_model_like_sklearn(
    metrics: PipelineMetrics, model: tuple[str, str], y: np.ndarray, s: np.ndarray
) -> None:
    name, version = model
    for metric, expected in sklearn_metrics(y, s).items():
        ours = sample(metrics, "streamer_model_quality", model=name, version=version, metric=metric)
        if math.isnan(expected):
            assert ours is None, metric  # undefined: absent, not NaN
        else:
            assert ours == expected, (metric, ours, expected)
    assert sample(metrics, "streamer_model_quality_records", model=name, version=version) == y.size
    decided = s >= THRESHOLD
    cells = {
        "tp": decided & (y == 1),
        "fp": decided & (y == 0),
        "fn": ~decided & (y == 1),
        "tn": ~decided & (y == 0),
    }
    for cell, mask in cells.items():
        got = sample(
            metrics, "streamer_model_quality_confusion", model=name, version=version, cell=cell
        )
        assert got == np.count_nonzero(mask), cell
    observed, predicted = calibration_curve(y, s, n_bins=10, strategy="uniform")
    buckets = np.searchsorted(np.linspace(0, 1, 11)[1:-1], s)
    filled = sorted(set(buckets.tolist()))
    for index, rate, mean in zip(filled, observed.tolist(), predicted.tolist(), strict=True):
        edge = f"{(index + 1) / 10:.6g}"
        labels = {"model": name, "version": version, "bucket": edge}
        assert sample(metrics, "streamer_model_calibration", **labels, stat="observed_rate") == rate
        assert sample(metrics, "streamer_model_calibration", **labels, stat="mean_score") == mean
        assert sample(
            metrics, "streamer_model_calibration", **labels, stat="records"
        ) == np.count_nonzero(buckets == index)


def assert_window_like_sklearn(metrics: PipelineMetrics, window: Sequence[Joined]) -> None:
    """Every quality sample equals scikit-learn's over ``window`` (the records it must cover)."""
    ordered = window_order(window)
    y = np.array([r.label.value for r in ordered])
    champion = np.array([r.prediction.champion.score for r in ordered if r.prediction.champion])
    assert_model_like_sklearn(metrics, CHAMPION, y, champion)
    both = [r for r in ordered if r.prediction.challengers]
    y_both = np.array([r.label.value for r in both])
    challenger = np.array([r.prediction.challengers[0].score for r in both])
    assert_model_like_sklearn(metrics, CHALLENGER, y_both, challenger)
    champion_on_both = np.array(
        [r.prediction.champion.score for r in both if r.prediction.champion]
    )
    pair = {"challenger": CHALLENGER[0], "version": CHALLENGER[1], "champion_version": CHAMPION[1]}
    assert sample(metrics, "streamer_challenger_quality_records", **pair) == len(both)
    theirs = sklearn_metrics(y_both, challenger)
    ours_champion = sklearn_metrics(y_both, champion_on_both)
    for metric, value in theirs.items():
        delta = sample(metrics, "streamer_challenger_quality_delta", **pair, metric=metric)
        assert delta == value - ours_champion[metric], metric
    latency = np.array([(r.label.time_us - r.prediction.time_us) / 1e6 for r in ordered])
    expected = {
        "mean": float(np.mean(latency)),
        "p50": float(np.quantile(latency, 0.5)),
        "p95": float(np.quantile(latency, 0.95)),
        "max": float(np.max(latency)),
    }
    for stat, value in expected.items():
        assert sample(metrics, "streamer_label_latency_seconds", stat=stat) == value, stat


class TestQualityEqualsSklearn:
    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_every_sample_equals_sklearn_over_all_partitions_records(self, seed: int) -> None:
        partitions = stream(seed, 600, partitions=3)
        metrics = metrics_with_labels()
        feed(metrics, partitions)
        assert_window_like_sklearn(metrics, [r for rs in partitions.values() for r in rs])

    def test_the_window_is_the_last_records_by_prediction_time_across_partitions(self) -> None:
        partitions = stream(4, 900, partitions=4)
        metrics = metrics_with_labels(window_records=250)
        feed(metrics, partitions, chunk=13)
        union = window_order([r for rs in partitions.values() for r in rs])
        assert_window_like_sklearn(metrics, union[-250:])

    def test_window_s_keeps_the_records_predicted_within_it_of_the_newest(self) -> None:
        partitions = stream(5, 500, partitions=2)
        metrics = metrics_with_labels(window_s=300.0)
        feed(metrics, partitions)
        union = [r for rs in partitions.values() for r in rs]
        newest = max(r.prediction.time_us for r in union)
        assert_window_like_sklearn(
            metrics, [r for r in union if r.prediction.time_us > newest - 300 * SECOND]
        )

    def test_a_metric_undefined_on_the_window_is_absent(self) -> None:
        rng = random.Random(6)
        negatives = []
        for identity in range(20):
            record = joined_record(rng, identity, identity * SECOND, challenger=False)
            label = LedgerLabel(0.0, record.label.time_us)
            negatives.append(
                Joined(
                    record.identity,
                    Prediction(record.prediction.time_us, record.prediction.champion, (), label),
                )
            )
        metrics = metrics_with_labels()
        metrics.apply(LabelsJoined(0, tuple(negatives), counts(20), held=20))
        present = {dict(k)["metric"] for k in samples(metrics, "streamer_model_quality")}
        # No positive label: recall, F1 when nothing is predicted positive, ROC AUC, PR AUC.
        assert {"roc_auc", "pr_auc", "recall"}.isdisjoint(present)
        assert {"log_loss", "brier"} <= present
        assert samples(metrics, "streamer_challenger_quality_delta") == {}

    def test_regression_exports_mae_and_rmse_equal_to_sklearn(self) -> None:
        rng = random.Random(8)
        records = [
            Joined(
                i.to_bytes(4, "big"),
                Prediction(
                    i * SECOND,
                    ModelScore(*CHAMPION, rng.uniform(-50, 50), i * SECOND),
                    (),
                    LedgerLabel(rng.uniform(-50, 50), None),
                ),
            )
            for i in range(200)
        ]
        metrics = metrics_with_labels(task="regression")
        metrics.apply(LabelsJoined(1, tuple(records), counts(200), held=200))
        y = np.array([r.label.value for r in records])
        s = np.array([r.prediction.champion.score for r in records])  # type: ignore[union-attr]
        quality = samples(metrics, "streamer_model_quality")
        assert {dict(k)["metric"]: v for k, v in quality.items()} == {
            "mae": mean_absolute_error(y, s),
            "rmse": root_mean_squared_error(y, s),
        }
        assert samples(metrics, "streamer_model_quality_confusion") == {}
        assert samples(metrics, "streamer_label_latency_seconds") == {}  # no label has a time


class TestPartitions:
    def test_a_revoked_partition_leaves_the_window_and_its_series_go(self) -> None:
        partitions = stream(9, 600, partitions=3)
        metrics = metrics_with_labels()
        feed(metrics, partitions)
        metrics.apply(LabelsRevoked((1,)))
        assert_window_like_sklearn(metrics, [*partitions[0], *partitions[2]])
        assert {dict(k)["partition"] for k in samples(metrics, "streamer_labels_total")} == {
            "0",
            "2",
        }
        assert sample(metrics, "streamer_labels_ledger_predictions", partition="1") is None

    def test_a_reset_replaces_the_partitions_window(self) -> None:
        partitions = stream(10, 600, partitions=2)
        metrics = metrics_with_labels()
        feed(metrics, partitions)
        restored = partitions[1][: len(partitions[1]) // 2]
        metrics.apply(LabelsJoined(1, tuple(restored), counts(len(restored)), held=400, reset=True))
        assert_window_like_sklearn(metrics, [*partitions[0], *restored])
        assert sample(metrics, "streamer_labels_ledger_predictions", partition="1") == 400

    @pytest.mark.parametrize("seed", range(6))
    def test_the_merge_equals_one_window_over_the_union_in_any_arrival_order(
        self, seed: int
    ) -> None:
        rng = random.Random(seed)
        partitions = stream(100 + seed, rng.randint(50, 500), partitions=rng.randint(1, 5))
        window_records, window_s = rng.choice([10, 60, 1000]), rng.choice([0.0, 120.0, 600.0])
        quality = LiveQuality(
            task="classification", threshold=THRESHOLD, buckets=10,
            window_records=window_records, window_s=window_s,
        )  # fmt: skip
        for partition, records in partitions.items():
            shuffled = records[:]
            rng.shuffle(shuffled)
            for start in range(0, len(shuffled), rng.randint(1, 40)):
                quality.joined(partition, shuffled[start : start + 40], counts(), 0)
        union = LabelWindow(window_records, round(window_s * SECOND))
        union.add(r for rs in partitions.values() for r in rs)
        assert quality.records() == union.records()
        expected = window_report(
            union.records(), task="classification", threshold=THRESHOLD, buckets=10
        )
        assert quality.report() == expected


class TestLedgerCounts:
    def test_the_ledger_families_are_the_partitions_counts(self) -> None:
        metrics = metrics_with_labels()
        ledger = LedgerCounts(
            outputs=120,
            duplicate_outputs=2,
            joined=40,
            labels={"unmatched": 3, "duplicate": 2, "past_horizon": 1},
            expired_unlabelled=11,
            expired_labelled=5,
        )
        metrics.apply(LabelsJoined(2, (), ledger, held=64))
        metrics.apply(LabelsJoined(3, (), LedgerCounts(joined=1), held=1))
        assert samples(metrics, "streamer_labels_total") == {
            (("partition", "2"), ("result", "joined")): 40,
            (("partition", "2"), ("result", "unmatched")): 3,
            (("partition", "2"), ("result", "duplicate")): 2,
            (("partition", "2"), ("result", "past_horizon")): 1,
            (("partition", "3"), ("result", "joined")): 1,
            (("partition", "3"), ("result", "unmatched")): 0,
            (("partition", "3"), ("result", "duplicate")): 0,
            (("partition", "3"), ("result", "past_horizon")): 0,
        }
        assert sample(metrics, "streamer_labels_predictions_recorded_total", partition="2") == 120
        assert (
            sample(
                metrics, "streamer_labels_predictions_expired_total", partition="2", labelled="true"
            )
            == 5
        )
        assert (
            sample(
                metrics,
                "streamer_labels_predictions_expired_total",
                partition="2",
                labelled="false",
            )
            == 11
        )
        assert sample(metrics, "streamer_labels_ledger_predictions", partition="2") == 64
        # No joined record yet: no quality series at all.
        assert samples(metrics, "streamer_model_quality") == {}


class TestReportCache:
    def test_the_report_is_computed_again_only_after_a_message_changed_a_window(self) -> None:
        metrics = metrics_with_labels()
        quality = metrics.quality
        assert quality is not None
        partitions = stream(11, 100, partitions=2)
        feed(metrics, partitions, chunk=100)
        list(metrics.registry.collect())
        list(metrics.registry.collect())
        assert quality.reports_computed == 1
        metrics.apply(LabelsJoined(0, (), counts(5), held=9))  # counts only: the window stands
        list(metrics.registry.collect())
        assert quality.reports_computed == 1
        assert sample(metrics, "streamer_labels_ledger_predictions", partition="0") == 9
        metrics.apply(LabelsJoined(0, partitions[0][:1], counts(5), held=9))  # a replacement
        list(metrics.registry.collect())
        assert quality.reports_computed == 2
        metrics.apply(LabelsRevoked((7,)))  # not ours: nothing changes
        list(metrics.registry.collect())
        assert quality.reports_computed == 2
        metrics.apply(LabelsRevoked((1,)))
        list(metrics.registry.collect())
        assert quality.reports_computed == 3


def test_without_labels_settings_label_messages_are_ignored_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = PipelineMetrics(CollectorRegistry())
    with caplog.at_level(logging.WARNING):
        metrics.apply(LabelsJoined(0, (), LedgerCounts(), held=0))
        metrics.apply(LabelsRevoked((0,)))
    assert [r.getMessage() for r in caplog.records] == [
        "label messages arrive but the metrics actor was started without [labels] settings: "
        "no quality metric is exported"
    ]
    assert samples(metrics, "streamer_labels_total") == {}


class TestTheActor:
    def test_given_a_labels_topic_it_exports_the_quality_of_the_messages_it_is_told(
        self,
    ) -> None:
        registry = CollectorRegistry()
        actor = MetricsActor.start(
            MetricsSettings(enabled=False),
            registry,
            labels=LabelsSettings(topic="labels", window_records=50),
            threshold=THRESHOLD,
        )
        try:
            partitions = stream(12, 120, partitions=2)
            for partition, records in partitions.items():
                actor.tell(LabelsJoined(partition, tuple(records), counts(len(records)), held=9))
            actor.ask(GetStatus(), timeout=5)  # the tells before it are applied
            union = window_order([r for rs in partitions.values() for r in rs])[-50:]
            y = np.array([r.label.value for r in union])
            s = np.array([r.prediction.champion.score for r in union])  # type: ignore[union-attr]
            labels = {"model": CHAMPION[0], "version": CHAMPION[1], "metric": "roc_auc"}
            assert registry.get_sample_value("streamer_model_quality", labels) == roc_auc_score(
                y, s
            )
            ledger = {"partition": "1", "result": "joined"}
            assert registry.get_sample_value("streamer_labels_total", ledger) == len(partitions[1])
        finally:
            actor.stop()

    def test_without_a_labels_topic_it_exports_no_quality_family(self) -> None:
        registry = CollectorRegistry()
        actor = MetricsActor.start(
            MetricsSettings(enabled=False), registry, labels=LabelsSettings(), threshold=THRESHOLD
        )
        try:
            names = {family.name for family in registry.collect()}
            assert not any(
                name.startswith(("streamer_labels", "streamer_model_quality")) for name in names
            )
        finally:
            actor.stop()

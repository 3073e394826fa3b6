"""The live quality metrics: per-partition label windows, merged at a scrape into one report.

The producer tells the metrics actor, per input partition, the labelled
predictions that changed and the partition's ledger counts
(:class:`~streamer.messages.LabelsJoined`). :class:`LiveQuality` keeps one
:class:`~streamer.core.labels.window.LabelWindow` per partition and, when
asked, merges them into the window of the last ``window_records`` joined
records by prediction time and computes
:func:`~streamer.core.labels.metrics.window_report` over it. The merge equals
one window over the union of the partitions' records: a record among the
latest N of the union is among the latest N of its own partition, and the
union's newest time is at least its partition's, so no partition trims a
record the union would keep.

The report is computed again only when a message changed a window, so that a
scrape every few seconds of an idle stream costs nothing. :meth:`families`
turns it into Prometheus families as plain data (no prometheus_client here):
the metrics actor wraps them. docs/labels.md#live-metrics names each family.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.core.labels.join import CLASSIFICATION, DUPLICATE, PAST_HORIZON, UNMATCHED
from streamer.core.labels.ledger import Joined, LedgerCounts
from streamer.core.labels.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, window_report
from streamer.core.labels.window import LabelWindow, merged_records

LABEL_RESULTS = ("joined", UNMATCHED, DUPLICATE, PAST_HORIZON)
"""The ``result`` of ``streamer_labels_total``: joined, or why a label joined nothing."""
CONFUSION_CELLS = ("tp", "fp", "fn", "tn")
CALIBRATION_STATS = ("records", "mean_score", "observed_rate")
LATENCY_STATS = (("mean", "mean_s"), ("p50", "p50_s"), ("p95", "p95_s"), ("max", "max_s"))


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family with its samples: ``kind`` is ``counter`` or ``gauge``.

    A counter's ``name`` has no ``_total``: the exposition adds it.
    """

    name: str
    kind: str
    documentation: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


@dataclass(slots=True)
class _Partition:
    window: LabelWindow
    counts: LedgerCounts
    held: int


class LiveQuality:
    """The label windows and ledger counts of this member's partitions; thread-safe.

    The metrics actor's thread applies messages; the HTTP server's threads call
    :meth:`families` at each scrape.

    Args:
        task: ``classification`` or ``regression`` (``labels.task``).
        threshold: The decision threshold of precision, recall and F1 (``monitoring.threshold``).
        buckets: The calibration histogram's buckets (``labels.calibration_buckets``).
        window_records: At most this many joined records (``labels.window_records``).
        window_s: When > 0, only those predicted within this of the newest (``labels.window_s``).
    """

    def __init__(
        self, *, task: str, threshold: float, buckets: int, window_records: int, window_s: float
    ) -> None:
        self.task = task
        self.threshold = threshold
        self.buckets = buckets
        self.window_records = window_records
        self.max_age_us = round(window_s * 1_000_000)
        self._partitions: dict[int, _Partition] = {}
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self.reports_computed = 0
        """How many times the report was computed (the cache's tests read it)."""

    def _window(self) -> LabelWindow:
        return LabelWindow(self.window_records, self.max_age_us)

    def joined(
        self,
        partition: int,
        joined: Sequence[Joined],
        counts: LedgerCounts,
        held: int,
        *,
        reset: bool = False,
    ) -> None:
        """A partition's labelled predictions that changed (all of them after a ``reset``)."""
        with self._lock:
            state = self._partitions.get(partition)
            if state is None or reset:
                state = self._partitions[partition] = _Partition(self._window(), counts, held)
            state.counts = counts
            state.held = held
            if joined or reset:
                state.window.add(joined)
                self._report = None

    def revoked(self, partitions: Iterable[int]) -> None:
        """These partitions left this member: their windows and counts go."""
        with self._lock:
            for partition in partitions:
                if self._partitions.pop(partition, None) is not None:
                    self._report = None

    def records(self) -> list[Joined]:
        """The merged window's records, oldest prediction first."""
        with self._lock:
            return self._merged()

    def _merged(self) -> list[Joined]:
        windows = [state.window for state in self._partitions.values()]
        return merged_records(windows, self.window_records, self.max_age_us)

    def report(self) -> dict[str, Any]:
        """:func:`window_report` of the merged window; computed again only after a change."""
        with self._lock:
            if self._report is None:
                self._report = window_report(
                    self._merged(), task=self.task, threshold=self.threshold, buckets=self.buckets
                )
                self.reports_computed += 1
            return self._report

    def families(self) -> list[Family]:
        """Every family of the live quality metrics, with this member's samples."""
        report = self.report()
        with self._lock:
            partitions = sorted((p, s.counts, s.held) for p, s in self._partitions.items())
        return [*_ledger_families(partitions), *_model_families(report, self.task)]


def _ledger_families(partitions: Sequence[tuple[int, LedgerCounts, int]]) -> list[Family]:
    labels = Family(
        "streamer_labels",
        "counter",
        "Labels read from the labels topic, by result: joined, or why one joined nothing "
        "(unmatched, duplicate, past_horizon). Malformed labels are dead letters.",
        ("partition", "result"),
    )
    recorded = Family(
        "streamer_labels_predictions_recorded",
        "counter",
        "Predictions recorded in the partition's ledger (one per model per record).",
        ("partition",),
    )
    expired = Family(
        "streamer_labels_predictions_expired",
        "counter",
        "Predictions that left the ledger after labels.horizon_s, labelled or not.",
        ("partition", "labelled"),
    )
    held = Family(
        "streamer_labels_ledger_predictions",
        "gauge",
        "Predictions held in the partition's ledger now.",
        ("partition",),
    )
    for partition, counts, predictions in partitions:
        label = str(partition)
        for result in LABEL_RESULTS:
            value = counts.joined if result == "joined" else counts.labels.get(result, 0)
            labels.samples.append(((label, result), value))
        recorded.samples.append(((label,), counts.outputs))
        expired.samples.append(((label, "true"), counts.expired_labelled))
        expired.samples.append(((label, "false"), counts.expired_unlabelled))
        held.samples.append(((label,), predictions))
    return [labels, recorded, expired, held]


def _model_families(report: dict[str, Any], task: str) -> list[Family]:
    model = ("model", "version")
    quality = Family(
        "streamer_model_quality",
        "gauge",
        "Each model version's quality over the window of the last labels.window_records joined "
        "records (absent when undefined).",
        (*model, "metric"),
    )
    records = Family(
        "streamer_model_quality_records",
        "gauge",
        "Records of the quality window the model version scored.",
        model,
    )
    confusion = Family(
        "streamer_model_quality_confusion",
        "gauge",
        "The quality window's confusion matrix at monitoring.threshold (sum it across members).",
        (*model, "cell"),
    )
    calibration = Family(
        "streamer_model_calibration",
        "gauge",
        "Per score bucket of the quality window (bucket: its upper edge): its records, mean "
        "score and observed positive rate.",
        (*model, "bucket", "stat"),
    )
    metrics = CLASSIFICATION_METRICS if task == CLASSIFICATION else REGRESSION_METRICS
    for entry in report["models"]:
        values = (entry["name"], entry["version"])
        records.samples.append((values, entry["records"]))
        for metric in metrics:
            if entry[metric] is not None:
                quality.samples.append(((*values, metric), entry[metric]))
        if task != CLASSIFICATION:
            continue
        tp, fp, fn = entry["true_positives"], entry["false_positives"], entry["false_negatives"]
        for cell, count in zip(
            CONFUSION_CELLS, (tp, fp, fn, entry["records"] - tp - fp - fn), strict=True
        ):
            confusion.samples.append(((*values, cell), count))
        for bucket in entry["calibration"] or ():
            edge = f"{bucket['high']:.6g}"
            for stat in CALIBRATION_STATS:
                if bucket[stat] is not None:
                    calibration.samples.append(((*values, edge, stat), bucket[stat]))
    return [quality, records, confusion, calibration, *_comparison_families(report)]


def _comparison_families(report: dict[str, Any]) -> list[Family]:
    pair = ("challenger", "version", "champion_version")
    delta = Family(
        "streamer_challenger_quality_delta",
        "gauge",
        "Challenger minus champion, per metric, on the window's records both scored.",
        (*pair, "metric"),
    )
    compared = Family(
        "streamer_challenger_quality_records",
        "gauge",
        "Records of the quality window both the challenger and the champion scored.",
        pair,
    )
    for comparison in report["comparisons"]:
        values = (
            comparison["challenger"],
            comparison["challenger_version"],
            comparison["champion_version"],
        )
        compared.samples.append((values, comparison["records"]))
        for metric, value in comparison["deltas"].items():
            if value is not None:
                delta.samples.append(((*values, metric), value))
    latency = Family(
        "streamer_label_latency_seconds",
        "gauge",
        "Label time minus prediction time over the quality window's labels that have a time.",
        ("stat",),
    )
    if report["label_latency"] is not None:
        for stat, key in LATENCY_STATS:
            latency.samples.append(((stat,), report["label_latency"][key]))
    return [delta, compared, latency]

"""A backtest: every output and every label of two files, joined, and the window's metrics.

What ``streamer evaluate`` runs, with the live path's parts: the outputs go
into a :class:`PredictionLedger` (in memory), the labels join it in label-time
order (in file order when they have no time), the joined records fill a
:class:`LabelWindow`, and the ledger then expires what the horizon passed at
the newest time seen. Every label or output that joins nothing is counted by
reason; none stops the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from streamer.core.labels.join import Label, LabelSpec, Output, Rejected, read_label, read_output
from streamer.core.labels.ledger import PredictionLedger
from streamer.core.labels.metrics import window_report
from streamer.core.labels.window import LabelWindow
from streamer.core.state.store import MemoryStore

CHUNK = 1000
"""Records per ledger call (one store write each); the result does not depend on it."""

Record = tuple[bytes | None, Any]
"""A decoded record and its key: ``(key, JSON value)``."""


@dataclass(frozen=True)
class WindowOptions:
    """What the metrics cover and how they are cut."""

    max_records: int = 10_000
    max_age_us: int = 0
    threshold: float = 0.5
    buckets: int = 10


def evaluate(
    outputs: Iterable[Record],
    labels: Iterable[Record],
    spec: LabelSpec,
    window: WindowOptions,
    chunk: int = CHUNK,
) -> dict[str, Any]:
    """Join ``labels`` to ``outputs`` and measure the window: the report, as JSON-ready data."""
    ledger = PredictionLedger(MemoryStore(), spec.horizon_us)
    joined = LabelWindow(window.max_records, window.max_age_us)
    output_rejects: Counter[str] = Counter()
    label_rejects: Counter[str] = Counter()
    newest_us: int | None = None
    outputs_read = 0
    for batch in _chunks(outputs, chunk):
        read: list[Output] = []
        for _key, doc in batch:  # an output document carries its record's key in "key"
            outputs_read += 1
            try:
                read.append(read_output(doc, spec))
            except Rejected as exc:
                output_rejects[exc.reason] += 1
        relabelled, _ = ledger.record(read)
        joined.add(relabelled)
        newest_us = _newest(newest_us, (o.time_us for o in read))
    timed: list[tuple[int, int, Label]] = []
    untimed: list[Label] = []
    labels_read = 0
    for key, doc in labels:
        labels_read += 1
        try:
            label = read_label(doc, key, spec)
        except Rejected as exc:
            label_rejects[exc.reason] += 1
            continue
        if label.time_us is None:
            untimed.append(label)
        else:
            timed.append((label.time_us, len(timed), label))
    timed.sort(key=lambda item: item[:2])
    newest_us = _newest(newest_us, (time_us for time_us, _, _ in timed))
    for batch_of_labels in _chunks([label for _, _, label in timed] + untimed, chunk):
        found, reasons, _ = ledger.join(batch_of_labels)
        joined.add(found)
        label_rejects.update(reasons)
    if newest_us is not None:
        ledger.expire(newest_us)
    unlabelled, labelled = ledger.held_by_label()
    counts = ledger.counts
    records = joined.records()
    return {
        "outputs": {
            "read": outputs_read,
            "recorded": counts.outputs,
            "duplicate": counts.duplicate_outputs,
            "rejected": dict(sorted(output_rejects.items())),
        },
        "labels": {
            "read": labels_read,
            "joined": counts.joined,
            "rejected": dict(sorted(label_rejects.items())),
        },
        "predictions": {
            "expired_unlabelled": counts.expired_unlabelled,
            "unlabelled_within_horizon": unlabelled,
            "labelled_within_horizon": labelled,
        },
        "window": {
            "max_records": window.max_records,
            "max_age_s": window.max_age_us / 1e6,
            "threshold": window.threshold,
            "task": spec.task,
            **window_report(
                records, task=spec.task, threshold=window.threshold, buckets=window.buckets
            ),
        },
    }


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _newest(newest: int | None, times: Iterable[int]) -> int | None:
    latest = max(times, default=None)
    if latest is None:
        return newest
    return latest if newest is None else max(newest, latest)

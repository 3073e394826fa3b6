"""The demo generator: synthetic transactions (:mod:`streamer.core.demo_data`) into a topic.

It sends through the ``kafka.client`` backend, in groups of at most
``GROUP_RECORDS`` records, and paces them to ``rate`` records per second. With
``labels``, it also sends the delayed labels of a sample of its transactions to
a labels topic (:class:`~streamer.core.demo_data.LabelSchedule`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from streamer.clients import OutputGroup, backend, send_batch
from streamer.clients.base import ProducerClient, SendFailure
from streamer.core.demo_data import DemoClock, LabelSchedule, make_transaction
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)

GROUP_RECORDS = 5000
# (changes to make_record, share of the records changed). 'missing' changes a share
# only: records without the feature are dead-lettered, and all of them would trip
# the dead-letter breaker (supervision.dead_letter_max_ratio).
DRIFTS: dict[str, tuple[dict[str, Any], float]] = {
    "": ({}, 0.0),
    "amount": ({"amount_scale": 3.0}, 1.0),  # amounts three times the training ones
    "missing": ({"drop_feature": "merchant_risk"}, 0.2),  # the field stops arriving
}
TICK_S = 0.01
FLUSH_TIMEOUT_S = 60.0


@dataclass
class DemoLabels:
    """Where the generator sends its labels, and how many it sent (read while it runs).

    After the last transaction, the labels still waiting go when due, or all
    at once when ``release`` is set (the demo sets it once the pipeline has
    scored every transaction: no label can come before its prediction then).
    ``transactions_done`` is set once the last transaction is flushed.
    """

    topic: str
    schedule: LabelSchedule
    sent: int = 0
    transactions_done: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def produce_demo(
    kafka: KafkaSettings,
    topic: str,
    *,
    rate: float,
    count: int,
    bad_ratio: float,
    seed: int | None = None,
    stop: threading.Event | None = None,
    produced: list[int] | None = None,
    drift: str = "",
    drift_after_s: float = 0.0,
    clock: DemoClock | None = None,
    labels: DemoLabels | None = None,
) -> int:
    """Produce synthetic transactions at ``rate``/s (0: at once); returns how many were sent.

    ``count`` 0 goes on until ``stop`` is set. ``produced[0]``, when given,
    follows the number sent so far. ``drift`` ('amount' or 'missing') changes
    the records after ``drift_after_s`` seconds (see :data:`DRIFTS`). With ``clock``
    the records leave ``transactions_last_hour`` to streamer's declared state
    (:func:`~streamer.core.demo_data.make_event`). With ``labels``, the labels of its
    schedule go to ``labels.topic`` when due, those still waiting after the last
    transaction too.
    """
    rng = random.Random(seed)
    producer = backend(kafka.client).producer(kafka)
    failures: list[SendFailure] = []
    sent = 0
    started = time.monotonic()
    try:
        while (count == 0 or sent < count) and not (stop is not None and stop.is_set()):
            due = _due(sent, count, rate, started)
            if due == 0:
                time.sleep(TICK_S)
                continue
            drifting = drift and time.monotonic() - started >= drift_after_s
            changes, share = DRIFTS[drift] if drifting else DRIFTS[""]
            group = _group(
                rng, topic, min(due, GROUP_RECORDS), bad_ratio, changes, share, clock, labels
            )
            send_batch(producer, [group, *_labels(labels, time.time())], failures.extend)
            sent += len(group)
            if produced is not None:
                produced[0] = sent
        producer.flush(FLUSH_TIMEOUT_S)
        if labels is not None:
            labels.transactions_done.set()
            _last_labels(producer, labels, failures)
            producer.flush(FLUSH_TIMEOUT_S)
    finally:
        producer.close()
    if failures:
        log.warning("%d demo records were not delivered: %s", len(failures), failures[0].error)
    return sent


def _last_labels(producer: ProducerClient, labels: DemoLabels, failures: list[SendFailure]) -> None:
    """The labels still waiting: each when due, as during the run, or all once released.

    Either way the pipeline has had time to score their transactions (a label
    that comes before its prediction joins nothing). When due, it takes at
    most the schedule's longest delay.
    """
    while len(labels.schedule):
        now = float("inf") if labels.release.is_set() else time.time()
        if due := _labels(labels, now):
            send_batch(producer, due, failures.extend)
        else:
            labels.release.wait(TICK_S)


def _due(sent: int, count: int, rate: float, started: float) -> int:
    """How many records to send now: the rest of ``count``, held back to ``rate``."""
    due = count - sent if count else 1_000_000
    if rate > 0:
        target = int((time.monotonic() - started) * rate) + 1
        due = min(due, max(0, target - sent))
    return due


def _group(
    rng: random.Random,
    topic: str,
    size: int,
    bad_ratio: float,
    changes: dict[str, Any] | None = None,
    share: float = 0.0,
    clock: DemoClock | None = None,
    labels: DemoLabels | None = None,
) -> OutputGroup:
    records = [
        make_transaction(
            rng,
            bad_ratio=bad_ratio,
            clock=clock,
            **(changes if changes and rng.random() < share else {}),
        )
        for _ in range(size)
    ]
    if labels is not None:
        now = time.time()
        for record in records:
            labels.schedule.sent(record, now)
    return OutputGroup(topic, [r.value for r in records], [r.key for r in records])


def _labels(labels: DemoLabels | None, now_s: float) -> list[OutputGroup]:
    """The group of the labels due by ``now_s`` (none without labels or when none is due)."""
    if labels is None:
        return []
    due = labels.schedule.due(now_s)
    if not due:
        return []
    labels.sent += len(due)
    return [OutputGroup(labels.topic, [value for _k, value in due], [key for key, _v in due])]

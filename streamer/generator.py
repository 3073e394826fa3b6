"""The demo generator: synthetic transactions (:mod:`streamer.core.demo_data`) into a topic.

It sends through the ``kafka.client`` backend, in groups of at most
``GROUP_RECORDS`` records, and paces them to ``rate`` records per second.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from streamer.clients import OutputGroup, backend, send_batch
from streamer.clients.base import SendFailure
from streamer.core.demo_data import DemoClock, make_record
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
) -> int:
    """Produce synthetic transactions at ``rate``/s (0: at once); returns how many were sent.

    ``count`` 0 goes on until ``stop`` is set. ``produced[0]``, when given,
    follows the number sent so far. ``drift`` ('amount' or 'missing') changes
    the records after ``drift_after_s`` seconds (see :data:`DRIFTS`). With ``clock``
    the records leave ``transactions_last_hour`` to streamer's declared state
    (:func:`~streamer.core.demo_data.make_event`).
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
            group = _group(rng, topic, min(due, GROUP_RECORDS), bad_ratio, changes, share, clock)
            send_batch(producer, [group], failures.extend)
            sent += len(group)
            if produced is not None:
                produced[0] = sent
        producer.flush(FLUSH_TIMEOUT_S)
    finally:
        producer.close()
    if failures:
        log.warning("%d demo records were not delivered: %s", len(failures), failures[0].error)
    return sent


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
) -> OutputGroup:
    records = [
        make_record(
            rng,
            bad_ratio=bad_ratio,
            clock=clock,
            **(changes if changes and rng.random() < share else {}),
        )
        for _ in range(size)
    ]
    return OutputGroup(topic, [value for _key, value in records], [key for key, _value in records])

"""The demo generator: synthetic transactions (:mod:`streamer.core.demo_data`) into a topic.

It sends through the ``kafka.client`` backend, in groups of at most
``GROUP_RECORDS`` records, and paces them to ``rate`` records per second.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from streamer.clients import OutputGroup, backend, send_batch
from streamer.clients.base import SendFailure
from streamer.core.demo_data import make_record
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)

GROUP_RECORDS = 5000
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
) -> int:
    """Produce synthetic transactions at ``rate``/s (0: at once); returns how many were sent.

    ``count`` 0 goes on until ``stop`` is set. ``produced[0]``, when given,
    follows the number sent so far.
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
            group = _group(rng, topic, min(due, GROUP_RECORDS), bad_ratio)
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


def _group(rng: random.Random, topic: str, size: int, bad_ratio: float) -> OutputGroup:
    records = [make_record(rng, bad_ratio=bad_ratio) for _ in range(size)]
    return OutputGroup(topic, [value for _key, value in records], [key for key, _value in records])

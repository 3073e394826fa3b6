"""What a /metrics scrape costs with the live quality metrics of delayed labels.

Feeds ``--records`` labelled predictions (a champion and, on 80% of them, a
challenger) over ``--partitions`` partitions to the metrics, as the producer's
``LabelsJoined`` messages do, then times ``--rounds`` scrapes after one label
changed a window (the merge and the report are computed again) and as many with
nothing changed (the cached report), in CPU seconds of this process::

    python benchmarks/quality_scrape.py --records 40000 --window 10000

Results: docs/labels.md, "Live metrics".
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from prometheus_client import CollectorRegistry, generate_latest

from streamer.actors.metrics import PipelineMetrics, live_quality
from streamer.core.labels.ledger import Joined, LedgerCounts, LedgerLabel, ModelScore, Prediction
from streamer.messages import LabelsJoined
from streamer.settings import LabelsSettings

SECOND = 1_000_000


def labelled(rng: random.Random, identity: int) -> Joined:
    label = 1.0 if rng.random() < 0.1 else 0.0
    time_us = rng.randint(0, 3600) * SECOND
    champion = ModelScore("fraud", "3", round(rng.random() * 0.7 + 0.3 * label, 3), time_us)
    challengers = (
        (ModelScore("candidate", "4", round(rng.random(), 3), time_us + 5),)
        if rng.random() < 0.8
        else ()
    )
    prediction = Prediction(time_us, champion, challengers, LedgerLabel(label, time_us + SECOND))
    return Joined(identity.to_bytes(8, "big"), prediction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--window", type=int, default=10_000, help="labels.window_records")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(1)
    metrics = PipelineMetrics(CollectorRegistry())
    labels = LabelsSettings(topic="labels", window_records=args.window)
    metrics.watch_labels(live_quality(labels, 0.5))
    records = [labelled(rng, i) for i in range(args.records)]
    for start in range(0, len(records), 100):
        chunk = tuple(records[start : start + 100])
        metrics.apply(LabelsJoined(start // 100 % args.partitions, chunk, LedgerCounts(), 0))
    changed, cached = [], []
    for round_ in range(args.rounds):
        again = (records[round_],)
        metrics.apply(LabelsJoined(round_ % args.partitions, again, LedgerCounts(), 0))
        started = time.process_time()
        generate_latest(metrics.registry)
        changed.append(time.process_time() - started)
        started = time.process_time()
        generate_latest(metrics.registry)
        cached.append(time.process_time() - started)
    quality = metrics.quality
    assert quality is not None
    print(
        f"{args.records} labelled records over {args.partitions} partitions, window "
        f"{len(quality.records())}: a scrape after a change {_ms(changed)}, "
        f"with nothing changed {_ms(cached)} (CPU time, {args.rounds} rounds)"
    )


def _ms(seconds: list[float]) -> str:
    return (
        f"median {statistics.median(seconds) * 1000:.0f} ms "
        f"(min {min(seconds) * 1000:.0f}, max {max(seconds) * 1000:.0f})"
    )


if __name__ == "__main__":
    main()

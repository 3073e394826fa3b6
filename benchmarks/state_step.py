"""The consumer's state step alone: CPU µs per record of ``StateKeeper.apply``.

The bench job's (s) rows: its three window features by card over 1 h, on the
bench's records (``make_record``, seed 1), cut in batches of ``--batch``
over 4 partitions, a RocksDB ``state.dir``, the changes gathered and flushed
every 4 batches of a partition (acknowledged at once), each batch's offsets committed after
it, the garbage collector set as the daemon sets it. No broker, no actor:
what the consumer actor spends per record on state, applying the batches and
flushing their changes. ``--flush-batches 24`` flushes about as often as the
daemon's 1 s at 1,000,000 records (24 batches of a partition a second).

``--compare`` alternates rounds of the step as it is and with the typed decode
off (each value decoded by orjson into a dict, as before it), in one process:

    python benchmarks/state_step.py --records 200000 --rounds 3 --compare
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
import tomllib

from streamer.core.demo_data import make_record
from streamer.messages import SourceBatch
from streamer.settings import build_settings
from streamer.topology.heap import collect_young_less_often
from streamer.topology.state import StateKeeper

FEATURES = """
[[features]]
name = "card_count_1h"
key = "card_id"
agg = "count"
window = "1h"

[[features]]
name = "card_amount_sum_1h"
key = "card_id"
agg = "sum"
field = "amount"
window = "1h"

[[features]]
name = "card_gap_1h"
key = "card_id"
agg = "time_since_last"
window = "1h"
"""
PARTITIONS = 4
TOPIC = "bench-state"


def batches(records: int, size: int) -> list[SourceBatch]:
    """The records as the consumer cuts them: per partition by key, in offset order."""
    rng = random.Random(1)
    per_partition: dict[int, list[tuple[bytes, bytes, int]]] = {p: [] for p in range(PARTITIONS)}
    clock_ms = 1_796_555_250_000
    for _ in range(records):
        key, value = make_record(rng)
        clock_ms += 5
        per_partition[hash(key) % PARTITIONS].append((key, value, clock_ms))
    out = []
    for partition, rows in per_partition.items():
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            out.append(
                SourceBatch(
                    batch_id=len(out),
                    topic=TOPIC,
                    partition=partition,
                    seq=start // size,
                    offsets=list(range(start, start + len(chunk))),
                    keys=[k for k, _, _ in chunk],
                    values=[v for _, v, _ in chunk],
                    timestamps_ms=[t for _, _, t in chunk],
                    dispatched_at=0.0,
                )
            )
    out.sort(key=lambda b: (b.seq, b.partition))  # the partitions interleaved, as polled
    return out


def run(source: list[SourceBatch], *, typed: bool, flush_batches: int = 4) -> tuple[float, float]:
    """CPU seconds of one pass of the step over ``source``, from empty stores: applying, flushing.

    The changes are flushed every ``flush_batches`` batches of a partition.
    """
    state_dir = tempfile.mkdtemp(prefix="state-step-")
    try:
        settings = build_settings(
            {
                "kafka": {"input_topic": TOPIC, "output_topic": "out"},
                "state": {
                    "features": tomllib.loads(FEATURES)["features"],
                    "dir": state_dir,
                    "changelog_interval_s": 1.0,
                },
            },
            environ={},
        )
        keeper = StateKeeper(settings, None)
        if not typed:
            keeper._paths = None  # the decode before the typed one
        for batch in source:
            keeper.prepare((TOPIC, batch.partition))
        applying = flushing = 0.0
        for number, batch in enumerate(source, 1):
            started = time.process_time()
            keeper.apply(batch)
            keeper.committed({(TOPIC, batch.partition): batch.last_offset + 1})
            applying += time.process_time() - started
            if number % (flush_batches * PARTITIONS) == 0:
                started = time.process_time()
                for tp, flush in keeper.flushes(force=True):
                    keeper.flushed(tp, flush.flush_id)
                flushing += time.process_time() - started
        keeper.close()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return applying, flushing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="alternate with orjson's dicts")
    parser.add_argument(
        "--flush-batches",
        type=int,
        default=4,
        help="a flush every N batches of a partition (the daemon's 1 s: about 24 at 1,000,000)",
    )
    args = parser.parse_args()
    source = batches(args.records, args.batch)
    collect_young_less_often()  # as the daemon does
    modes = [("typed", True), ("orjson dicts", False)] if args.compare else [("typed", True)]
    for round_ in range(args.rounds):
        for name, typed in modes:
            applying, flushing = run(source, typed=typed, flush_batches=args.flush_batches)
            per_record = 1e6 / args.records
            total = (applying + flushing) * per_record
            print(
                f"round {round_ + 1} {name:13s} {total:6.2f} µs/record "
                f"of CPU ({applying * per_record:.2f} applying, {flushing * per_record:.2f} "
                f"flushing; {args.records:,} records)",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""The prediction ledger alone: millions of predictions into RocksDB, CPU, RSS and disk.

The daemon's code path without a broker: a :class:`LedgerKeeper` (what the
producer actor holds) records each batch's champion scores by source
coordinates into its partition's RocksDB store under a fresh ``state.dir``
(one store write per batch, with its marks and meta record) and returns the
changes the delivery would send; then one label per ``--label-every``
records is joined, in label batches. Nothing is sent: the changes are counted
and dropped, as the producer drops them once handed to its client.

Figures: CPU microseconds per prediction (per label), the process's RSS
(``VmRSS``) every million predictions and its peak (``VmHWM``), and the
stores' bytes on disk after closing them:

    python benchmarks/ledger.py --predictions 5000000
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import orjson

from streamer.messages import SourceBatch
from streamer.settings import build_settings
from streamer.topology.labels import LedgerKeeper

TOPIC = "tx"
LABELS = "tx.labels"
SCORED_AT = "2026-12-06T06:00:00.000Z"
LABELLED_AT_MS = 1_796_536_800_000 + 60_000


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` figure (kB) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def source(
    topic: str, partition: int, offsets: list[int], values: list[bytes | None]
) -> SourceBatch:
    return SourceBatch(
        batch_id=0,
        topic=topic,
        partition=partition,
        seq=0,
        offsets=offsets,
        keys=[None] * len(offsets),
        values=values,
        timestamps_ms=[0] * len(offsets),
        dispatched_at=0.0,
    )


def sent(keeper: LedgerKeeper, partition: int) -> int:
    """The changelog records of the partition's flushes due now, each acknowledged at once.

    As if the broker acknowledged every flush before the next batch: the keeper gathers
    changes while a flush is in flight, so without this every change would wait in it.
    """
    records = 0
    for flush in keeper.flushes(partition):
        records += len(flush.changes)
        keeper.flushed(flush.partition, flush.flush_id)
    return records


def join_labels(
    keeper: LedgerKeeper, next_offset: list[int], batch: int, every: int, rng: random.Random
) -> None:
    """Join one label per ``every`` recorded predictions, in label batches of ``batch``."""
    labels = 0
    label_changes = 0
    cpu = time.process_time()
    keeper_cpu = 0.0  # the keeper's calls alone, without making the label records
    for partition in range(len(next_offset)):
        chosen = range(0, next_offset[partition], every)
        for start in range(0, len(chosen), batch):
            named = chosen[start : start + batch]
            values: list[bytes | None] = [
                orjson.dumps(
                    {
                        "topic": TOPIC,
                        "partition": partition,
                        "offset": offset,
                        "label": rng.randrange(2),
                        "at": LABELLED_AT_MS,
                    }
                )
                for offset in named
            ]
            first = labels
            batch_of_labels = source(
                LABELS, partition, list(range(first, first + len(values))), values
            )
            began = time.process_time()
            keeper.join(batch_of_labels)
            label_changes += sent(keeper, partition)
            keeper_cpu += time.process_time() - began
            labels += len(values)
    join_cpu = time.process_time() - cpu
    print(
        f"joined {labels:,} labels: {join_cpu / max(labels, 1) * 1e6:.2f} us CPU each "
        f"({keeper_cpu / max(labels, 1) * 1e6:.2f} in the keeper's calls), "
        f"{label_changes / max(labels, 1):.2f} changelog records each"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--predictions", type=int, default=5_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000, help="records per scored batch")
    parser.add_argument("--label-every", type=int, default=10)
    parser.add_argument("--dir", default="", help="the state.dir (default: a temporary one)")
    args = parser.parse_args()

    state_dir = Path(args.dir or tempfile.mkdtemp(prefix="streamer-ledger-"))
    settings = build_settings(
        {
            "kafka": {"input_topic": TOPIC, "output_topic": "out", "group_id": "bench"},
            "state": {"dir": str(state_dir)},
            "labels": {"topic": LABELS, "time_field": "at"},
        },
        environ={},
    )
    keeper = LedgerKeeper(settings, None)
    rng = random.Random(23)
    rows = list(range(args.batch))
    rss_before = status_mb("VmRSS")
    print(f"RSS before: {rss_before:,.0f} MB; state.dir {state_dir}")

    batches = args.predictions // args.batch
    changes = 0
    next_offset = [0] * args.partitions
    cpu = time.process_time()
    wall = time.perf_counter()
    for index in range(batches):
        partition = index % args.partitions
        first = next_offset[partition]
        offsets = list(range(first, first + args.batch))
        next_offset[partition] += args.batch
        scores = [rng.random() for _ in rows]
        keeper.record(
            source(TOPIC, partition, offsets, [b"{}"] * args.batch),
            rows,
            scores,
            ("demo", "1"),
            SCORED_AT,
        )
        changes += sent(keeper, partition)
        done = (index + 1) * args.batch
        if done % 1_000_000 == 0:
            print(
                f"  {done:>9,} predictions: RSS {status_mb('VmRSS'):,.0f} MB, "
                f"{(time.process_time() - cpu) / done * 1e6:.2f} us CPU each"
            )
    recorded = batches * args.batch
    record_cpu = time.process_time() - cpu
    record_wall = time.perf_counter() - wall
    print(
        f"recorded {recorded:,} predictions in {record_wall:.1f} s wall, {record_cpu:.1f} s CPU: "
        f"{record_cpu / recorded * 1e6:.2f} us CPU each, {changes / recorded:.3f} changelog "
        f"records each"
    )

    join_labels(keeper, next_offset, args.batch, args.label_every, rng)
    rss_after = status_mb("VmRSS")
    keeper.close()
    disk = sum(f.stat().st_size for f in state_dir.rglob("*") if f.is_file())
    print(
        f"RSS after: {rss_after:,.0f} MB (+{rss_after - rss_before:,.0f}), peak "
        f"{status_mb('VmHWM'):,.0f} MB; on disk {disk / 2**20:,.0f} MB "
        f"({disk / max(recorded, 1):.0f} B per prediction) over {args.partitions} stores"
    )
    if not args.dir:
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

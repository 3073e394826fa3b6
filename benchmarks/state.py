"""The state engine alone: records per CPU second, RSS and store bytes, and a restore.

Three window features over 1 h (a count, a sum and a time since last, the
issue's bench job) applied in micro-batches to one partition's RocksDB store,
with N distinct keys; then the compacted changelog written into an empty
store, as a restore on assignment does. No broker: this measures the engine
that the scoring path and ``streamer features`` share, and the step around it
(decode each value, apply, enrich each value: what ``score-file`` does; the
daemon's consumer does not enrich, the preparation places the served values).

Two figures per run, in records per CPU second (CPU time is what the step
takes from the worker's one core; wall time follows the machine's load):

- ``engine``: ``PartitionState.apply`` and ``forget_served`` (the commit
  follows each batch), the records' JSON already decoded;
- ``step``: the whole state step of ``score-file``: decode each value
  (orjson), apply, forget, and enrich each value with its features.

RSS: the process's resident memory after the run minus before it (the engine's
cache of decoded keys and RocksDB's memory; the input is made batch by batch),
and its peak. ``--no-restore`` keeps no copy of the changelog (which the
restore needs), so the RSS is the engine's alone:

    python benchmarks/state.py --records 1000000 --keys 1000000 --no-restore
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import orjson

from streamer.core.features import decoded_object
from streamer.core.state.declared import parse_features
from streamer.core.state.layout import build_layout
from streamer.core.state.restore import restore
from streamer.core.state.store import Change, MemoryStore, RocksStore
from streamer.core.state.windows import PartitionState, StateInput, enrich

TABLES = [
    {"name": "n_1h", "key": "card", "agg": "count", "window": "1h", "time": "ts"},
    {
        "name": "sum_1h",
        "key": "card",
        "agg": "sum",
        "field": "amount",
        "window": "1h",
        "time": "ts",
    },
    {"name": "gap_1h", "key": "card", "agg": "time_since_last", "window": "1h", "time": "ts"},
]

MAX_RECORD_BYTES = 1_000_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """The resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--store", choices=("rocks", "memory"), default="rocks")
    parser.add_argument(
        "--no-restore", action="store_true", help="keep no changelog (RSS of the engine alone)"
    )
    return parser.parse_args()


def make_value(i: int, keys: int) -> bytes:
    """Record i: its key is one of ``keys`` cards, its time i * 10 ms."""
    return orjson.dumps({"card": f"card-{i % keys:07d}", "amount": (i % 997) / 7, "ts": i * 10})


def run(
    args: argparse.Namespace, state: PartitionState, names: tuple[str, ...]
) -> tuple[dict[str, float], dict[bytes, bytes | None]]:
    """Apply every batch as the consumer's state step does: CPU seconds per part, changelog."""
    changelog: dict[bytes, bytes | None] = {}
    cpu = {"decode": 0.0, "engine": 0.0, "enrich": 0.0}
    for at in range(0, args.records, args.batch):
        values = [make_value(i, args.keys) for i in range(at, min(at + args.batch, args.records))]
        t0 = time.process_time()
        docs = [decoded_object(value, MAX_RECORD_BYTES) for value in values]
        inputs = [
            StateInput(at + i, None, None, doc if isinstance(doc, dict) else None)
            for i, doc in enumerate(docs)
        ]
        t1 = time.process_time()
        applied = state.apply(inputs)
        forgotten = state.forget_served(at + len(inputs))  # the commit follows the batch
        t2 = time.process_time()
        enriched = [
            enrich(doc, names, served.values)
            for doc, served in zip(docs, applied.outcomes, strict=True)
            if served is not None and served.values is not None and isinstance(doc, dict)
        ]
        t3 = time.process_time()
        assert len(enriched) == len(inputs)
        cpu["decode"] += t1 - t0
        cpu["engine"] += t2 - t1
        cpu["enrich"] += t3 - t2
        for key, value in () if args.no_restore else (*applied.changes, *forgotten):
            changelog.pop(key, None)
            changelog[key] = value
    return cpu, changelog


def main() -> None:
    args = parse_args()
    layout = build_layout(parse_features(TABLES), 60_000_000)
    workdir = Path(tempfile.mkdtemp(prefix="state-bench-"))
    store = RocksStore(workdir / "events-0") if args.store == "rocks" else MemoryStore()
    state = PartitionState(layout, store, "events", 0, remember_served=True)
    rss_before = rss_mb()
    started = time.perf_counter()
    cpu, changelog = run(args, state, layout.names)
    elapsed = time.perf_counter() - started
    rss_after = rss_mb()
    live = [(k, v) for k, v in changelog.items() if v is not None]
    size = sum(len(k) + len(v) for k, v in live)
    n = args.records
    print(
        f"apply: {n:,} records, {args.keys:,} keys, batches of {args.batch}, "
        f"{args.store} store: engine {n / cpu['engine']:,.0f} records per CPU second "
        f"({cpu['engine'] * 1e6 / n:.2f} us each); step (decode "
        f"{cpu['decode'] * 1e6 / n:.2f} + engine + enrich {cpu['enrich'] * 1e6 / n:.2f} us) "
        f"{n / sum(cpu.values()):,.0f} per CPU second; {elapsed:.1f}s wall in all; "
        f"RSS {rss_before:.0f} -> {rss_after:.0f} MB (+{rss_after - rss_before:.0f}; peak "
        f"{peak_rss_mb():.0f}); "
        + (
            "no changelog kept"
            if args.no_restore
            else f"compacted changelog {len(live):,} records, {size / 1e6:.1f} MB"
        )
    )
    store.close()
    if args.store == "rocks" and not args.no_restore:
        rebuilt = RocksStore(workdir / "restored-0")
        changes: list[Change] = live
        started = time.perf_counter()
        *_, count = restore(rebuilt, changes)
        restore_s = time.perf_counter() - started
        reopened = PartitionState(layout, rebuilt, "events", 0)
        assert reopened.last_offset == args.records - 1
        print(f"restore: {count:,} changelog records in {restore_s:.1f}s")
        rebuilt.close()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

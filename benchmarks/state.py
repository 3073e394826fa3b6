"""The state engine alone: records/s, RSS and store bytes, and a restore from the changelog.

Three window features over 1 h (a count, a sum and a time since last, the
issue's bench job) applied in micro-batches to one partition's RocksDB store,
with N distinct keys; then the compacted changelog written into an empty
store, as a restore on assignment does. No broker: this measures the engine
that the scoring path and ``streamer features`` share.

    python benchmarks/state.py --records 1000000 --keys 1000000
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import orjson

from streamer.core.state.declared import parse_features
from streamer.core.state.layout import build_layout
from streamer.core.state.restore import restore
from streamer.core.state.store import Change, MemoryStore, RocksStore
from streamer.core.state.windows import PartitionState, StateInput

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


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--store", choices=("rocks", "memory"), default="rocks")
    parser.add_argument(
        "--no-restore", action="store_true", help="keep no changelog (RSS of the store alone)"
    )
    args = parser.parse_args()
    layout = build_layout(parse_features(TABLES), 60_000_000)
    workdir = Path(tempfile.mkdtemp(prefix="state-bench-"))
    store = RocksStore(workdir / "events-0") if args.store == "rocks" else MemoryStore()
    state = PartitionState(layout, store, "events", 0, remember_served=True)

    def make_value(i: int) -> bytes:
        card = f"card-{i % args.keys:07d}"
        return orjson.dumps({"card": card, "amount": (i % 997) / 7, "ts": i * 10})

    before = rss_mb()
    changelog: dict[bytes, bytes | None] = {}
    started = time.perf_counter()
    cpu_started = time.process_time()
    decode_s = 0.0
    for at in range(0, args.records, args.batch):
        t0 = time.perf_counter()
        end = min(at + args.batch, args.records)
        batch = [orjson.loads(make_value(i)) for i in range(at, end)]
        decode_s += time.perf_counter() - t0
        applied = state.apply([StateInput(at + i, None, None, d) for i, d in enumerate(batch)])
        forgotten = state.forget_served(at + len(batch))  # the commit follows the batch
        for key, value in () if args.no_restore else (*applied.changes, *forgotten):
            changelog.pop(key, None)
            changelog[key] = value
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    live = [(k, v) for k, v in changelog.items() if v is not None]
    size = sum(len(k) + len(v) for k, v in live)
    print(
        f"apply: {args.records:,} records, {args.keys:,} keys, batches of {args.batch}: "
        f"{elapsed:.1f}s, {args.records / elapsed:,.0f} records/s "
        f"({args.records / cpu:,.0f} per CPU second) "
        f"(making and decoding the JSON {decode_s:.1f}s of it); "
        f"peak RSS {before:.0f} -> {rss_mb():.0f} MB; "
        f"compacted changelog {len(live):,} records, {size / 1e6:.1f} MB"
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

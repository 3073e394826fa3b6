"""How fast each backend's ChangelogReader reads a state changelog partition (a restore's reads).

Starts the embedded broker, produces ``--records`` small records to one
partition of a compacted topic (keys and values about the size of a store's,
every tenth a tombstone), then times each client's ``high_watermark`` and a
``read`` of the whole partition, ``--rounds`` times::

    python benchmarks/changelog_read.py --records 1000000

A restore also writes what it reads into the store: benchmarks/state.py
measures that side. Results: docs/state.md, "Sizing".
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from streamer.clients import backend
from streamer.devtools.broker import EmbeddedBroker
from streamer.settings import KafkaSettings

TOPIC = "bench-changelog"
PARTITIONS = 2  # partition 1 stays empty: its high watermark is timed too


def produce(servers: str, records: int) -> None:
    """``records`` records to partition 0: 24-byte keys, 40-byte values, 1 in 10 a tombstone."""
    if importlib.util.find_spec("confluent_kafka") is None:
        from kafka import KafkaProducer

        slow = KafkaProducer(bootstrap_servers=servers.split(","), acks="all", linger_ms=20)
        for n in range(records):
            slow.send(TOPIC, key=b"card_id\x00%016d" % n, value=_value(n), partition=0)
        slow.flush(timeout=600)
        slow.close(timeout=5)
        return
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": servers,
            "acks": "all",
            "linger.ms": 20,
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    for n in range(records):
        while True:
            try:
                producer.produce(TOPIC, _value(n), b"card_id\x00%016d" % n, 0)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(600)
    assert left == 0, f"{left} records not acknowledged"


def _value(n: int) -> bytes | None:
    return None if n % 10 == 9 else b"%040d" % n


def time_reads(client: str, settings: KafkaSettings, records: int) -> None:
    chosen = backend(client)
    assert chosen.changelog_reader is not None
    reader = chosen.changelog_reader(settings, TOPIC)
    try:
        started = time.perf_counter()
        empty = reader.high_watermark(1, timeout_s=10)
        high = reader.high_watermark(0, timeout_s=10)
        watermarks_s = time.perf_counter() - started
        assert (empty, high) == (0, records), (empty, high)
        started = time.perf_counter()
        read = tombstones = 0
        for chunk in reader.read(0, 0, high):
            read += len(chunk)
            tombstones += sum(1 for _, _, value in chunk if value is None)
        read_s = time.perf_counter() - started
    finally:
        reader.close()
    assert read == records, (read, records)
    print(
        f"{client:>12}: {read:,} records ({tombstones:,} tombstones) in {read_s:.2f}s = "
        f"{read / read_s:,.0f} records/s; both high watermarks in {watermarks_s * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="confluent,kafka-python")
    args = parser.parse_args()
    log_path = Path(tempfile.mkdtemp(prefix="changelog-read-")) / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        backend("kafka-python").ensure_topics(settings, {"bench-input": PARTITIONS})
        ensure = backend("kafka-python").ensure_changelog
        assert ensure is not None
        ensure(settings, TOPIC, "bench-input")
        started = time.perf_counter()
        produce(broker.bootstrap_servers, args.records)
        print(f"produced {args.records:,} records in {time.perf_counter() - started:.1f}s")
        for _ in range(args.rounds):
            for client in args.clients.split(","):
                time_reads(client, settings, args.records)


if __name__ == "__main__":
    main()

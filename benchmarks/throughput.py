"""Throughput of streamer against the bare kafka-python consume -> score -> produce loop.

Both run in the same process run, on the same embedded broker and the same
preloaded input, so the printed ratio is meaningful on a noisy machine even
when the absolute numbers are not.

    .venv/bin/python benchmarks/throughput.py --records 100000
"""

from __future__ import annotations

import argparse
import random
import time
import uuid

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from streamer.broker import EmbeddedBroker
from streamer.client import ensure_topics
from streamer.core.demo_data import make_record
from streamer.core.model import load_linear
from streamer.settings import KafkaSettings, build_settings
from streamer.topology import Pipeline

GROUP_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def preload(bootstrap: str, topic: str, count: int) -> None:
    rng = random.Random(1)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=262144
    )
    for _ in range(count):
        key, value = make_record(rng)
        producer.send(topic, value=value, key=key)
    producer.flush(timeout=120)
    producer.close(timeout=5)


def bare_loop(bootstrap: str, topic: str, out_topic: str, count: int) -> float:
    """The floor: one thread, poll 5000, decode, score with numpy, send, flush, commit."""
    model = load_linear(None)
    names = model.spec.names
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
        fetch_max_wait_ms=20,
        **GROUP_TIMEOUTS,
    )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=262144
    )
    done = 0
    started = None
    while done < count:
        polled = consumer.poll(timeout_ms=200)
        if not polled:
            continue
        if started is None:
            started = time.perf_counter()
        offsets = {}
        for tp, records in polled.items():
            docs = [orjson.loads(r.value) for r in records]
            x = np.array([[d[n] for n in names] for d in docs], dtype=np.float64)
            scores = model.predict((x - model.spec.mean) / model.spec.std).tolist()
            for r, s in zip(records, scores, strict=True):
                producer.send(
                    out_topic, key=r.key, value=orjson.dumps({"offset": r.offset, "score": s})
                )
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, None, -1)
            done += len(records)
        producer.flush()
        consumer.commit(offsets)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close(autocommit=False, timeout_ms=5000)
    producer.close(timeout=5)
    return count / elapsed


def streamer_run(
    bootstrap: str, topic: str, out_topic: str, count: int, **overrides: object
) -> float:
    batch = {"max_records": overrides.pop("max_records", 1000)}
    settings = build_settings(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "input_topic": topic,
                "output_topic": out_topic,
                "group_id": f"streamer-{uuid.uuid4().hex[:8]}",
                "session_timeout_s": 6.0,
                "heartbeat_interval_s": 1.0,
            },
            "batch": batch,
            "metrics": {"enabled": False},
            **overrides,
        },
        environ={},
    )
    registry = CollectorRegistry()
    pipeline = Pipeline(settings, registry=registry)
    pipeline.start()
    started = None
    try:
        while True:
            consumed = registry.get_sample_value("streamer_records_consumed_total") or 0
            if consumed and started is None:
                started = time.perf_counter()
            # Every input is scored or dead-lettered exactly once: the consumer's
            # watermark reaching the end means all of it was acknowledged.
            status = pipeline.consumer_status()
            if sum(status["watermarks"].values()) >= count:
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        pipeline.stop()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topic = f"bench-in-{uuid.uuid4().hex[:6]}"
        outs = [f"bench-out-{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        ensure_topics(
            kafka,
            {topic: args.partitions, f"{topic}.dlq": 1, **dict.fromkeys(outs, args.partitions)},
        )
        preload(bootstrap, topic, args.records)
        rows = []
        floor = bare_loop(bootstrap, topic, outs[0], args.records)
        rows.append(("bare kafka-python loop (floor)", floor))
        rows.append(
            (
                "streamer 2x2 actors, batch 1000",
                streamer_run(bootstrap, topic, outs[1], args.records),
            )
        )
        rows.append(
            (
                "streamer 1x1 actors, batch 5000",
                streamer_run(
                    bootstrap,
                    topic,
                    outs[2],
                    args.records,
                    max_records=5000,
                    preprocess={"workers": 1},
                    model={"workers": 1},
                ),
            )
        )
    print(f"\n{args.records} records, {args.partitions} partitions, embedded broker")
    print(f"{'run':<36} {'records/s':>10} {'x floor':>8}")
    for name, rate in rows:
        print(f"{name:<36} {rate:>10.0f} {rate / floor:>8.2f}")


if __name__ == "__main__":
    main()

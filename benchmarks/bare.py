"""The floors: a bare single-thread consume -> decode -> score -> produce -> commit loop.

One per client library, each written the way a careful user would: polls of
5000 records, orjson, numpy scoring with the demo model, one output per
record, then wait for every acknowledgement and commit synchronously before
the next poll (at-least-once, like streamer). The output is the document
streamer writes (key, topic, partition, offset, score, model, scored_at;
about 190 B), so that the floor does the same job. Run by ``bench.py`` in a fresh
interpreter; prints one JSON line.

    python benchmarks/bare.py --backend confluent --bootstrap 127.0.0.1:9092 \\
        --topic in --output out --count 200000
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable

import numpy as np
import orjson

from streamer.core.models.linear import load_linear
from streamer.core.output import iso_now

GROUP = {"session_ms": 6000, "heartbeat_ms": 1000}  # --session-ms changes the first


_DEMO = load_linear(None)
_MODEL_ABOUT = {"name": _DEMO.name, "version": _DEMO.version}


def _output(topic: str, partition: int) -> Callable[[bytes | None, int, float], bytes]:
    """One output document per record, as streamer writes it, with ``orjson.dumps``."""
    about = _MODEL_ABOUT
    scored_at = iso_now()  # once per partition of a poll, as streamer does per batch

    def output(key: bytes | None, offset: int, score: float) -> bytes:
        return orjson.dumps(
            {
                "key": None if key is None else key.decode("utf-8", "backslashreplace"),
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "score": score,
                "model": about,
                "scored_at": scored_at,
            }
        )

    return output


def _scorer() -> Callable[[list[bytes]], list[float]]:
    model = load_linear(None)
    names = model.spec.names
    mean, std = model.spec.mean, model.spec.std

    def score(values: list[bytes]) -> list[float]:
        docs = [orjson.loads(v) for v in values]
        x = np.array([[d[n] for n in names] for d in docs], dtype=np.float64)
        scores: list[float] = model.predict((x - mean) / std).tolist()
        return scores

    return score


def kafka_python_loop(bootstrap: str, topic: str, output: str, count: int) -> float:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata

    score = _scorer()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
        fetch_max_wait_ms=20,
        session_timeout_ms=GROUP["session_ms"],
        heartbeat_interval_ms=GROUP["heartbeat_ms"],
    )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=262144
    )
    done = 0
    started: float | None = None
    while done < count:
        polled = consumer.poll(timeout_ms=200)
        if not polled:
            continue
        if started is None:
            started = time.perf_counter()
        offsets = {}
        for tp, records in polled.items():
            scores = score([r.value for r in records])
            encode = _output(tp.topic, tp.partition)
            for r, s in zip(records, scores, strict=True):
                producer.send(output, key=r.key, value=encode(r.key, r.offset, s))
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, None, -1)
            done += len(records)
        producer.flush()
        consumer.commit(offsets)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close(autocommit=False, timeout_ms=5000)
    producer.close(timeout=5)
    return count / elapsed


def confluent_loop(bootstrap: str, topic: str, output: str, count: int) -> float:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    score = _scorer()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 10,
            "session.timeout.ms": GROUP["session_ms"],
            "heartbeat.interval.ms": GROUP["heartbeat_ms"],
        }
    )
    consumer.subscribe([topic])
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 262144,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    failed: list[str] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            failed.append(str(error))

    done = 0
    started: float | None = None
    while done < count:
        messages = consumer.consume(5000, 0.2)
        if not messages:
            continue
        if started is None:
            started = time.perf_counter()
        scores = score([m.value() or b"" for m in messages])
        ends: dict[tuple[str, int], int] = {}
        encoders: dict[int, Callable[[bytes | None, int, float], bytes]] = {}
        for m, s in zip(messages, scores, strict=True):
            offset, key, partition = m.offset() or 0, m.key(), m.partition() or 0
            encode = encoders.get(partition) or encoders.setdefault(
                partition, _output(topic, partition)
            )
            producer.produce(output, encode(key, offset, s), key, on_delivery=on_delivery)
            ends[(topic, partition)] = offset + 1
        producer.flush(30)
        if failed:
            raise KafkaException(failed[0])
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False
        )
        done += len(messages)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return count / elapsed


LOOPS = {"kafka-python": kafka_python_loop, "confluent": confluent_loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=sorted(LOOPS), required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--session-ms", type=int, default=6000)
    args = parser.parse_args()
    GROUP["session_ms"] = args.session_ms
    rate = LOOPS[args.backend](args.bootstrap, args.topic, args.output, args.count)
    print(json.dumps({"records_per_s": rate}))


if __name__ == "__main__":
    main()

"""The latency floor of (c): a bare confluent consume -> produce pass-through loop.

No decoding, no scoring, no actors: each record's key and value (wrapped in
``{"partition", "offset", "value"}``) are produced to the output topic as they
come, with the client settings of streamer's latency rows (``fetch.wait.max.ms``
5, linger 5 ms, acks=all, idempotence), in a consumer group that commits what
was acknowledged every 0.5 s. A record crosses the broker twice, as in
streamer, and nothing else. Runs until SIGTERM; prints ``ready`` once it holds
its partitions.

    python benchmarks/passthrough.py --bootstrap 127.0.0.1:9092 --topic in --output out
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid
from typing import Any

COMMIT_EVERY_S = 0.5


def main() -> int:
    from confluent_kafka import Consumer, Producer, TopicPartition

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--fetch-wait-ms", type=int, default=5)
    parser.add_argument("--linger-ms", type=float, default=5.0)
    parser.add_argument("--session-ms", type=int, default=6000)
    args = parser.parse_args()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    assigned: list[Any] = []
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"passthrough-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": args.fetch_wait_ms,
            "fetch.queue.backoff.ms": 10,
            "session.timeout.ms": args.session_ms,
            "heartbeat.interval.ms": 1000,
        }
    )
    consumer.subscribe([args.topic], on_assign=lambda _c, parts: assigned.extend(parts))
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": args.linger_ms,
            "partitioner": "murmur2_random",
        }
    )
    acked: dict[tuple[str, int], int] = {}

    def delivered(error: Any, _message: Any, tp: tuple[str, int], offset: int) -> None:
        if error is None and offset >= acked.get(tp, -1):
            acked[tp] = offset + 1

    announced = False
    last_commit = time.monotonic()
    produce, poll = producer.produce, producer.poll
    while not stopping:
        # Wait for the first record only, then take what is already fetched (as streamer does).
        first = consumer.poll(0.05)
        if not announced and assigned:
            print("ready", flush=True)
            announced = True
        if first is not None:
            for message in [first, *consumer.consume(5000, 0)]:
                if message.error() is not None:
                    continue
                tp, offset = (message.topic(), message.partition()), message.offset()
                # The input's value, wrapped with its partition and offset: the
                # bench's reader names each output's input by them.
                value = b'{"partition":%d,"offset":%d,"value":%s}' % (
                    tp[1],
                    offset,
                    message.value(),
                )
                produce(
                    args.output,
                    value,
                    message.key(),
                    on_delivery=lambda e, m, tp=tp, o=offset: delivered(e, m, tp, o),
                )
        poll(0)
        now = time.monotonic()
        if acked and now - last_commit >= COMMIT_EVERY_S:
            last_commit = now
            offsets = [TopicPartition(t, p, o) for (t, p), o in acked.items()]
            consumer.commit(offsets=offsets, asynchronous=True)
    producer.flush(10)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

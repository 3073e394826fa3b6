"""The latency floor of (c): a bare confluent consume -> produce pass-through loop.

No decoding, no scoring, no actors: each record's key and value (wrapped in
``{"partition", "offset", "value"}``) are produced to the output topic as they
come, with the client settings of a latency test on Tansu (``fetch.wait.max.ms``
5, linger 5 ms, acks=all, idempotence), in a consumer group: the first record
with ``poll``, then what is prefetched with ``consume(10000, 0)``. No delivery
callback and no commits: they are off a record's path, and a Python callback
per record only made this floor slower. A record crosses the broker twice, as
in streamer, and nothing else. Runs until SIGTERM; prints ``ready`` once it holds
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


def main() -> int:
    from confluent_kafka import Consumer, Producer

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--fetch-wait-ms", type=int, default=5)
    parser.add_argument("--linger-ms", type=float, default=5.0)
    parser.add_argument("--session-ms", type=int, default=6000)
    parser.add_argument("--hops", action="store_true", help="print the first hop's quantiles")
    args = parser.parse_args()
    hops: list[float] = []
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
            # streamer's prefetch queue and fetch size (clients/confluent.py, batching.py)
            "queued.max.messages.kbytes": 4096,
            "fetch.max.bytes": 4 << 20,
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
    announced = False
    produce, poll = producer.produce, producer.poll
    while not stopping:
        # Wait for the first record only, then take what is already fetched (as streamer does).
        first = consumer.poll(0.05)
        if not announced and assigned:
            print("ready", flush=True)
            announced = True
        if first is not None:
            batch = [first, *consumer.consume(10_000, 0)]
            if args.hops:
                now_ms = time.time() * 1000
                hops.extend(now_ms - m.timestamp()[1] for m in batch if m.error() is None)
            for message in batch:
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
                produce(args.output, value, message.key())
        poll(0)
    producer.flush(10)
    consumer.close()
    if hops:
        hops.sort()
        q = {f"p{p}": round(hops[int(len(hops) * p / 100) - 1], 1) for p in (50, 95, 99)}
        print(f"first hop (CreateTime -> consumed), ms: {q}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The latency floor of (c): a bare consume -> produce pass-through loop.

No decoding, no scoring, no actors: each record's key and value (wrapped in
``{"partition", "offset", "value"}``) are produced to the output topic as they
come, with the client settings of a latency test on Tansu (``fetch.wait.max.ms``
5, linger 5 ms, acks=all, idempotence), in a consumer group: the first record
with ``poll``, then what is prefetched with ``consume(10000, 0)``. No delivery
callback and no commits: they are off a record's path, and a Python callback
per record only made this floor slower. A record crosses the broker twice, as
in streamer, and nothing else. Runs until SIGTERM; prints ``ready`` once it holds
its partitions.

With ``--handoffs K`` it is the probe of what a thread hop costs: each polled batch
goes through K Pykka actors in a chain (a ``tell`` each, as streamer's consumer ->
preprocessor -> model -> producer hands a batch on) and the last one produces it;
nothing else changes (the poll, the wrapping, the producer, the process).

With ``--client kafka-python`` it is the kafka-python backend's floor: the same loop
with kafka-python's consumer and producer (``poll`` for what is fetched, ``send`` per
record, streamer's producer settings: acks=all, the linger). The confluent loop is
the floor of the issue's target; this one shows what the slower client costs alone.
``--handoffs K`` goes with either client: with kafka-python it is the floor of
streamer's actor shape on that client, whose I/O threads share the GIL with the hops.

    python benchmarks/passthrough.py --bootstrap 127.0.0.1:9092 --topic in --output out
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--fetch-wait-ms", type=int, default=5)
    parser.add_argument("--linger-ms", type=float, default=5.0)
    parser.add_argument("--session-ms", type=int, default=6000)
    parser.add_argument("--hops", action="store_true", help="print the first hop's quantiles")
    parser.add_argument(
        "--handoffs", type=int, default=0, help="hand each batch through this many Pykka actors"
    )
    parser.add_argument("--client", choices=("confluent", "kafka-python"), default="confluent")
    args = parser.parse_args()
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    if args.client == "kafka-python":
        if args.hops:
            parser.error("--hops goes with the confluent client only")
        _kafka_python_loop(args, stopping)
        return 0
    return _confluent_loop(args, stopping)


def _wrapped(partition: int, offset: int, value: bytes | None) -> bytes:
    """The input's value with its partition and offset: the bench's reader names each
    output's input by them."""
    return b'{"partition":%d,"offset":%d,"value":%s}' % (partition, offset, value)


def _kafka_python_loop(args: argparse.Namespace, stopping: list[bool]) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=f"passthrough-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=args.fetch_wait_ms,
        session_timeout_ms=args.session_ms,
        heartbeat_interval_ms=1000,
        max_poll_records=10_000,
    )
    consumer.subscribe([args.topic])
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", linger_ms=int(args.linger_ms)
    )
    send, output = producer.send, args.output
    announced = False

    def pass_on(polled: dict[Any, list[Any]]) -> None:
        for tp, records in polled.items():
            for record in records:
                send(
                    output,
                    value=_wrapped(tp.partition, record.offset, record.value),
                    key=record.key,
                )

    waits: list[list[float]] = []
    handle = _chain(args.handoffs, pass_on, waits)
    while not stopping:
        # poll returns what is fetched, waiting only while nothing is (as streamer's does).
        polled = consumer.poll(timeout_ms=50, max_records=10_000)
        if not announced and consumer.assignment():
            print("ready", flush=True)
            announced = True
        if polled:
            handle(polled)
    if args.handoffs:
        import pykka

        pykka.ActorRegistry.stop_all()
    producer.flush(10)
    consumer.close(autocommit=False)
    _print_waits(waits)


def _confluent_loop(args: argparse.Namespace, stopping: list[bool]) -> int:
    from confluent_kafka import Consumer, Producer

    hops: list[float] = []
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

    def pass_on(batch: list[Any]) -> None:
        for message in batch:
            if message.error() is not None:
                continue
            value = _wrapped(message.partition(), message.offset(), message.value())
            produce(args.output, value, message.key())

    waits: list[list[float]] = []
    handle = _chain(args.handoffs, pass_on, waits)
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
            handle(batch)
        poll(0)
    if args.handoffs:
        import pykka

        pykka.ActorRegistry.stop_all()
    producer.flush(10)
    consumer.close()
    _print_waits(waits)
    if hops:
        hops.sort()
        q = {f"p{p}": round(hops[int(len(hops) * p / 100) - 1], 1) for p in (50, 95, 99)}
        print(f"first hop (CreateTime -> consumed), ms: {q}", file=sys.stderr)
    return 0


def _print_waits(waits: list[list[float]]) -> None:
    """Each thread hop's wait per batch and the sum of a batch's waits (ms), to stderr."""
    count = min(map(len, waits), default=0)
    if not count:
        return
    # The actors keep the batches' order, so a batch's waits are at one index.
    total = [sum(waited[i] for waited in waits) for i in range(count)]
    for name, waited in [*((f"hop {n}", w) for n, w in enumerate(waits, 1)), ("all hops", total)]:
        ordered = sorted(waited)
        q = {
            f"p{p:g}": round(1000 * ordered[min(count - 1, int(count * p / 100))], 2)
            for p in (50, 99, 99.9)
        }
        q["max"] = round(1000 * ordered[-1], 2)
        print(f"thread {name}, tell -> on_receive, ms, {count} batches: {q}", file=sys.stderr)


def _chain(
    handoffs: int, last: Callable[[list[Any]], None], waits: list[list[float]]
) -> Callable[[list[Any]], None]:
    """``last`` itself, or a ``tell`` to the first of ``handoffs`` actors that pass a batch on.

    ``waits[i]`` gets each batch's wait at hop i (``tell`` -> the actor's ``on_receive``), s.
    """
    if not handoffs:
        return last
    import pykka

    class Stage(pykka.ThreadingActor):
        use_daemon_thread = True

        def __init__(self, forward: Callable[[Any], None], waited: list[float]) -> None:
            super().__init__()
            self._forward = forward
            self._waited = waited

        def on_receive(self, message: Any) -> None:
            sent_at, batch = message
            self._waited.append(time.perf_counter() - sent_at)
            self._forward(batch if self._forward is last else (time.perf_counter(), batch))

    forward: Callable[[Any], None] = last
    for _ in range(handoffs):
        waits.insert(0, [])
        forward = Stage.start(forward, waits[0]).tell
    first = forward
    return lambda batch: first((time.perf_counter(), batch))


if __name__ == "__main__":
    sys.exit(main())

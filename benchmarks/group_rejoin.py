"""The embedded Tansu broker's group stall, reproduced without streamer.

Two consumers own a 4-partition topic; both leave the group (``close()``, which
sends LeaveGroup), and two new consumers join it at once, as the workers of a
restarted ``streamer run --workers 2`` do. Each round prints how long until the
new consumers own every partition (``--limit-s`` at most)::

    python benchmarks/group_rejoin.py --client kafka-python --rounds 6
    python benchmarks/group_rejoin.py --client confluent --rounds 6

On Apache Kafka each round takes group.initial.rebalance.delay.ms (3 s) plus the
join. On the embedded Tansu broker about half of the rounds stall for 10 s to
over 60 s (docs/operations.md, "Worker processes").
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from streamer.clients.kafka_python import ensure_topics
from streamer.devtools.broker import EmbeddedBroker
from streamer.settings import KafkaSettings

PARTITIONS = 4


def kafka_python_member(servers: str, topic: str, group: str) -> Any:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=servers.split(","),
        group_id=group,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        enable_auto_commit=False,
    )
    consumer.subscribe([topic])
    return consumer


def confluent_member(servers: str, topic: str, group: str) -> Any:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": group,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    return consumer


def owned(consumer: Any) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


def poll(consumer: Any, client: str) -> None:
    if client == "confluent":
        consumer.poll(0.1)
    else:
        consumer.poll(timeout_ms=100)


def join(members: list[Any], client: str, limit_s: float) -> float | None:
    """Poll every member until together they own every partition; seconds, or None."""
    started = time.monotonic()
    done = threading.Event()

    def run(member: Any) -> None:
        while not done.is_set() and time.monotonic() - started < limit_s:
            poll(member, client)

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    try:
        while time.monotonic() - started < limit_s:
            if set().union(*map(owned, members)) == set(range(PARTITIONS)):
                return time.monotonic() - started
            time.sleep(0.05)
        return None
    finally:
        done.set()
        for thread in threads:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=("kafka-python", "confluent"), default="kafka-python")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--limit-s", type=float, default=60.0)
    args = parser.parse_args()
    member = confluent_member if args.client == "confluent" else kafka_python_member
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        servers = broker.bootstrap_servers
        topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
        ensure_topics(KafkaSettings(bootstrap_servers=servers), {topic: PARTITIONS})
        members = [member(servers, topic, group) for _ in range(2)]
        first = join(members, args.client, args.limit_s)
        print(f"the first members own every partition after {first or float('nan'):.1f}s")
        for round_ in range(args.rounds):
            for old in members:
                old.close()
            members = [member(servers, topic, group) for _ in range(2)]
            seconds = join(members, args.client, args.limit_s)
            shown = f"{seconds:.1f}s" if seconds is not None else f"not in {args.limit_s:.0f}s"
            print(f"round {round_}: the new members own every partition after {shown}")
        for old in members:
            old.close()


if __name__ == "__main__":
    main()

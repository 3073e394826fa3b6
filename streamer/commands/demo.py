"""``streamer demo`` and ``streamer produce-demo``."""

from __future__ import annotations

import argparse
import os
import threading

from streamer.commands.common import add_common
from streamer.signals import GracefulSignals


def add_produce_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``produce-demo``."""
    gen = sub.add_parser("produce-demo", help="produce synthetic transactions to a topic")
    gen.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("STREAMER_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    gen.add_argument("--topic", default="transactions")
    gen.add_argument(
        "--rate", type=float, default=1000.0, help="records per second; 0 = as fast as possible"
    )
    gen.add_argument("--count", type=int, default=10_000, help="records to produce; 0 = forever")
    gen.add_argument("--bad-ratio", type=float, default=0.001, help="share of malformed records")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument(
        "--partitions", type=int, default=4, help="partitions when the topic is created"
    )
    add_common(gen)
    gen.set_defaults(handler=cmd_produce_demo)


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    demo = sub.add_parser(
        "demo", help="embedded broker + generator + pipeline with a live progress line"
    )
    demo.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    demo.add_argument("--rate", type=float, default=5000.0)
    demo.add_argument("--partitions", type=int, default=4)
    demo.add_argument("--metrics-port", type=int, default=9400)
    demo.add_argument(
        "--summary-timeout",
        type=float,
        default=30.0,
        help="seconds without progress after which the closing summary gives up (default 30)",
    )
    demo.add_argument(
        "--drift",
        choices=("amount", "missing"),
        help="make the generator drift: 'amount' triples the amounts, 'missing' stops "
        "sending merchant_risk",
    )
    demo.add_argument(
        "--drift-after", type=float, default=30.0, help="seconds before --drift starts"
    )
    add_common(demo)
    demo.set_defaults(handler=cmd_demo)


def cmd_produce_demo(args: argparse.Namespace) -> int:
    """The demo generator as a command."""
    from streamer.clients import backend  # noqa: PLC0415
    from streamer.generator import produce_demo  # noqa: PLC0415
    from streamer.settings import KafkaSettings  # noqa: PLC0415

    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers)
    backend(kafka.client).ensure_topics(kafka, {args.topic: args.partitions})
    stop = threading.Event()
    GracefulSignals(lambda _signum: stop.set()).install()
    sent = produce_demo(
        kafka,
        args.topic,
        rate=args.rate,
        count=args.count,
        bad_ratio=args.bad_ratio,
        seed=args.seed,
        stop=stop,
    )
    print(f"produced {sent} records to {args.topic}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded broker, the generator and the pipeline, with a closing summary."""
    from streamer.demo import run_demo  # noqa: PLC0415

    return run_demo(
        duration_s=args.duration,
        rate=args.rate,
        partitions=args.partitions,
        metrics_port=args.metrics_port,
        summary_timeout_s=args.summary_timeout,
        drift=args.drift or "",
        drift_after_s=args.drift_after,
    )

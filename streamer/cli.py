"""The ``streamer`` command: parse args -> settings -> topology; wait for a signal; exit code.

Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration or model,
and 128+N when a second signal N forces an immediate exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from streamer import __version__
from streamer.errors import ConfigError, StreamerError
from streamer.logsetup import hide_secrets, redact, setup_logging
from streamer.settings import SECTIONS, Settings, field_docs, load_settings

log = logging.getLogger("streamer")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", default="text", choices=("text", "json"))


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="TOML config file")
    parser.add_argument("--bootstrap-servers", dest="kafka.bootstrap_servers")
    parser.add_argument("--input-topic", dest="kafka.input_topic")
    parser.add_argument("--output-topic", dest="kafka.output_topic")
    parser.add_argument("--dead-letter-topic", dest="kafka.dead_letter_topic")
    parser.add_argument("--group-id", dest="kafka.group_id")
    parser.add_argument("--model-path", dest="model.path")
    parser.add_argument("--metrics-port", dest="metrics.port", type=int)
    parser.add_argument("--max-records", dest="batch.max_records", type=int)
    parser.add_argument("--max-in-flight", dest="batch.max_in_flight", type=int)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="streamer", description="Score Kafka event streams with Pykka actors."
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the scoring daemon")
    _add_overrides(run)
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pipeline processes in one consumer group under one parent (default 1: no parent)",
    )
    _add_common(run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", nargs="?", help="TOML config file")
    check.add_argument("--show", action="store_true", help="print the effective settings")

    ref = sub.add_parser(
        "config-reference", help="print every option with its type, default and doc"
    )
    ref.add_argument("--markdown", action="store_true")

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
    _add_common(gen)

    replay = sub.add_parser(
        "replay-dlq", help="send dead letters back to the input topic (after a fix)"
    )
    _add_overrides(replay)
    replay.add_argument(
        "--reason", action="append", help="replay only this reason (repeatable); default all"
    )
    replay.add_argument("--limit", type=int, default=0, help="most records to replay; 0 = all")
    replay.add_argument("--dry-run", action="store_true", help="count only; produce nothing")
    _add_common(replay)

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
    _add_common(demo)
    from streamer.filemode import add_commands  # noqa: PLC0415 - keeps the imports light

    add_commands(sub, _add_common)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


class _Signals:
    """First SIGTERM/SIGINT asks for a graceful stop; a second one exits at once."""

    def __init__(self, on_first: Any) -> None:
        self._on_first = on_first
        self.received = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received += 1
        if self.received == 1:
            log.info(
                "%s received: draining (send it again to exit at once)", signal.Signals(signum).name
            )
            self._on_first()
        else:
            log.warning("second signal: exiting now without draining")
            os._exit(128 + signum)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until a signal or a failure."""
    from streamer.topology import Pipeline  # noqa: PLC0415 - keep check-config fast

    settings = load_settings(args.config, overrides=_overrides(args))
    hide_secrets(settings.kafka.sasl_password)
    if args.workers < 1:
        msg = f"config error: --workers must be >= 1, got {args.workers}"
        raise ConfigError(msg)
    if args.workers > 1:
        from streamer.workers import run_workers  # noqa: PLC0415

        return run_workers(
            settings, args.workers, log_level=args.log_level, log_format=args.log_format
        )
    pipeline = Pipeline(settings)
    signals = _Signals(pipeline.request_stop)
    signals.install()
    # SIGHUP reloads the model (in the background; a failed reload keeps the old one).
    signal.signal(signal.SIGHUP, lambda _signum, _frame: pipeline.request_reload())
    pipeline.start()
    pipeline.run_until_stopped()
    report = pipeline.stop()
    return report.exit_code


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config and its model without starting anything."""
    from streamer.core.models import load_configured  # noqa: PLC0415

    settings = load_settings(args.file)
    hide_secrets(settings.kafka.sasl_password)
    model = load_configured(settings)
    print(
        f"{args.file or '(defaults and environment)'}: ok; model {model.name} {model.version}, "
        f"features {', '.join(model.spec.names)}"
    )
    if args.show:
        print(_describe(settings))
    return 0


def _describe(settings: Settings) -> str:
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        values = getattr(settings, section)
        for name, _type, _default, _doc in field_docs(SECTIONS[section]):
            value = getattr(values, name)
            shown = "***" if "password" in name and value else repr(value)
            lines.append(f"{name} = {shown}")
    return "\n".join(lines)


def cmd_config_reference(args: argparse.Namespace) -> int:
    """Print the option reference."""
    for section, cls in SECTIONS.items():
        if args.markdown:
            print(f"\n**[{section}]**\n\n| key | type | default | meaning |\n|---|---|---|---|")
        else:
            print(f"[{section}]")
        for name, type_name, default, doc in field_docs(cls):
            if args.markdown:
                print(f"| `{name}` | {type_name} | `{default!r}` | {doc} |")
            else:
                print(f"  {name} ({type_name}, default {default!r}): {doc}")
    return 0


def produce_demo(
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float,
    count: int,
    bad_ratio: float,
    seed: int | None = None,
    stop: threading.Event | None = None,
    produced: list[int] | None = None,
) -> int:
    """Produce synthetic transactions at ``rate``/s; returns how many were acknowledged."""
    from kafka import KafkaProducer  # noqa: PLC0415

    from streamer.core.demo_data import make_record  # noqa: PLC0415

    rng = random.Random(seed)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers.split(","), acks="all", linger_ms=5, batch_size=131072
    )
    sent = 0
    started = time.monotonic()
    tick = 0.01
    try:
        while (count == 0 or sent < count) and not (stop is not None and stop.is_set()):
            due = count - sent if count else 1_000_000
            if rate > 0:
                target = int((time.monotonic() - started) * rate) + 1
                due = min(due, max(0, target - sent))
                if due == 0:
                    time.sleep(tick)
                    continue
            for _ in range(min(due, 5000)):
                key, value = make_record(rng, bad_ratio=bad_ratio)
                producer.send(topic, value=value, key=key)
                sent += 1
            if produced is not None:
                produced[0] = sent
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=5)
    return sent


def cmd_produce_demo(args: argparse.Namespace) -> int:
    """The demo generator as a command."""
    from streamer.clients.kafka_python import ensure_topics  # noqa: PLC0415
    from streamer.settings import KafkaSettings  # noqa: PLC0415

    ensure_topics(
        KafkaSettings(bootstrap_servers=args.bootstrap_servers), {args.topic: args.partitions}
    )
    stop = threading.Event()
    signals = _Signals(stop.set)
    signals.install()
    sent = produce_demo(
        args.bootstrap_servers,
        args.topic,
        rate=args.rate,
        count=args.count,
        bad_ratio=args.bad_ratio,
        seed=args.seed,
        stop=stop,
    )
    print(f"produced {sent} records to {args.topic}")
    return 0


def cmd_replay_dlq(args: argparse.Namespace) -> int:
    """Replay the dead-letter topic into the input topic."""
    from streamer.replay import replay_dead_letters  # noqa: PLC0415

    settings = load_settings(args.config, overrides=_overrides(args))
    hide_secrets(settings.kafka.sasl_password)
    report = replay_dead_letters(
        settings,
        reasons=set(args.reason) if args.reason else None,
        limit=args.limit,
        dry_run=args.dry_run,
    )
    verb = "would replay" if args.dry_run else "replayed"
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(report.by_reason.items())) or "none"
    print(
        f"{verb} {report.replayed} dead letters from {settings.kafka.dead_letter_topic_name} "
        f"to {settings.kafka.input_topic} ({reasons}); skipped {report.skipped}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamer`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    handlers = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "config-reference": cmd_config_reference,
        "produce-demo": cmd_produce_demo,
        "replay-dlq": cmd_replay_dlq,
        "demo": _cmd_demo,
        "score-file": _cmd_score_file,
        "fit-stats": _cmd_fit_stats,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"streamer: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except StreamerError as exc:
        print(f"streamer: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("streamer: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every command ends in one line, never in a traceback
        log.debug("unexpected error", exc_info=True)
        hint = "; --log-level DEBUG shows the traceback" if hasattr(args, "log_level") else ""
        text = " ".join(redact(str(exc)).split())
        print(f"streamer: unexpected error: {type(exc).__name__}: {text}{hint}", file=sys.stderr)
        return 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import run_demo  # noqa: PLC0415

    return run_demo(
        duration_s=args.duration,
        rate=args.rate,
        partitions=args.partitions,
        metrics_port=args.metrics_port,
        summary_timeout_s=args.summary_timeout,
    )


def _cmd_score_file(args: argparse.Namespace) -> int:
    from streamer.filemode import cmd_score_file  # noqa: PLC0415

    return cmd_score_file(args)


def _cmd_fit_stats(args: argparse.Namespace) -> int:
    from streamer.filemode import cmd_fit_stats  # noqa: PLC0415

    return cmd_fit_stats(args)

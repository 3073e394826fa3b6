"""``streamer replay-dlq``: dead letters back to the input topic."""

from __future__ import annotations

import argparse

from streamer.commands.common import add_common, add_overrides, overrides
from streamer.logsetup import hide_secrets
from streamer.settings import load_settings, secret_values


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay-dlq``."""
    replay = sub.add_parser(
        "replay-dlq", help="send dead letters back to the input topic (after a fix)"
    )
    add_overrides(replay)
    replay.add_argument(
        "--reason", action="append", help="replay only this reason (repeatable); default all"
    )
    replay.add_argument("--limit", type=int, default=0, help="most records to replay; 0 = all")
    replay.add_argument("--dry-run", action="store_true", help="count only; produce nothing")
    add_common(replay)
    replay.set_defaults(handler=cmd_replay_dlq)


def cmd_replay_dlq(args: argparse.Namespace) -> int:
    """Replay the dead-letter topic into the input topic."""
    from streamer.replay import replay_dead_letters  # noqa: PLC0415

    settings = load_settings(args.config, overrides=overrides(args))
    hide_secrets(*secret_values(settings))
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

"""The ``streamer`` command: parse args -> settings -> the command; one line on failure.

Every subcommand's flags live in this package, one module per command or
pair of commands; each module imports library code only, the heavy parts
lazily so that ``check-config`` and ``--help`` stay fast.

Exit codes: 0 clean stop (also a stop requested while still waiting for the
broker at start), 1 runtime failure, 2 bad configuration or model, and 128+N
when a second signal N forces an immediate exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from streamer import __version__
from streamer.commands import config, demo, evaluate, files, replay, run
from streamer.errors import StreamerError
from streamer.logsetup import final_line, redact, setup_logging

log = logging.getLogger("streamer")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand; each sets its ``handler``."""
    parser = argparse.ArgumentParser(
        prog="streamer", description="Score Kafka event streams with Pykka actors."
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    config.add_check_config(sub)
    config.add_config_reference(sub)
    demo.add_produce_demo(sub)
    replay.add_parser(sub)
    demo.add_demo(sub)
    files.add_score_file(sub)
    files.add_features(sub)
    files.add_fit_stats(sub)
    files.add_profile(sub)
    evaluate.add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamer`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    try:
        code: int = args.handler(args)
    except StreamerError as exc:  # ConfigError among them: its exit code is 2
        print(final_line(f"streamer: {exc}"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(final_line("streamer: interrupted"), file=sys.stderr)
        return 130
    except Exception as exc:  # every command ends in one line, never in a traceback
        log.debug("unexpected error", exc_info=True)
        hint = "; --log-level DEBUG shows the traceback" if hasattr(args, "log_level") else ""
        text = " ".join(redact(str(exc)).split())
        print(
            final_line(f"streamer: unexpected error: {type(exc).__name__}: {text}{hint}"),
            file=sys.stderr,
        )
        return 1
    return code


__all__ = ["build_parser", "main"]

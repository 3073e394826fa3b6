"""``streamer run``: the scoring daemon, alone or as the parent of ``--workers N``."""

from __future__ import annotations

import argparse
import logging

from streamer.commands.common import add_common, add_overrides, overrides
from streamer.errors import ConfigError
from streamer.logsetup import hide_secrets
from streamer.settings import load_settings, secret_values
from streamer.signals import GracefulSignals

log = logging.getLogger("streamer")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run``, with the hidden flags a worker process is started with."""
    run = sub.add_parser("run", help="run the scoring daemon")
    add_overrides(run)
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pipeline processes in one consumer group under one parent (default 1: no parent)",
    )
    # Set by the parent of --workers N on each worker (streamer.workers).
    run.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    add_common(run)
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until a signal or a failure."""
    from streamer.topology import Pipeline  # noqa: PLC0415 - keep check-config fast
    from streamer.topology.heap import (  # noqa: PLC0415
        collect_young_less_often,
        freeze_startup_heap,
    )
    from streamer.topology.preflight import check_state_settings  # noqa: PLC0415

    if args.parent_pid is not None:
        from streamer.workers import watch_parent  # noqa: PLC0415

        watch_parent(args.parent_pid)
    settings = load_settings(args.config, overrides=overrides(args))
    hide_secrets(*secret_values(settings))
    check_state_settings(settings)
    if settings.state_features:
        from streamer.core.state.windows import ENGINE, ENGINE_REASON  # noqa: PLC0415

        log.info("state engine: %s (%s)", ENGINE, ENGINE_REASON)
    if args.workers < 1:
        msg = f"--workers must be >= 1, got {args.workers}"
        raise ConfigError(msg)
    if args.workers > 1:
        from streamer.workers import run_workers  # noqa: PLC0415

        return run_workers(
            settings, args.workers, log_level=args.log_level, log_format=args.log_format
        )
    # A worker whose parent was killed and restarted may start while its predecessor,
    # orphaned, still drains and serves the same metrics port: wait for it to go.
    port_wait_s = settings.shutdown.timeout_s + 5.0 if args.parent_pid is not None else 0.0
    pipeline = Pipeline(settings, metrics_port_wait_s=port_wait_s)
    # SIGHUP reloads the model (in the background; a failed reload keeps the old one).
    GracefulSignals(
        lambda _signum: pipeline.request_stop(), on_reload=pipeline.request_reload
    ).install()
    pipeline.start()
    freeze_startup_heap()
    collect_young_less_often()
    pipeline.run_until_stopped()
    report = pipeline.stop()
    return report.exit_code

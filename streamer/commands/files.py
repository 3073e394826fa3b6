"""``streamer score-file`` and ``streamer fit-stats``: file mode (:mod:`streamer.filemode`)."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from streamer.clients.file import FileSource
from streamer.commands.common import add_common, overrides
from streamer.errors import ConfigError
from streamer.filemode import (
    FORMATS,
    default_rejects_path,
    detect_format,
    file_settings,
    read_numeric_chunks,
    score_file,
)
from streamer.settings import Settings
from streamer.signals import GracefulSignals


def require_input(path: str) -> None:
    """Exit 2 naming an input file that does not exist."""
    if not Path(path).is_file():
        msg = f"input file {path} does not exist"
        raise ConfigError(msg)


def require_chunked_input(args: argparse.Namespace) -> None:
    """Exit 2 for a missing input file or a ``--chunk-rows`` that is not positive."""
    require_input(args.input)
    if args.chunk_rows <= 0:
        msg = f"--chunk-rows must be > 0, got {args.chunk_rows}"
        raise ConfigError(msg)


def _add_row_files(parser: argparse.ArgumentParser, output: str, config: str) -> None:
    """The input, output, rejects and config of a command that answers each row of a file."""
    parser.add_argument("input", help="CSV (with a header) or JSON Lines file, in offset order")
    parser.add_argument("--output", "-o", required=True, help=output)
    parser.add_argument(
        "--rejects", help="rejected rows with the reason (default: OUTPUT with .rejects)"
    )
    parser.add_argument("--config", "-c", help=f"TOML config file {config}")
    parser.add_argument("--format", choices=FORMATS, help="input format (default: from the name)")
    parser.add_argument("--key-column", help="column (or JSON field) to use as the record key")
    parser.add_argument(
        "--timestamp-column",
        help="column (epoch ms) that stands for the record timestamp of [[state.features]]",
    )


def add_score_file(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``score-file``."""
    score = sub.add_parser(
        "score-file",
        help="score a CSV or JSON Lines file with the actor pipeline (no Kafka)",
        description="Score every row of a CSV or JSON Lines file with the configured model.",
    )
    _add_row_files(score, "predictions file (.csv or .jsonl)", "([model] and [preprocess])")
    score.add_argument("--model-path", dest="model.path")
    score.add_argument("--max-records", dest="batch.max_records", type=int)
    score.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_common(score)
    score.set_defaults(handler=cmd_score_file)


def _check_declared_inputs(settings: Settings, path: str, fmt: str, key_column: str | None) -> None:
    """Exit 2 when a model feature is neither in the file's first record nor declared."""
    from streamer.core.models import load_configured  # noqa: PLC0415
    from streamer.statefile import check_model_features  # noqa: PLC0415

    source = FileSource(path, fmt, key_column)
    try:
        first = source.take(1)
    finally:
        source.close()
    doc = orjson.loads(first[0].value) if first and first[0].value else None
    check_model_features(
        settings, load_configured(settings).spec.names, doc if isinstance(doc, dict) else None
    )


def add_features(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``features``."""
    features = sub.add_parser(
        "features",
        help="compute the declared [[state.features]] of a CSV or JSON Lines file, in file order",
        description=(
            "Write each row with its declared window features, computed in file order by the "
            "scoring path's code: the training set whose values the stream gets, bit for bit."
        ),
    )
    _add_row_files(features, "rows with their features (.csv or .jsonl)", "with [[state.features]]")
    features.add_argument(
        "--partition-column",
        help="column of a topic export that holds each row's partition (a state per partition)",
    )
    features.add_argument(
        "--chunk-rows", type=int, default=1000, help="rows applied at a time (values do not change)"
    )
    add_common(features)
    features.set_defaults(handler=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    """``streamer features``: exit 0 when every row was written or rejected."""
    from streamer.statefile import compute_features  # noqa: PLC0415

    require_chunked_input(args)
    fmt = detect_format(args.input, args.format)
    out_fmt = detect_format(args.output)
    rejects = Path(args.rejects) if args.rejects else default_rejects_path(args.output)
    settings = file_settings(args.config, args.input, args.output, rejects, overrides(args))
    report = compute_features(
        settings,
        args.input,
        args.output,
        rejects,
        fmt=fmt,
        output_format=out_fmt,
        key_column=args.key_column,
        timestamp_column=args.timestamp_column,
        partition_column=args.partition_column,
        chunk_rows=args.chunk_rows,
    )
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(report.reasons.items()))
    print(
        f"computed {len(settings.state_features)} features for {report.rows:,} rows of "
        f"{args.input} in {report.seconds:.1f}s: {report.written:,} rows in {args.output}, "
        f"{report.rejects:,} rejects in {rejects}" + (f" ({reasons})" if reasons else "")
    )
    return 0


def add_fit_stats(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fit-stats``."""
    fit = sub.add_parser(
        "fit-stats",
        help="fit the mean and std per feature of a CSV or JSON Lines file",
        description="Write the stats file that preprocess.stats_path reads.",
    )
    fit.add_argument("input", help="CSV (with a header) or JSON Lines file")
    fit.add_argument("--output", "-o", required=True, help="stats file to write (JSON)")
    fit.add_argument("--features", help="comma-separated columns (default: every numeric column)")
    fit.add_argument("--exclude", default="", help="comma-separated columns to leave out")
    fit.add_argument("--format", choices=FORMATS, help="input format (default: from the name)")
    fit.add_argument("--chunk-rows", type=int, default=100_000, help="rows read at a time")
    add_common(fit)
    fit.set_defaults(handler=cmd_fit_stats)


def cmd_score_file(args: argparse.Namespace) -> int:
    """``streamer score-file``: exit 0 when every row was answered."""
    rejects = Path(args.rejects) if args.rejects else default_rejects_path(args.output)
    fmt = detect_format(args.input, args.format)
    out_fmt = detect_format(args.output)
    if args.rejects and detect_format(rejects) != out_fmt:
        msg = f"--rejects {rejects} must have the output's format ({out_fmt})"
        raise ConfigError(msg)
    require_input(args.input)
    settings = file_settings(args.config, args.input, args.output, rejects, overrides(args))
    if settings.state_features:
        _check_declared_inputs(settings, args.input, fmt, args.key_column)
    elif args.timestamp_column:
        msg = "--timestamp-column is read by [[state.features]] only, and the config has none"
        raise ConfigError(msg)
    stop = threading.Event()
    GracefulSignals(lambda _signum: stop.set()).install()
    report = score_file(
        settings,
        args.input,
        args.output,
        rejects,
        fmt=fmt,
        output_format=out_fmt,
        key_column=args.key_column,
        timestamp_column=args.timestamp_column,
        progress=None if args.no_progress else sys.stderr,
        stop=stop,
    )
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(report.reasons.items()))
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    print(
        f"scored {report.rows:,} rows of {args.input} in {report.seconds:.1f}s "
        f"({rate:,.0f} rows/s): {report.predictions:,} predictions in {args.output}, "
        f"{report.rejects:,} rejects in {rejects}"
        + (f" ({reasons})" if reasons else "")
        + (f", {report.dropped:,} dropped" if report.dropped else "")
    )
    if report.failure:
        print(f"streamer: score-file failed: {report.failure}", file=sys.stderr)
    return report.exit_code


def cmd_fit_stats(args: argparse.Namespace) -> int:
    """``streamer fit-stats``: write mean and std per feature as JSON."""
    from streamer.core.stats import fit_stats  # noqa: PLC0415

    require_chunked_input(args)
    fmt = detect_format(args.input, args.format)
    features = [n.strip() for n in args.features.split(",") if n.strip()] if args.features else None
    exclude = {n.strip() for n in args.exclude.split(",") if n.strip()}
    names, chunks = read_numeric_chunks(args.input, fmt, args.chunk_rows, features, exclude)
    try:
        stats = fit_stats(names, chunks)
    except ValueError as exc:
        msg = f"{args.input}: {exc}"
        raise ConfigError(msg) from None
    Path(args.output).write_bytes(stats.to_json(source=Path(args.input).name))
    print(
        f"fitted {len(names)} features over {int(stats.count.max()):,} rows of {args.input}; "
        f"wrote {args.output}"
    )
    return 0


def add_profile(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``profile``."""
    profile = sub.add_parser(
        "profile",
        help="write the reference profile (feature and score bins) that drift is measured against",
        description="Write the profile file that monitoring.profile_path reads.",
    )
    profile.add_argument("input", help="training data: CSV (with a header) or JSON Lines file")
    profile.add_argument("--output", "-o", required=True, help="profile file to write (JSON)")
    profile.add_argument("--config", "-c", help="TOML config file ([model] and [preprocess])")
    profile.add_argument("--model-path", dest="model.path")
    profile.add_argument("--bins", type=int, default=10, help="quantile bins per feature")
    profile.add_argument("--format", choices=FORMATS, help="input format (default: from the name)")
    profile.add_argument("--chunk-rows", type=int, default=100_000, help="rows read at a time")
    add_common(profile)
    profile.set_defaults(handler=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    """``streamer profile``: bins of the model's features and score over a file, as JSON."""
    from streamer.core.models import load_configured  # noqa: PLC0415
    from streamer.core.monitoring.profile import build_profile  # noqa: PLC0415
    from streamer.core.scoring import score_column  # noqa: PLC0415

    require_input(args.input)
    if args.chunk_rows <= 0 or args.bins <= 0:
        msg = f"--chunk-rows and --bins must be > 0, got {args.chunk_rows} and {args.bins}"
        raise ConfigError(msg)
    settings = file_settings(args.config, args.input, "-.out", "-.rejects", overrides(args))
    model = load_configured(settings)
    spec = model.spec
    fmt = detect_format(args.input, args.format)
    names = list(spec.names)
    standardize = settings.preprocess.standardize and spec.standardize
    output = "score" if "score" in model.output_names else model.output_names[0]

    def chunks() -> Iterator[np.ndarray]:
        _, frames = read_numeric_chunks(args.input, fmt, args.chunk_rows, names, set())
        for frame in frames:
            yield np.asarray(frame, dtype=np.float64)

    def score(rows: np.ndarray) -> np.ndarray:
        features = (rows - spec.mean) / spec.std if standardize else rows
        return score_column(model, features, output)

    try:
        profile = build_profile(
            names,
            chunks,
            score,
            model_name=model.name,
            model_version=model.version,
            score_output=output,
            bins=args.bins,
        )
    except ValueError as exc:
        msg = f"{args.input}: {exc}"
        raise ConfigError(msg) from None
    Path(args.output).write_bytes(profile.to_json(source=Path(args.input).name))
    print(
        f"profiled {len(names)} features and '{output}' of model {model.name} {model.version} "
        f"over {profile.rows:,} rows of {args.input}; wrote {args.output}"
    )
    return 0

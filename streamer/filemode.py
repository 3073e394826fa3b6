"""File mode: the same actor pipeline over a CSV or JSON Lines file, with no Kafka.

``streamer score-file input.csv -o predictions.csv`` runs :class:`~streamer.topology.Pipeline`
on the file backend (:mod:`streamer.clients.file`), which reads the input file
as one pseudo-partition and writes predictions and rejects to files.

``streamer fit-stats data.csv -o stats.json`` fits the standardization
statistics that ``preprocess.stats_path`` reads (see :mod:`streamer.core.stats`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from streamer.clients.file import FileRecord, FileSink, FileSource, file_backend
from streamer.core.records import TP
from streamer.errors import ConfigError
from streamer.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from streamer.topology import Pipeline, ShutdownReport

FORMATS = ("csv", "jsonl")
PROGRESS_EVERY_S = 0.2
PLAIN_PROGRESS_EVERY_S = 5.0


def detect_format(path: str | Path, explicit: str | None = None) -> str:
    """``csv`` or ``jsonl``, from ``explicit`` or the file name.

    Raises:
        ConfigError: The format cannot be told from the name.
    """
    if explicit:
        return explicit
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    msg = f"config error: cannot tell the format of {path} from its name; pass --format csv|jsonl"
    raise ConfigError(msg)


# --- the command ----------------------------------------------------------------


def render_progress(
    done: int, read_bytes: int, total_bytes: int, rejected: int, elapsed_s: float, width: int = 30
) -> str:
    """One progress line: a bar over the bytes read, rows done, rate and rejects."""
    fraction = min(1.0, read_bytes / total_bytes) if total_bytes > 0 else 1.0
    filled = round(fraction * width)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%  "
        f"{done:,} rows  {rate:,.0f} rows/s  rejected {rejected:,}"
    )


@dataclass
class FileReport:
    """The outcome of ``score-file``."""

    exit_code: int
    rows: int
    predictions: int
    rejects: int
    dropped: int
    reasons: dict[str, int]
    seconds: float
    failure: str | None = None


def score_file(
    settings: Settings,
    input_path: str | Path,
    output_path: str | Path,
    rejects_path: str | Path,
    *,
    fmt: str,
    output_format: str | None = None,
    key_column: str | None = None,
    timestamp_column: str | None = None,
    progress: TextIO | None = None,
    registry: CollectorRegistry | None = None,
    stop: threading.Event | None = None,
) -> FileReport:
    """Score every row of a file with the actor pipeline; see the module docstring.

    ``settings`` must name the three files as the input, output and dead-letter
    topics (:func:`file_settings` does). ``fmt`` is the input's format;
    ``output_format`` (by default from the output's name) is also the rejects'.
    ``stop`` ends the run early (Ctrl-C): what was read is still drained and
    written, and the exit code is 1. Declared ``[[state.features]]`` are
    computed as the rows are read, in file order, by the code of ``streamer
    features`` (:mod:`streamer.statefile`); a row the state rejects is written
    to the rejects then, with stage ``state``.

    Raises:
        ModelLoadError: The model cannot be loaded.
    """
    from streamer.topology import Pipeline  # noqa: PLC0415 - the pipeline imports pykka

    kafka = settings.kafka
    sinks: list[FileSink] = []
    transform = (
        _state_transform(settings, input_path, timestamp_column, sinks)
        if settings.state_features
        else None
    )
    source = FileSource(input_path, fmt, key_column, transform)
    try:
        sink = FileSink(
            output_path,
            rejects_path,
            output_format or detect_format(output_path),
            (kafka.output_topic, kafka.dead_letter_topic_name),
            with_key=key_column is not None,
        )
    except OSError as exc:
        source.close()
        msg = f"config error: cannot write {exc.filename}: {exc.strerror}"
        raise ConfigError(msg) from None
    sinks.append(sink)
    started = time.monotonic()
    interrupted = False
    try:
        # The declared features were applied as the file was read (above): the pipeline
        # reads the enriched rows, and keeps no state of its own.
        stateless = dataclasses.replace(settings, state_features=())
        pipeline = Pipeline(stateless, registry=registry, backend=file_backend(source, sink))
        pipeline.start()
        try:
            tp = (kafka.input_topic, 0)
            interrupted = _follow(pipeline, source, sink, tp, started, progress, stop)
        finally:
            report = pipeline.stop()
    finally:
        sink.finish()
        source.close()
    return _file_report(source, sink, report, interrupted=interrupted, started=started)


def _file_report(
    source: FileSource, sink: FileSink, report: ShutdownReport, *, interrupted: bool, started: float
) -> FileReport:
    """What :func:`score_file` returns, from the counts and the pipeline's report."""
    rows = source.rows_read
    failure = report.failure or ("interrupted before the end of the file" if interrupted else None)
    return FileReport(
        exit_code=1 if interrupted else report.exit_code,
        rows=rows,
        predictions=sink.counts.predictions,
        rejects=sink.counts.rejects,
        dropped=rows - sink.counts.predictions - sink.counts.rejects,
        reasons=dict(sink.counts.reasons),
        seconds=time.monotonic() - started,
        failure=failure,
    )


def _follow(
    pipeline: Pipeline,
    source: FileSource,
    sink: FileSink,
    tp: TP,
    started: float,
    progress: TextIO | None,
    stop: threading.Event | None,
) -> bool:
    """Show progress until every row read is answered; True when stopped early."""
    tty = progress is not None and progress.isatty()
    every = PROGRESS_EVERY_S if tty else PLAIN_PROGRESS_EVERY_S
    shown = 0.0
    tick = threading.Event()
    while pipeline.failure is None:
        done = pipeline.consumer_status().watermarks.get(tp, 0)
        finished = source.eof and done >= source.emitted_end
        now = time.monotonic()
        if progress is not None and (finished or now - shown >= every):
            shown = now
            line = render_progress(
                done, source.bytes_read, source.size, sink.counts.rejects, now - started
            )
            progress.write(f"\r{line}" if tty else f"{line}\n")
            if finished and tty:
                progress.write("\n")
            progress.flush()
        if finished:
            return False
        if stop is not None and stop.is_set():
            return True
        tick.wait(0.05)
    return False


def _state_transform(
    settings: Settings,
    input_path: str | Path,
    timestamp_column: str | None,
    sinks: list[FileSink],
) -> Callable[[list[FileRecord]], list[FileRecord]]:
    """Each chunk read, its declared features added; a row the state rejects goes to the rejects.

    ``sinks`` holds the sink once it is open (it is opened after the source).
    """
    from streamer.statefile import STATE_STAGE, StateApplier  # noqa: PLC0415

    applier = StateApplier(settings, str(input_path), timestamp_column=timestamp_column)

    def transform(rows: list[FileRecord]) -> list[FileRecord]:
        kept: list[FileRecord] = []
        results = applier.apply(
            [r.offset for r in rows], [r.key for r in rows], [r.value for r in rows],
            [None] * len(rows),
        )  # fmt: skip
        for result in results:
            if result.enriched is not None:
                kept.append(FileRecord(result.offset, result.key, result.enriched))
            elif result.stage == STATE_STAGE:
                sinks[0].reject_row(
                    result.offset, result.reason, STATE_STAGE, result.detail, result.value
                )
            else:  # not a JSON object: the preprocessor dead-letters it with its own reason
                kept.append(FileRecord(result.offset, result.key, result.value))
        return kept

    return transform


def default_rejects_path(output: str | Path) -> Path:
    """``predictions.csv`` -> ``predictions.rejects.csv``, next to the output."""
    path = Path(output)
    return path.with_name(f"{path.stem}.rejects{path.suffix or '.csv'}")


def file_settings(
    config: str | None,
    input_path: str | Path,
    output_path: str | Path,
    rejects_path: str | Path,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Settings for file mode: the config's model and preprocessing, the files as topics.

    There is no broker, no metrics server, no model watcher and no labels topic, and the
    dead-letter circuit breaker is off: rejected rows are written, never fatal.
    """
    from streamer.settings import load_settings  # noqa: PLC0415

    files = {
        "kafka.input_topic": str(input_path),
        "kafka.output_topic": str(output_path),
        "kafka.dead_letter_topic": str(rejects_path),
        "metrics.enabled": False,
        "model.watch_interval_s": 0.0,
        "supervision.dead_letter_max_ratio": 1.0,
        # A file has no labels topic: the ledger is the daemon's (`streamer evaluate` joins files).
        "labels.topic": "",
    }
    return load_settings(config, environ=environ, overrides={**(overrides or {}), **files})


def read_numeric_chunks(
    path: str | Path, fmt: str, chunk_rows: int, features: list[str] | None, exclude: set[str]
) -> tuple[list[str], Iterator[Any]]:
    """(feature names, float chunks) of a file, read ``chunk_rows`` rows at a time.

    Raises:
        ConfigError: A requested column is missing, or no numeric column is found.
    """
    import pandas as pd  # noqa: PLC0415

    reader: Any = (
        pd.read_csv(path, chunksize=chunk_rows)
        if fmt == "csv"
        # precise_float: pandas' default JSON parser reads 0.3 as 0.30000000000000004,
        # not the float the scoring path (orjson) reads.
        else pd.read_json(path, lines=True, chunksize=chunk_rows, precise_float=True)
    )
    chunks = iter(reader)
    first = next(chunks, None)
    if first is None:
        msg = f"config error: {path} has no rows"
        raise ConfigError(msg)
    names = _feature_columns(path, first, features, exclude)

    def all_chunks() -> Iterator[Any]:
        yield _numeric(first, names)
        for frame in chunks:
            yield _numeric(frame, names)

    return names, all_chunks()


def _feature_columns(
    path: str | Path, first: Any, features: list[str] | None, exclude: set[str]
) -> list[str]:
    """The feature columns: ``features``, or the mostly numeric ones of the first chunk.

    Raises:
        ConfigError: A requested column is missing, or no numeric column is found.
    """
    if features is None:
        # A column counts when at least half of its values in the first chunk are numbers.
        names = [
            str(c) for c in first.columns if str(c) not in exclude and _mostly_numeric(first[c])
        ]
    else:
        names = [n for n in features if n not in exclude]
    missing = [n for n in names if n not in first.columns]
    if missing:
        msg = (
            f"config error: {path} has no column {', '.join(missing)} "
            f"(it has: {', '.join(map(str, first.columns))})"
        )
        raise ConfigError(msg)
    if not names:
        msg = f"config error: {path} has no numeric column; name them with --features"
        raise ConfigError(msg)
    return names


def _mostly_numeric(column: Any) -> bool:
    """True when the column is numeric, or at least half of its present values are numbers."""
    import pandas as pd  # noqa: PLC0415

    present = column.dropna()
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return True
    coerced = pd.to_numeric(present, errors="coerce")
    return len(present) > 0 and coerced.notna().sum() * 2 >= len(present)


def _numeric(frame: Any, names: list[str]) -> Any:
    """The ``names`` columns of a chunk as floats (NaN for what is not a number)."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    columns = []
    for name in names:
        column = frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)
        if pd.api.types.is_bool_dtype(column):
            column = column.astype(np.float64)
        columns.append(pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64))
    return np.column_stack(columns)

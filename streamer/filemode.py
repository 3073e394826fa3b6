"""File mode: the same actor pipeline over a CSV or JSON Lines file, with no Kafka.

``streamer score-file input.csv -o predictions.csv`` runs :class:`~streamer.topology.Pipeline`
with file-backed stand-ins for the Kafka clients:

- :class:`FileConsumer` has the methods of :class:`streamer.client.GroupConsumer`.
  The file is one pseudo-partition, and a record's offset is its row number
  (0-based, header excluded; for JSON Lines, the line number). ``poll`` reads
  at most ``max_records`` rows, and the consumer sizes each poll to its free
  in-flight credits, so the file is streamed in chunks and never held in memory.
- :class:`FileSink` has the methods of :class:`streamer.client.Producer`. A
  prediction is written to the output file, a dead letter to the rejects file
  with its reason; the future it returns is resolved once the row is written.

A CSV row becomes one JSON object: empty cells are left out (so a missing
feature is ``missing_feature``), cells that parse as finite numbers become
numbers, and the rest stay strings (so ``"abc"`` is ``non_numeric_feature``). A
row with more cells than the header is rejected as ``invalid_json``.

``streamer fit-stats data.csv -o stats.json`` fits the standardization
statistics that ``preprocess.stats_path`` reads (see :mod:`streamer.core.stats`).
"""

from __future__ import annotations

import csv
import io
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

import orjson

from streamer.clients.base import RecordColumns
from streamer.errors import ConfigError
from streamer.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from streamer.topology import Pipeline

TP = tuple[str, int]
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


# --- reading ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRecord:
    """The fields of a consumed record that the pipeline reads."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


class _CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read from it (for the progress bar)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.count += size
        return size

    def close(self) -> None:
        self._raw.close()
        super().close()


def _cell(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def csv_values(text: TextIO, key_column: str | None) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, JSON value) per data row of a CSV file."""
    rows = csv.reader(text)
    header = next(rows, None)
    if header is None:
        return
    if key_column is not None and key_column not in header:
        msg = f"config error: --key-column {key_column!r} is not a column of the CSV header"
        raise ConfigError(msg)
    width = len(header)
    key_at = header.index(key_column) if key_column is not None else -1
    dumps = orjson.dumps
    for row in rows:
        key = row[key_at].encode() if 0 <= key_at < len(row) and row[key_at] else None
        if len(row) > width:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(row)
            yield key, buffer.getvalue().encode()
            continue
        # A short row lacks its last cells: they are left out, like empty ones.
        cells = zip(header[: len(row)], row, strict=True)
        yield key, dumps({name: _cell(value) for name, value in cells if value != ""})


def jsonl_values(
    lines: IO[bytes], key_field: str | None
) -> Iterator[tuple[int, bytes | None, bytes]]:
    """(line number, key, value) per non-blank line of a JSON Lines file."""
    for number, line in enumerate(lines):
        value = line.strip()
        if not value:
            continue
        key = None
        if key_field is not None:
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict) and doc.get(key_field) is not None:
                found = doc[key_field]
                key = (found if isinstance(found, str) else orjson.dumps(found).decode()).encode()
        yield number, key, value


class FileSource:
    """The input file, read lazily and shared by the probe and the consumer actor."""

    def __init__(self, path: str | Path, fmt: str, key_column: str | None = None) -> None:
        self.path = Path(path)
        self.format = fmt
        self.size = self.path.stat().st_size
        self._lock = threading.Lock()
        self._counter = _CountingReader(self.path.open("rb"))
        buffered = io.BufferedReader(self._counter, buffer_size=1 << 16)
        self._rows: Iterator[tuple[int, bytes | None, bytes]]
        if fmt == "csv":
            text = io.TextIOWrapper(buffered, encoding="utf-8", newline="")
            self._rows = ((n, k, v) for n, (k, v) in enumerate(csv_values(text, key_column)))
        else:
            self._rows = jsonl_values(buffered, key_column)
        self.next_offset = 0
        self.rows_read = 0
        self.eof = False

    @property
    def bytes_read(self) -> int:
        """Bytes taken from the file so far (read ahead by at most one buffer)."""
        return self._counter.count

    def take(self, max_records: int) -> list[FileRecord]:
        """Read up to ``max_records`` rows."""
        with self._lock:
            out: list[FileRecord] = []
            if self.eof:
                return out
            for offset, key, value in self._rows:
                out.append(FileRecord(offset, key, value))
                if len(out) >= max_records:
                    break
            else:
                self.eof = True
            if out:
                self.next_offset = out[-1].offset + 1
                self.rows_read += len(out)
            return out

    def close(self) -> None:
        """Close the file."""
        self._counter.close()


class FileConsumer:
    """A :class:`streamer.client.GroupConsumer` over one file: one pseudo-partition.

    Commits are kept in memory (there is no group); ``highwater`` is the next
    row to read, so the consumer's lag is the read-ahead.
    """

    def __init__(self, source: FileSource, topics: tuple[str, str, str]) -> None:
        self._source = source
        self._topics = set(topics)
        self._topic = topics[0]
        self._on_assigned: Callable[[list[TP]], None] | None = None
        self._assigned: list[TP] = []
        self._paused: set[TP] = set()
        self._committed: dict[TP, int] = {}
        self._closed = threading.Event()

    def existing_topics(self) -> set[str]:
        """The input, output and rejects 'topics' (the files)."""
        return set(self._topics)

    def subscribe(
        self,
        topic: str,
        on_assigned: Callable[[list[TP]], None],
        on_revoked: Callable[[list[TP]], None],
    ) -> None:
        """Remember the callbacks; the partition is assigned on the first poll."""
        del on_revoked  # a file is never revoked
        self._on_assigned = on_assigned

    def poll(self, timeout_s: float, max_records: int) -> dict[TP, RecordColumns]:
        """Read up to ``max_records`` rows; at the end of the file, wait ``timeout_s``."""
        tp = (self._topic, 0)
        if not self._assigned:
            self._assigned = [tp]
            if self._on_assigned is not None:
                self._on_assigned([tp])
        if tp in self._paused:
            return {}
        records = self._source.take(max_records)
        if not records:
            if timeout_s > 0:
                self._closed.wait(timeout_s)
            return {}
        return {tp: RecordColumns.of(records)}

    def assignment(self) -> list[TP]:
        """The one pseudo-partition once polled."""
        return list(self._assigned)

    def pause(self, tps: list[TP]) -> None:
        """Stop returning rows (backpressure)."""
        self._paused |= set(tps)

    def resume(self, tps: list[TP]) -> None:
        """Return rows again."""
        self._paused -= set(tps)

    def highwater(self, tp: TP) -> int | None:
        """The next row to read."""
        del tp
        return self._source.next_offset

    def refresh_end_offsets(self, tps: list[TP], timeout_s: float) -> None:
        """Nothing to refresh: :meth:`highwater` reads the file's position."""
        del tps, timeout_s

    def commit(self, offsets: dict[TP, int]) -> None:
        """Remember the committed rows."""
        self._committed.update(offsets)

    def commit_async(
        self, offsets: dict[TP, int], on_done: Callable[[dict[TP, int], Exception | None], None]
    ) -> None:
        """Remember the committed rows, and report success at once."""
        self._committed.update(offsets)
        on_done(offsets, None)

    def committed(self, tp: TP) -> int | None:
        """The last committed row + 1."""
        return self._committed.get(tp)

    def close(self) -> None:
        """Wake a waiting poll; the file stays open for the other consumer."""
        self._closed.set()


# --- writing ------------------------------------------------------------------


class Written:
    """A send's result: already settled, with kafka-python's callback methods."""

    __slots__ = ("_error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self._error = error

    def add_callback(self, fn: Callable[..., Any]) -> Written:
        """Call ``fn`` now if the row was written."""
        if self._error is None:
            fn(None)
        return self

    def add_errback(self, fn: Callable[..., Any]) -> Written:
        """Call ``fn`` now if writing failed."""
        if self._error is not None:
            fn(self._error)
        return self


_META = ("key", "topic", "partition", "offset", "model", "scored_at")


@dataclass
class SinkCounts:
    """What a :class:`FileSink` wrote."""

    predictions: int = 0
    rejects: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


class FileSink:
    """A :class:`streamer.client.Producer` that writes predictions and rejects to files.

    CSV output has the columns ``row``, ``key`` (with a key column), one per
    model output, ``model`` and ``version``; JSON Lines output has the record
    the daemon would produce to Kafka. Rejects have ``row``, ``reason``,
    ``stage``, ``error`` and ``record`` (the input row as the pipeline saw it).
    """

    def __init__(
        self,
        output: str | Path,
        rejects: str | Path,
        fmt: str,
        topics: tuple[str, str],
        *,
        with_key: bool = False,
    ) -> None:
        self._format = fmt
        self._output_topic, self._rejects_topic = topics
        self._with_key = with_key
        self._lock = threading.Lock()
        self._out = Path(output).open("w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in finish()
        self._rej = Path(rejects).open("w", encoding="utf-8", newline="")  # noqa: SIM115
        self._out_csv = csv.writer(self._out)
        self._rej_csv = csv.writer(self._rej)
        self._fields: list[str] | None = None
        self.counts = SinkCounts()
        if fmt == "csv":
            self._rej_csv.writerow(["row", "reason", "stage", "error", "record"])

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Written:
        """Write one prediction or one reject; the result is settled on return."""
        try:
            with self._lock:
                if topic == self._output_topic:
                    self._prediction(value)
                elif topic == self._rejects_topic:
                    self._reject(value, dict(headers or []))
                else:
                    msg = f"file mode has no topic {topic!r}"
                    raise ValueError(msg)  # noqa: TRY301 - reported through the future
        except Exception as exc:  # a write error fails this record's delivery
            return Written(exc)
        del key
        return Written()

    def _prediction(self, value: bytes) -> None:
        self.counts.predictions += 1
        if self._format == "jsonl":
            self._out.write(value.decode())
            self._out.write("\n")
            return
        doc = orjson.loads(value)
        outputs = [name for name in doc if name not in _META]
        if self._fields is None:
            self._fields = outputs
            header = ["row", *(["key"] if self._with_key else []), *outputs, "model", "version"]
            self._out_csv.writerow(header)
        elif outputs != self._fields:
            msg = f"the model's outputs changed from {self._fields} to {outputs}"
            raise ValueError(msg)
        model = doc.get("model") or {}
        row: list[Any] = [doc["offset"]]
        if self._with_key:
            row.append(doc.get("key") or "")
        row.extend(repr(doc[name]) for name in outputs)
        row.extend([model.get("name", ""), model.get("version", "")])
        self._out_csv.writerow(row)

    def _reject(self, value: bytes, headers: dict[str, bytes]) -> None:
        reason = headers.get("streamer.reason", b"").decode()
        self.counts.rejects += 1
        self.counts.reasons[reason] += 1
        fields = {
            "row": int(headers.get("streamer.source.offset", b"-1")),
            "reason": reason,
            "stage": headers.get("streamer.stage", b"").decode(),
            "error": headers.get("streamer.error", b"").decode("utf-8", "replace"),
            "record": value.decode("utf-8", "backslashreplace"),
        }
        if self._format == "jsonl":
            self._rej.write(orjson.dumps(fields).decode())
            self._rej.write("\n")
        else:
            self._rej_csv.writerow(list(fields.values()))

    def flush(self, timeout_s: float) -> None:
        """Flush both files."""
        del timeout_s
        with self._lock:
            self._out.flush()
            self._rej.flush()

    def close(self) -> None:
        """Flush (the producer actor calls this; the files close in :meth:`finish`)."""
        self.flush(0)

    def finish(self) -> None:
        """Close both files."""
        with self._lock:
            self._out.close()
            self._rej.close()


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
    progress: TextIO | None = None,
    registry: CollectorRegistry | None = None,
    stop: threading.Event | None = None,
) -> FileReport:
    """Score every row of a file with the actor pipeline; see the module docstring.

    ``settings`` must name the three files as the input, output and dead-letter
    topics (:func:`file_settings` does). ``fmt`` is the input's format;
    ``output_format`` (by default from the output's name) is also the rejects'.
    ``stop`` ends the run early (Ctrl-C): what was read is still drained and
    written, and the exit code is 1.

    Raises:
        ModelLoadError: The model cannot be loaded.
    """
    from streamer.topology import Pipeline  # noqa: PLC0415 - the pipeline imports pykka

    source = FileSource(input_path, fmt, key_column)
    kafka = settings.kafka
    topics = (kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic_name)
    try:
        sink = FileSink(
            output_path,
            rejects_path,
            output_format or detect_format(output_path),
            (topics[1], topics[2]),
            with_key=key_column is not None,
        )
    except OSError as exc:
        source.close()
        msg = f"config error: cannot write {exc.filename}: {exc.strerror}"
        raise ConfigError(msg) from None
    tp = (topics[0], 0)
    started = time.monotonic()
    interrupted = False
    try:
        pipeline = Pipeline(
            settings,
            registry=registry,
            # Same methods as GroupConsumer and Producer (duck typing, no Kafka).
            consumer_factory=lambda _k, _n: cast(Any, FileConsumer(source, topics)),
            producer_factory=lambda _k: cast(Any, sink),
        )
        pipeline.start()
        try:
            interrupted = _follow(pipeline, source, sink, tp, started, progress, stop)
        finally:
            report = pipeline.stop()
    finally:
        sink.finish()
        source.close()
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
        finished = source.eof and done >= source.next_offset
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

    There is no broker, no metrics server and no model watcher, and the
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
    }
    return load_settings(config, environ=environ, overrides={**(overrides or {}), **files})


def read_numeric_chunks(
    path: str | Path, fmt: str, chunk_rows: int, features: list[str] | None, exclude: set[str]
) -> tuple[list[str], Iterator[Any]]:
    """(feature names, float chunks) of a file, read ``chunk_rows`` rows at a time.

    Raises:
        ConfigError: A requested column is missing, or no numeric column is found.
    """
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    reader: Any = (
        pd.read_csv(path, chunksize=chunk_rows)
        if fmt == "csv"
        else pd.read_json(path, lines=True, chunksize=chunk_rows)
    )
    chunks = iter(reader)
    first = next(chunks, None)
    if first is None:
        msg = f"config error: {path} has no rows"
        raise ConfigError(msg)

    def mostly_numeric(column: Any) -> bool:
        present = column.dropna()
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            return True
        coerced = pd.to_numeric(present, errors="coerce")
        return len(present) > 0 and coerced.notna().sum() * 2 >= len(present)

    if features is None:
        # A column counts when at least half of its values in the first chunk are numbers.
        names = [
            str(c) for c in first.columns if str(c) not in exclude and mostly_numeric(first[c])
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

    def numeric(frame: Any) -> Any:
        columns = []
        for name in names:
            column = frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)
            if pd.api.types.is_bool_dtype(column):
                column = column.astype(np.float64)
            columns.append(pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64))
        return np.column_stack(columns)

    def all_chunks() -> Iterator[Any]:
        yield numeric(first)
        for frame in chunks:
            yield numeric(frame)

    return names, all_chunks()

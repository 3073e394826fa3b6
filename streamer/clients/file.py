"""The file backend: a CSV or JSON Lines file in, predictions and rejects out, no Kafka.

``streamer score-file`` runs the same actor pipeline as ``streamer run`` over
this backend (:func:`file_backend`), built for one run's files:

- :class:`FileConsumer` is the consumer. The file is one pseudo-partition, and
  a record's offset is its row number (0-based, header excluded; for JSON
  Lines, the line number). ``poll`` reads at most ``max_records`` rows, and the
  consumer sizes each poll to its free in-flight credits, so the file is
  streamed in chunks and never held in memory.
- :class:`FileSink` is the producer. A prediction is written to the output
  file, a dead letter to the rejects file with its reason; the future it
  returns is resolved once the row is written.

A CSV row becomes one JSON object: empty cells are left out (so a missing
feature is ``missing_feature``), cells that parse as finite numbers become
numbers, and the rest stay strings (so ``"abc"`` is ``non_numeric_feature``). A
row with more cells than the header is rejected as ``invalid_json``.

The "topics" are the file names: ``kafka.input_topic``, ``kafka.output_topic``
and ``kafka.dead_letter_topic`` name the three files.
"""

from __future__ import annotations

import csv
import io
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import orjson

from streamer.clients.base import Backend
from streamer.core.features import loads_json
from streamer.core.records import TP, RecordColumns
from streamer.errors import ConfigError
from streamer.settings import KafkaSettings

__all__ = [
    "FileConsumer",
    "FileRecord",
    "FileSink",
    "FileSource",
    "SinkCounts",
    "Written",
    "csv_values",
    "file_backend",
    "jsonl_values",
]


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
                # As the live path reads it: a number beyond a double's range in another
                # field does not cost the line its key (core/features.py loads_json).
                doc = loads_json(value)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict) and doc.get(key_field) is not None:
                found = doc[key_field]
                key = (found if isinstance(found, str) else orjson.dumps(found).decode()).encode()
        yield number, key, value


class FileSource:
    """The input file, read lazily and shared by the probe and the consumer actor."""

    def __init__(
        self,
        path: str | Path,
        fmt: str,
        key_column: str | None = None,
        transform: Callable[[list[FileRecord]], list[FileRecord]] | None = None,
    ) -> None:
        self.path = Path(path)
        # Applied to each chunk read, in file order (score-file's declared state features):
        # it may drop rows, which it answers itself.
        self._transform = transform
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
        # One past the last row handed to the pipeline: what its watermark reaches at the end.
        self.emitted_end = 0
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
            if self._transform is not None and out:
                out = self._transform(out)
            if out:
                self.emitted_end = out[-1].offset + 1
            return out

    def close(self) -> None:
        """Close the file."""
        self._counter.close()


class FileConsumer:
    """A :class:`~streamer.clients.base.ConsumerClient` over one file: one pseudo-partition.

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
        topic: str | Sequence[str],
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

    def pause(self, tps: list[TP]) -> None:
        """Stop returning rows (backpressure)."""
        self._paused |= set(tps)

    def resume(self, tps: list[TP]) -> None:
        """Return rows again."""
        self._paused -= set(tps)

    def seek(self, tp: TP, offset: int) -> None:
        """Only to where the file's reader is: a file is read once, and never revoked.

        The consumer actor seeks only when a rebalance gives a partition back.
        """
        if offset != self._source.next_offset:
            msg = f"file mode cannot seek {tp[0]} to row {offset}"
            raise ValueError(msg)

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
    """A :class:`~streamer.clients.base.ProducerClient` that writes predictions and rejects.

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
        self._write_reject(
            int(headers.get("streamer.source.offset", b"-1")),
            headers.get("streamer.reason", b"").decode(),
            headers.get("streamer.stage", b"").decode(),
            headers.get("streamer.error", b"").decode("utf-8", "replace"),
            value,
        )

    def reject_row(
        self, row: int, reason: str, stage: str, error: str, value: bytes | None
    ) -> None:
        """Write a reject that never reached the pipeline (a row the state rejected when read)."""
        with self._lock:
            self._write_reject(row, reason, stage, error, value or b"")

    def _write_reject(self, row: int, reason: str, stage: str, error: str, value: bytes) -> None:
        self.counts.rejects += 1
        self.counts.reasons[reason] += 1
        fields = {
            "row": row,
            "reason": reason,
            "stage": stage,
            "error": error,
            "record": value.decode("utf-8", "backslashreplace"),
        }
        if self._format == "jsonl":
            self._rej.write(orjson.dumps(fields).decode())
            self._rej.write("\n")
        else:
            self._rej_csv.writerow(list(fields.values()))

    def flush(self, timeout_s: float) -> bool:
        """Flush both files."""
        del timeout_s
        with self._lock:
            self._out.flush()
            self._rej.flush()
        return True

    def close(self) -> None:
        """Flush (the producer actor calls this; the files close in :meth:`finish`)."""
        self.flush(0)

    def finish(self) -> None:
        """Close both files."""
        with self._lock:
            self._out.close()
            self._rej.close()


def ensure_topics(settings: KafkaSettings, topics: dict[str, int], replication: int = 1) -> None:
    """Nothing to create: the input file exists, and the sink opened the outputs."""
    del settings, topics, replication


def file_backend(source: FileSource, sink: FileSink) -> Backend:
    """The backend of one ``score-file`` run: every consumer reads ``source``, into ``sink``.

    A restarted consumer goes on where the file's reader is, and a restarted
    producer gets the same sink (its files close in :meth:`FileSink.finish`).
    """

    def consumer(
        settings: KafkaSettings, max_poll_records: int, fetch_max_bytes: int | None = None
    ) -> FileConsumer:
        del max_poll_records, fetch_max_bytes  # each poll says how many rows it takes
        topics = (settings.input_topic, settings.output_topic, settings.dead_letter_topic_name)
        return FileConsumer(source, topics)

    def producer(settings: KafkaSettings) -> FileSink:
        del settings
        return sink

    return Backend(name="file", consumer=consumer, producer=producer, ensure_topics=ensure_topics)

"""Declared state features over a file, in file order: ``streamer features``, score-file's source.

Both apply :class:`~streamer.core.state.PartitionState` to the file's rows in
file order, in chunks, exactly as the scoring path applies it to a partition's
micro-batches in offset order: a value never depends on the chunking
(tests/unit/core/state), so a file that holds a topic in offset order gets the
values the stream gets, bit for bit.

A file has no Kafka timestamp: ``--timestamp-column`` names the column (epoch
milliseconds) that stands for it where a feature's ``time`` is the record
timestamp.
"""

from __future__ import annotations

import contextlib
import csv
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streamer.clients.file import FileRecord, FileSource
from streamer.core.features import decoded_object
from streamer.core.state.codec import Served
from streamer.core.state.layout import Layout, build_layout
from streamer.core.state.store import MemoryStore, RocksStore, Store
from streamer.core.state.windows import PartitionState, StateInput, enrich
from streamer.errors import ConfigError
from streamer.settings import Settings

STATE_STAGE = "state"
"""The ``stage`` of a dead letter the state gives (``missing_key``, ``late``, ...)."""


SWEEP_EVERY_ROWS = 100_000
"""How often a file's state deletes the keys past their TTL: memory follows the live keys."""


def layout_of(settings: Settings) -> Layout:
    """The declared features of ``settings`` with its lateness, TTL and size policy."""
    return build_layout(
        settings.state_features,
        round(settings.state.allowed_lateness_s * 1_000_000),
        round(settings.state.key_ttl_s * 1_000_000),
        max_entries_per_key=settings.state.max_entries_per_key,
        max_text_bytes=settings.state.max_text_bytes,
        max_record_bytes=settings.kafka.max_request_bytes,
    )


@dataclass(frozen=True, slots=True)
class RowResult:
    """One row after the state: its enriched value, or why it is rejected (reason, detail)."""

    offset: int
    key: bytes | None
    value: bytes | None
    enriched: bytes | None
    reason: str = ""
    detail: str = ""
    stage: str = STATE_STAGE
    features: tuple[float, ...] = ()


class StateApplier:
    """The declared features of one partition's rows, applied in offset order, chunk by chunk."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        partition: int = 0,
        store: Store | None = None,
        timestamp_column: str | None = None,
        remember_served: bool = False,
    ) -> None:
        self.layout = layout_of(settings)
        self.names = self.layout.names
        self.state = PartitionState(
            self.layout,
            store if store is not None else MemoryStore(),
            topic,
            partition,
            remember_served=remember_served,
        )
        self._max_bytes = settings.batch.max_record_bytes
        self._timestamp_column = timestamp_column
        self._since_sweep = 0

    def apply(
        self,
        offsets: Sequence[int],
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        timestamps_ms: Sequence[int | None],
        docs: Sequence[dict[str, Any] | str] | None = None,
    ) -> list[RowResult]:
        """Apply one chunk (a micro-batch) of rows in offset order.

        ``docs``: the values already decoded (``decoded_object``), not decoded again.
        """
        if docs is None:
            docs = [decoded_object(value, self._max_bytes) for value in values]
        column = self._timestamp_column
        inputs = [
            StateInput(
                offset,
                key,
                _column_ms(doc, column) if column else ts,
                doc if isinstance(doc, dict) else None,
            )
            for offset, key, doc, ts in zip(offsets, keys, docs, timestamps_ms, strict=True)
        ]
        applied = self.state.apply(inputs)
        self._since_sweep += len(inputs)
        if self._since_sweep >= SWEEP_EVERY_ROWS:
            self.state.sweep()  # keys past their TTL read as empty: deleting them changes nothing
            self._since_sweep = 0
        results = []
        for record, value, doc, served in zip(inputs, values, docs, applied.outcomes, strict=True):
            results.append(_result(record, value, doc, served, self.names))
        return results


def _column_ms(doc: dict[str, Any] | str, column: str) -> int | None:
    raw = doc.get(column) if isinstance(doc, dict) else None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
        return None
    return int(raw)


def _result(
    record: StateInput,
    value: bytes | None,
    doc: dict[str, Any] | str,
    served: Served | None,
    names: tuple[str, ...],
) -> RowResult:
    if isinstance(doc, str):  # not a JSON object: the preprocessor's reason
        return RowResult(record.offset, record.key, value, None, doc, "", "preprocess")
    assert served is not None
    if served.values is None:
        return RowResult(record.offset, record.key, value, None, served.reason, served.detail)
    return RowResult(
        record.offset,
        record.key,
        value,
        enrich(doc, names, served.values),
        features=served.values,
    )


# --- streamer features ------------------------------------------------------------


@dataclass
class FeaturesReport:
    """What ``streamer features`` wrote."""

    rows: int = 0
    written: int = 0
    rejects: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def compute_features(
    settings: Settings,
    input_path: str | Path,
    output_path: str | Path,
    rejects_path: str | Path,
    *,
    fmt: str,
    output_format: str,
    key_column: str | None = None,
    timestamp_column: str | None = None,
    partition_column: str | None = None,
    chunk_rows: int = 1000,
) -> FeaturesReport:
    """Write each row of a file with its declared features, in file order; rejects apart.

    JSON Lines output has each row's JSON object with the features added at
    its top level; CSV output has ``row``, the columns of the first row, then
    the features (floats written as their shortest exact text). Rejects have
    ``row``, ``reason``, ``stage``, ``error`` and ``record``, as score-file's.
    ``partition_column`` names the column of a topic export that holds each
    row's partition: each partition then has a state of its own, as live.
    """
    if not settings.state_features:
        msg = "config error: no [[state.features]] in the configuration: nothing to compute"
        raise ConfigError(msg)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        store_dir = None
        if settings.state.dir:
            Path(settings.state.dir).mkdir(parents=True, exist_ok=True)
            temporary = tempfile.TemporaryDirectory(dir=settings.state.dir, prefix="features-")
            store_dir = Path(stack.enter_context(temporary))
        source = FileSource(input_path, fmt, key_column)
        stack.callback(source.close)
        applier = PartitionedApplier(
            settings, str(input_path), timestamp_column, partition_column, store_dir
        )
        stack.callback(applier.close)
        report = _write_features(
            source, applier, output_path, rejects_path, output_format, chunk_rows
        )
    report.rows = source.rows_read
    report.seconds = time.monotonic() - started
    return report


def _write_features(
    source: FileSource,
    applier: PartitionedApplier,
    output_path: str | Path,
    rejects_path: str | Path,
    output_format: str,
    chunk_rows: int,
) -> FeaturesReport:
    report = FeaturesReport()
    with (
        Path(output_path).open("w", encoding="utf-8", newline="") as out,
        Path(rejects_path).open("w", encoding="utf-8", newline="") as rej,
    ):
        writer = _RowWriter(out, rej, output_format, applier.names)
        while rows := source.take(chunk_rows):
            for result in applier.apply(*_columns(rows)):
                writer.write(result, report)
    return report


class PartitionedApplier:
    """One :class:`StateApplier` per partition of a file, told apart by a column (or one in all)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        timestamp_column: str | None,
        partition_column: str | None,
        store_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._store_dir = store_dir
        self._topic = topic
        self._timestamp_column = timestamp_column
        self._partition_column = partition_column
        self._appliers: dict[int, StateApplier] = {}
        self.names = layout_of(settings).names
        self._max_bytes = settings.batch.max_record_bytes

    def _applier(self, partition: int) -> StateApplier:
        if partition not in self._appliers:
            store = (
                None
                if self._store_dir is None
                else RocksStore(self._store_dir / f"partition-{partition}")
            )
            self._appliers[partition] = StateApplier(
                self._settings,
                self._topic,
                partition=partition,
                store=store,
                timestamp_column=self._timestamp_column,
            )
        return self._appliers[partition]

    def close(self) -> None:
        """Close the stores."""
        for applier in self._appliers.values():
            applier.state.store.close()

    def apply(
        self,
        offsets: list[int],
        keys: list[bytes | None],
        values: list[bytes | None],
        timestamps_ms: list[int | None],
    ) -> list[RowResult]:
        """Each partition's rows applied in file order by its own state; results in file order."""
        column = self._partition_column
        if column is None:
            return self._applier(0).apply(offsets, keys, values, timestamps_ms)
        groups: dict[int, list[int]] = {}
        results: dict[int, RowResult] = {}
        docs = [decoded_object(value, self._max_bytes) for value in values]
        for index, (value, doc) in enumerate(zip(values, docs, strict=True)):
            raw = doc.get(column) if isinstance(doc, dict) else None
            if _is_partition(raw):
                groups.setdefault(int(raw), []).append(index)  # type: ignore[arg-type]
            elif isinstance(doc, dict):
                detail = f"partition column {column!r} is missing or not a partition number"
                results[index] = RowResult(
                    offsets[index], keys[index], value, None, "missing_key", detail
                )
            else:
                groups.setdefault(0, []).append(index)  # the preprocessor's reason, from any state
        for partition, indexes in groups.items():
            applied = self._applier(partition).apply(
                [offsets[i] for i in indexes],
                [keys[i] for i in indexes],
                [values[i] for i in indexes],
                [timestamps_ms[i] for i in indexes],
                [docs[i] for i in indexes],
            )
            results.update(zip(indexes, applied, strict=True))
        return [results[index] for index in range(len(values))]


def _is_partition(raw: Any) -> bool:
    return (
        isinstance(raw, int | float)
        and not isinstance(raw, bool)
        and math.isfinite(raw)
        and raw == int(raw) >= 0
    )


def _columns(
    rows: list[FileRecord],
) -> tuple[list[int], list[bytes | None], list[bytes | None], list[int | None]]:
    return (
        [r.offset for r in rows],
        [r.key for r in rows],
        [r.value for r in rows],
        [None for _ in rows],  # a file has no record timestamp (--timestamp-column)
    )


class _RowWriter:
    def __init__(self, out: Any, rej: Any, fmt: str, names: tuple[str, ...]) -> None:
        self._out = out
        self._rej = rej
        self._format = fmt
        self._names = names
        self._out_csv = csv.writer(out)
        self._rej_csv = csv.writer(rej)
        self._columns: list[str] | None = None
        if fmt == "csv":
            self._rej_csv.writerow(["row", "reason", "stage", "error", "record"])

    def write(self, result: RowResult, report: FeaturesReport) -> None:
        if result.enriched is None:
            report.rejects += 1
            report.reasons[result.reason] = report.reasons.get(result.reason, 0) + 1
            record = (result.value or b"").decode("utf-8", "backslashreplace")
            row = [result.offset, result.reason, result.stage, result.detail, record]
            if self._format == "jsonl":
                keys = ("row", "reason", "stage", "error", "record")
                self._rej.write(orjson.dumps(dict(zip(keys, row, strict=True))).decode() + "\n")
            else:
                self._rej_csv.writerow(row)
            return
        report.written += 1
        if self._format == "jsonl":
            self._out.write(result.enriched.decode() + "\n")
            return
        doc = orjson.loads(result.enriched)
        if self._columns is None:
            inputs = [name for name in doc if name not in self._names]
            self._columns = [*inputs, *self._names]
            self._out_csv.writerow(["row", *self._columns])
        self._out_csv.writerow([result.offset, *(_cell(doc.get(c)) for c in self._columns)])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def check_model_features(
    settings: Settings, model_features: Sequence[str], first_row: dict[str, Any] | None
) -> None:
    """Exit 2 for a model feature that is neither declared, mapped by a path, nor in the first row.

    Raises:
        ConfigError: Naming the feature and what to do.
    """
    declared = {f.name for f in settings.state_features}
    present = set(first_row or {}) | set(settings.preprocess.paths)
    for name in model_features:
        if name not in declared and name not in present and "." not in name:
            msg = (
                f"config error: the model's feature {name!r} is neither in the input's first "
                "record nor declared in [[state.features]]; declare it, or fix the model's "
                "feature list"
            )
            raise ConfigError(msg)

"""One micro-batch prepared for a model: what a preprocessor does, and a model actor redoes.

A model actor prepares a batch again, from its source bytes, when a hot reload
gave it a model with another spec than the one the preprocessor used; so does a
challenger whose features or statistics are not the champion's. All three use a
:class:`Preparer`, so that each reads the input format with its reader.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from streamer.core.features import (
    BatchReader,
    FeatureSpec,
    Prepared,
    decoded_object,
    every_row_valid,
    prepare_batch,
    typed_matrix,
)
from streamer.core.formats import compile_paths, project
from streamer.core.models import preparation_key
from streamer.core.state.windows import enrich
from streamer.messages import FeatureBatch, Rejection, SourceBatch

if TYPE_CHECKING:
    from streamer.settings import PreprocessSettings


def prepare_source(
    source: SourceBatch,
    spec: FeatureSpec,
    settings: PreprocessSettings,
    max_record_bytes: int,
    spec_key: str = "",
    reader: BatchReader | None = None,
) -> FeatureBatch:
    """Prepare one micro-batch for a model with ``spec``; the result carries ``spec_key``.

    Standardization happens only when both ``preprocess.standardize`` and the
    spec ask for it: a model that scales inside gets raw values. ``reader``
    decodes a schema-registry format (None: JSON objects); ``preprocess.paths``
    and dotted feature names pick features inside nested records.
    """
    started = time.perf_counter()
    paths = compile_paths(spec.names, settings.paths)
    projector = None if paths is None else partial(project, names=spec.names, paths=paths)
    values, kept = _state_view(source)
    standardize = settings.standardize and spec.standardize
    prepared = None
    if source.state_names and reader is None and projector is None:
        prepared = _with_state_columns(source, values, kept, spec, standardize, max_record_bytes)
    if prepared is None:
        if source.state_names:
            values = _enriched(source, values, kept, max_record_bytes)
        prepared = prepare_batch(
            values,
            spec,
            missing=settings.missing,
            standardize=standardize,
            max_record_bytes=max_record_bytes,
            reader=reader,
            projector=projector,
        )
    rejections = tuple(
        Rejection(p.index, p.reason, p.detail, "preprocess") for p in prepared.rejected
    )
    valid_rows = prepared.valid_rows
    dropped_rows = tuple(p.index for p in prepared.dropped)
    if kept is not None:  # back to the batch's rows, with the state's rejections
        rejections = tuple(
            sorted(
                (
                    *(dataclasses.replace(r, index=kept[r.index]) for r in rejections),
                    *source.state_rejections,
                ),
                key=lambda r: r.index,
            )
        )
        valid_rows = np.asarray(kept, dtype=valid_rows.dtype)[valid_rows]
        dropped_rows = tuple(kept[i] for i in dropped_rows)
    return FeatureBatch(
        source=source,
        features=prepared.features,
        valid_rows=valid_rows,
        rejections=rejections,
        dropped_rows=dropped_rows,
        preprocess_seconds=time.perf_counter() - started,
        spec_key=spec_key or preparation_key(spec),
    )


def _state_view(source: SourceBatch) -> tuple[Sequence[bytes | None], list[int] | None]:
    """The values the preparation reads, and which batch rows they are (None: all of them).

    With declared state features, a record the state rejected is not read at all.
    """
    if not source.state_rejections:
        return source.values, None
    rejected = {r.index for r in source.state_rejections}
    kept = [row for row in range(len(source.values)) if row not in rejected]
    return [source.values[row] for row in kept], kept


# A state feature as a JSON member: its quoted name, the colon and comma, and a float's
# longest repr ("-2.2250738585072014e-308": 24 characters).
_MEMBER_BYTES = 32
# How much longer orjson's encoding of a decoded record can be than the record: a number
# written "9e15" (4 bytes, 5 with its comma) comes back as "9000000000000000.0" (18).
_REENCODED_GROWTH = 4


def _with_state_columns(
    source: SourceBatch,
    values: Sequence[bytes | None],
    kept: list[int] | None,
    spec: FeatureSpec,
    standardize: bool,
    max_record_bytes: int,
) -> Prepared | None:
    """The batch's features with the state's values placed by name, or None.

    The reference is the record's JSON with the features at its top level (what
    ``score-file`` and ``streamer features`` read, :func:`_enriched`). This reads
    the record's own features from its original bytes (msgspec, at once) and takes
    the state's features from the values the state served, as floats: the same
    matrix, without encoding each record again and decoding it a second time. It
    answers only when that reference would take its fast path too: every row a
    JSON object with every feature a finite number, and a record whose features
    could bring it over ``max_record_bytes`` goes the reference way.
    """
    names = source.state_names
    served = source.state_values
    own = tuple(name for name in spec.names if name not in names)
    if served is None or not _within_cap(values, names, max_record_bytes):
        return None
    absent = served.absent
    if absent and (kept is None or not absent.isdisjoint(kept)):
        return None  # a record served none that the state did not reject: not a JSON object
    state = served.matrix if kept is None else served.matrix[kept]
    if not len(state) or state.shape[1] != len(names):  # never: one value per name
        return None
    if not bool(np.isfinite(state).all()):
        return None
    # A record served features decoded as a JSON object within the cap: when the model
    # reads none of its own fields, nothing else can reject it.
    matrix_own = typed_matrix(values, own, max_record_bytes) if own else state[:, :0]
    if matrix_own is None:
        return None
    matrix = np.empty((len(state), len(spec.names)), dtype=np.float64)
    for column, name in enumerate(spec.names):
        if name in names:
            matrix[:, column] = state[:, names.index(name)]
        else:
            matrix[:, column] = matrix_own[:, own.index(name)]
    return every_row_valid(matrix, spec, standardize=standardize)


def _within_cap(
    values: Sequence[bytes | None], names: tuple[str, ...], max_record_bytes: int
) -> bool:
    """Whether every record with the features at its top level stays within the cap."""
    if not values or any(value is None for value in values):
        return False  # a value without bytes: the reference path names it
    members = _MEMBER_BYTES * len(names) + sum(map(len, names))
    longest = max(map(len, values))  # type: ignore[arg-type]
    return longest * _REENCODED_GROWTH + members <= max_record_bytes


def _enriched(
    source: SourceBatch,
    values: Sequence[bytes | None],
    kept: list[int] | None,
    max_record_bytes: int,
) -> list[bytes | None]:
    """Each record's JSON with the features it was served at its top level.

    As ``score-file`` reads it, so live equals offline; a record served none as it is.
    """
    rows = range(len(source.values)) if kept is None else kept
    state = source.state_values
    out: list[bytes | None] = []
    for value, row in zip(values, rows, strict=True):
        served = None if state is None else state.row(row)
        doc = None if served is None else decoded_object(value, max_record_bytes)
        if served is None or not isinstance(doc, dict):
            out.append(value)
        else:
            out.append(enrich(doc, source.state_names, served))
    return out


@dataclass
class Preparer:
    """How an actor prepares batches: the ``[preprocess]`` settings, the record cap, the reader.

    ``reader`` decodes a schema-registry input format (None: JSON objects); the
    actor sets it when it opens, on its own thread.
    """

    settings: PreprocessSettings
    max_record_bytes: int
    reader: BatchReader | None = None

    def prepare(self, source: SourceBatch, spec: FeatureSpec, spec_key: str) -> FeatureBatch:
        """Prepare ``source`` for a model with ``spec`` (whose :func:`preparation_key` is given)."""
        return prepare_source(
            source, spec, self.settings, self.max_record_bytes, spec_key, self.reader
        )

    def again_for(self, batch: FeatureBatch, spec: FeatureSpec, spec_key: str) -> FeatureBatch:
        """``batch`` itself when prepared for ``spec_key`` (or for no key), else prepared again."""
        if not batch.spec_key or batch.spec_key == spec_key:
            return batch
        return self.prepare(batch.source, spec, spec_key)

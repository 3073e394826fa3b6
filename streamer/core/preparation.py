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

from streamer.core.features import BatchReader, FeatureSpec, prepare_batch
from streamer.core.formats import compile_paths, project
from streamer.core.models import preparation_key
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
    prepared = prepare_batch(
        values,
        spec,
        missing=settings.missing,
        standardize=settings.standardize and spec.standardize,
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

    With declared state features, a record reads its ``enriched`` value (its
    JSON with the features, as ``score-file`` reads it, so live equals offline),
    and a record the state rejected is not read at all.
    """
    enriched = source.enriched
    if enriched is None:
        return source.values, None
    values = [
        value if value is not None else original
        for value, original in zip(enriched, source.values, strict=True)
    ]
    if not source.state_rejections:
        return values, None
    rejected = {r.index for r in source.state_rejections}
    kept = [row for row in range(len(values)) if row not in rejected]
    return [values[row] for row in kept], kept


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

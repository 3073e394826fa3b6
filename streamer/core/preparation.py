"""One micro-batch prepared for a model: what a preprocessor does, and a model actor redoes.

A model actor prepares a batch again, from its source bytes, when a hot reload
gave it a model with another spec than the one the preprocessor used.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

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
    prepared = prepare_batch(
        source.values,
        spec,
        missing=settings.missing,
        standardize=settings.standardize and spec.standardize,
        max_record_bytes=max_record_bytes,
        reader=reader,
        projector=projector,
    )
    return FeatureBatch(
        source=source,
        features=prepared.features,
        valid_rows=prepared.valid_rows,
        rejections=tuple(
            Rejection(p.index, p.reason, p.detail, "preprocess") for p in prepared.rejected
        ),
        dropped_rows=tuple(p.index for p in prepared.dropped),
        preprocess_seconds=time.perf_counter() - started,
        spec_key=spec_key or preparation_key(spec),
    )

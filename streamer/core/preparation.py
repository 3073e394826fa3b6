"""One micro-batch prepared for a model: what a preprocessor does, and a model actor redoes.

A model actor prepares a batch again, from its source bytes, when a hot reload
gave it a model with another spec than the one the preprocessor used.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from streamer.core.features import FeatureSpec, prepare_batch
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
) -> FeatureBatch:
    """Prepare one micro-batch for a model with ``spec``; the result carries ``spec_key``.

    Standardization happens only when both ``preprocess.standardize`` and the
    spec ask for it: a model that scales inside gets raw values.
    """
    started = time.perf_counter()
    prepared = prepare_batch(
        source.values,
        spec,
        missing=settings.missing,
        standardize=settings.standardize and spec.standardize,
        max_record_bytes=max_record_bytes,
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

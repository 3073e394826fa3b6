"""What ``kind = "xgboost"`` and ``kind = "lightgbm"`` share: native gradient-boosted trees.

No pickle: XGBoost's ``.json``/``.ubj`` and LightGBM's text ``model.txt`` load
with the library's own reader (extras ``streamer[xgboost]``, ``streamer[lightgbm]``),
and do not break across library versions as pickles do. The features are the
booster's own feature names, in its column order. The outputs follow the
objective: a binary one gives one ``score`` (the probability), a multi-class one
``proba_<i>``, a regression one ``score``. Each value is what ``Booster.predict``
gives for the row, which for a tree ensemble depends on that row alone, so
batches go to the booster as they are (no fixed-size chunks).

Reason codes (``model.explain_top_k``) are the library's exact TreeSHAP
contributions (``pred_contribs`` / ``pred_contrib``) of the explained output: the
score of a binary or regression model (in margin units), and for a multi-class
model the class the row is most likely to be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.models.base import ModelOptions
from streamer.core.models.common import ChunkCall, ChunkedModel, output_names, probe

Contributions = Callable[[np.ndarray], np.ndarray]
"""(n, d) matrix -> (n, d) contributions of each feature to the explained output."""


def raw_values(options: ModelOptions) -> ModelOptions:
    """Trees split on raw values: a stats file may impute, never standardize."""
    return dataclasses.replace(options, standardize=False)


def booster_model(
    options: ModelOptions,
    raw: bytes,
    kind: str,
    spec: Any,
    call: ChunkCall,
    contributions: Contributions,
    *,
    multiclass: bool,
    where: str,
) -> ChunkedModel:
    """The loaded booster behind the Model protocol: named by objective, no fixed chunks."""
    width = probe(call, spec, 0, where)
    names = output_names(width, "proba") if multiclass else output_names(width, "score")
    model = ChunkedModel.from_source(
        options,
        raw,
        kind=kind,
        default_name=Path(options.path).stem,
        spec=spec,
        output_names=names,
        call=call,
        watched=Path(options.path),
        contributions=contributions,
    )
    # Per-row trees need no fixed-size chunks (module docstring).
    return dataclasses.replace(model, chunk_rows=0)

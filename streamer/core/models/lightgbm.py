"""``kind = "lightgbm"``: a LightGBM booster in its text format, ``model.txt``.

See :mod:`.boosters` for what the booster kinds share.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from streamer.core.models.base import ModelOptions
from streamer.core.models.boosters import booster_model, raw_values
from streamer.core.models.common import (
    ChunkedModel,
    as_matrix,
    import_for_kind,
    one_line,
    read_model_file,
    resolve_spec,
)
from streamer.errors import ModelLoadError


def load(options: ModelOptions) -> ChunkedModel:
    """Load a LightGBM booster from its text format (``model.txt``).

    Raises:
        ModelLoadError: lightgbm is missing, the file is not a booster, or it does
            not fit the features.
    """
    raw = read_model_file(options, "a LightGBM model.txt")
    where = f"model.path={options.path}"
    lgb = import_for_kind("lightgbm", "lightgbm", "lightgbm")
    try:
        booster = lgb.Booster(model_str=raw.decode("utf-8"))
    except Exception as exc:  # LightGBMError, UnicodeDecodeError, ...
        msg = f"{where} is not a LightGBM text model: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    classes = booster.num_model_per_iteration()
    names = [str(n) for n in booster.feature_name()]
    generated = names == [f"Column_{i}" for i in range(len(names))]
    configured = list(options.features)
    # LightGBM saves "mean radius" as "mean_radius"; the events carry the original.
    underscored = not generated and any("_" in n for n in names)
    if [_lightgbm_name(n) for n in configured] == names:
        names = configured
        underscored = False
    spec = resolve_spec(
        raw_values(options),
        where,
        model_names=None if generated else names,
        model_names_what="the booster's feature names",
        n_inputs=booster.num_feature(),
    )
    if underscored:
        # Without preprocess.features, a record's "mean radius" is read as "mean_radius".
        spec = dataclasses.replace(spec, underscored_names=True)

    # One thread: tree predictions are per row, and the pipeline parallelizes across actors.
    def call(chunk: np.ndarray) -> np.ndarray:
        return as_matrix(booster.predict(chunk, num_threads=1), chunk.shape[0])

    def contributions(chunk: np.ndarray) -> np.ndarray:
        raw_contribs = np.asarray(
            booster.predict(chunk, pred_contrib=True, num_threads=1), np.float64
        )
        width = chunk.shape[1] + 1
        if classes > 1:  # (n, classes * (d + 1)): explain each row's likeliest class
            likeliest = np.argmax(call(chunk), axis=1)
            per_class = raw_contribs.reshape(chunk.shape[0], classes, width)
            raw_contribs = per_class[np.arange(chunk.shape[0]), likeliest]
        return raw_contribs[:, :-1]  # the last column is the bias

    return booster_model(
        options, raw, "lightgbm", spec, call, contributions, multiclass=classes > 1, where=where
    )


def _lightgbm_name(name: str) -> str:
    """The name LightGBM stores for a pandas column (it turns spaces into underscores)."""
    return "_".join(name.split(" "))

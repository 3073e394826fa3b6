"""``kind = "xgboost"``: an XGBoost booster in its own ``.json`` or ``.ubj`` file.

See :mod:`.boosters` for what the booster kinds share.
"""

from __future__ import annotations

import json
from typing import Any

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
    """Load an XGBoost booster from a ``.json`` or ``.ubj`` file.

    Raises:
        ModelLoadError: xgboost is missing, the file is not a booster, or it does
            not fit the features.
    """
    raw = read_model_file(options, "an XGBoost .json or .ubj booster file")
    where = f"model.path={options.path}"
    xgb = import_for_kind("xgboost", "xgboost", "xgboost")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(raw))
        config = json.loads(booster.save_config())
    except Exception as exc:  # xgboost raises XGBoostError, or others on garbage
        msg = f"{where} is not an XGBoost booster (.json or .ubj): {one_line(exc)}"
        raise ModelLoadError(msg) from None
    # One thread: tree predictions are per row, and the pipeline parallelizes across actors.
    booster.set_param({"nthread": 1})
    objective = str(config["learner"]["objective"]["name"])
    classes = int(config["learner"]["learner_model_param"].get("num_class", "0") or 0)
    names = booster.feature_names
    spec = resolve_spec(
        raw_values(options),
        where,
        model_names=list(names) if names else None,
        model_names_what="the booster's feature names",
        n_inputs=booster.num_features(),
    )
    columns = list(spec.names)

    def matrix(chunk: np.ndarray) -> Any:
        return xgb.DMatrix(chunk, feature_names=columns)

    def call(chunk: np.ndarray) -> np.ndarray:
        return as_matrix(booster.predict(matrix(chunk)), chunk.shape[0])

    def contributions(chunk: np.ndarray) -> np.ndarray:
        raw_contribs = np.asarray(booster.predict(matrix(chunk), pred_contribs=True), np.float64)
        if raw_contribs.ndim == 3:  # (n, classes, d + 1): explain each row's likeliest class
            likeliest = np.argmax(call(chunk), axis=1)
            raw_contribs = raw_contribs[np.arange(chunk.shape[0]), likeliest]
        return raw_contribs[:, :-1]  # the last column is the bias

    multiclass = objective.startswith("multi:softprob") or classes > 1
    return booster_model(
        options, raw, "xgboost", spec, call, contributions, multiclass=multiclass, where=where
    )

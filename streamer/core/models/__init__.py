"""Models: load once, score a standardized feature matrix.

Six kinds sit behind one :class:`~streamer.core.models.base.Model` protocol,
one module each:

- ``linear`` (:mod:`.linear`): a logistic regression in one JSON file; with no
  path, the packaged demo model.
- ``sklearn``, ``onnx`` and ``python`` (:mod:`.sklearn`, :mod:`.onnx`,
  :mod:`.python`): a user's own model, wrapped in a
  :class:`~streamer.core.models.common.ChunkedModel` that calls it on
  fixed-size, freshly allocated chunks so that a row's prediction never depends
  on its batch-mates (see ``common.py``).
- ``xgboost`` and ``lightgbm`` (:mod:`.xgboost`, :mod:`.lightgbm`, sharing
  :mod:`.boosters`): native booster files, no pickle.

Imports go one way: this table -> the kinds -> ``common`` -> ``base``. The
table names each loader by module, and imports the module only when that kind
is loaded, so that importing this package loads neither numpy nor a kind's
libraries. ``streamer.settings`` imports it, for the ``model.*`` choices and
:class:`ModelOptions`; nothing here imports the settings.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Protocol

from streamer.core.models.base import (
    METHODS,
    PROBABILITY_MODES,
    Model,
    ModelDefaults,
    ModelOptions,
    preparation_key,
)
from streamer.errors import ModelLoadError

__all__ = [
    "KINDS",
    "LOADERS",
    "METHODS",
    "PROBABILITY_MODES",
    "Configured",
    "Model",
    "ModelDefaults",
    "ModelOptions",
    "load_configured",
    "load_model",
    "preparation_key",
]

LOADERS: dict[str, str] = {
    "linear": "streamer.core.models.linear:load",
    "sklearn": "streamer.core.models.sklearn:load",
    "onnx": "streamer.core.models.onnx:load",
    "python": "streamer.core.models.python:load",
    "xgboost": "streamer.core.models.xgboost:load",
    "lightgbm": "streamer.core.models.lightgbm:load",
    "mlflow": "streamer.core.models.mlflow:load",
}
"""``model.kind`` -> ``module:function``, a function that takes :class:`ModelOptions`."""
KINDS = tuple(LOADERS)
"""The choices of ``model.kind``."""


def load_model(kind: str, path: str | None, options: ModelOptions | None = None) -> Model:
    """Load a model of the configured kind.

    Raises:
        ModelLoadError: The model cannot be loaded, or does not fit the options.
    """
    opts = dataclasses.replace(options or ModelOptions(), kind=kind, path=path or "")
    return _loader(kind)(opts)


class Configured(Protocol):
    """Settings that say which model to load; :class:`streamer.settings.Settings` does."""

    def model_options(self) -> ModelOptions:
        """The options of ``[model]`` and ``[preprocess]``."""
        ...


def load_configured(settings: Configured) -> Model:
    """Load the model that validated settings describe (``[model]`` and ``[preprocess]``).

    Raises:
        ModelLoadError: The model cannot be loaded, or does not fit the settings.
    """
    options = settings.model_options()
    return load_model(options.kind, options.path, options)


def _loader(kind: str) -> Callable[[ModelOptions], Model]:
    if kind not in LOADERS:
        supported = ", ".join(repr(k) for k in KINDS)
        msg = f"model.kind={kind!r} is not supported (supported: {supported})"
        raise ModelLoadError(msg)
    module, _, function = LOADERS[kind].partition(":")
    loader: Callable[[ModelOptions], Model] = getattr(importlib.import_module(module), function)
    return loader

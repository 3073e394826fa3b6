"""``kind = "mlflow"``: an MLflow model, from a local directory or a model registry.

``model.path`` is a local model directory (with an ``MLmodel`` file) or a URI:
``models:/name@alias``, ``models:/name/3`` or ``runs:/<run id>/model``. URIs are
resolved against ``model.tracking_uri``, else ``MLFLOW_TRACKING_URI`` (the
``streamer[mlflow]`` extra, ``mlflow-skinny``, is all it needs).

A model with a native scikit-learn, XGBoost or LightGBM flavour is loaded by
that kind's loader from the flavour's own file, so that ``model.method``,
``model.probabilities`` and ``model.explain_top_k`` apply as they do there, and
its scores are those of the native model. Anything else is loaded as a pyfunc
and called with a DataFrame of the features, one output field per column.

The signature's input names are the features, checked against
``preprocess.features`` when both are given. The name is the registry name and
the version the registry version, followed by ``@alias`` when an alias was
used. With an alias, :meth:`ChunkedModel.poll_source` asks the registry which
version the alias names, so that the reloader loads the new one when it moves.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.models.base import ModelOptions
from streamer.core.models.common import (
    ChunkedModel,
    as_matrix,
    one_line,
    output_names,
    probe,
    resolve_spec,
)
from streamer.errors import ModelLoadError

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_NUMBERED = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_NATIVE = ("sklearn", "xgboost", "lightgbm")
"""Flavours loaded by streamer's own kind of the same name, in this order of preference."""


@dataclass(frozen=True)
class _Source:
    """Where a model comes from: a local directory, or the registry or a run."""

    uri: str
    name: str
    version: str
    alias: str = ""
    download: str = ""
    """The artifact URI to download; empty for a local directory."""

    @property
    def label(self) -> str:
        """The version as written to outputs: ``3``, or ``3@champion`` when followed."""
        return f"{self.version}@{self.alias}" if self.alias else self.version


def load(options: ModelOptions) -> ChunkedModel:
    """Load the MLflow model that ``model.path`` names; see the module docstring.

    Raises:
        ModelLoadError: A bad URI, an unknown model, version or alias, an unreachable
            registry, a missing flavour, or a signature that does not fit.
    """
    if not options.path:
        msg = (
            "model.kind='mlflow' needs model.path: a local MLflow model directory, "
            "models:/name@alias, models:/name/<version> or runs:/<run id>/<path>"
        )
        raise ModelLoadError(msg)
    local = Path(options.path)
    if local.is_dir():
        if not (local / "MLmodel").is_file():
            msg = f"model.path={options.path} has no MLmodel file; point it at an MLflow model"
            raise ModelLoadError(msg)
        source = _Source(options.path, local.resolve().name, "")
        return _load_directory(options, source, local, watched=True)
    mlflow = _mlflow(options.path)
    tracking = options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    source = _resolve(mlflow, options.path, tracking)
    target = Path(tempfile.mkdtemp(prefix="streamer-mlflow-"))
    try:
        try:
            directory = mlflow.artifacts.download_artifacts(
                artifact_uri=source.download,
                dst_path=str(target),
                tracking_uri=tracking or None,
                registry_uri=tracking or None,
            )
        except Exception as exc:  # MlflowException, OSError, requests errors
            msg = f"model.path={options.path}: cannot download the model: {one_line(exc)}"
            raise ModelLoadError(msg) from None
        model = _load_directory(options, source, Path(directory), watched=False)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    if model.kind != "mlflow-pyfunc":
        shutil.rmtree(target, ignore_errors=True)  # the native loaders read it all
    if source.alias:
        return dataclasses.replace(
            model, source_poll=_alias_poll(mlflow, tracking, source.name, source.alias)
        )
    return model


def _mlflow(path: str) -> Any:
    if not (path.startswith(("models:/", "runs:/"))):
        msg = (
            f"model.path={path} is neither a local MLflow model directory nor an "
            "MLflow URI (models:/name@alias, models:/name/<version>, runs:/<run id>/<path>)"
        )
        raise ModelLoadError(msg)
    try:
        import mlflow  # noqa: PLC0415
        import mlflow.artifacts  # noqa: PLC0415
    except ImportError as exc:
        msg = (
            f"model.kind='mlflow' needs mlflow ({exc}); "
            "install it with: pip install 'streamer[mlflow]'"
        )
        raise ModelLoadError(msg) from None
    return mlflow


def _resolve(mlflow: Any, uri: str, tracking: str) -> _Source:
    """The registry version a URI names now (an alias is looked up once, here)."""
    if uri.startswith("runs:/"):
        run = uri.removeprefix("runs:/").split("/", 1)[0]
        return _Source(uri, f"run-{run[:12]}", run[:12], download=uri)
    alias, numbered = _ALIAS.match(uri), _NUMBERED.match(uri)
    if not alias and not numbered:
        msg = f"model.path={uri} is not models:/name@alias or models:/name/<version>"
        raise ModelLoadError(msg)
    client = mlflow.MlflowClient(tracking_uri=tracking or None, registry_uri=tracking or None)
    try:
        if alias:
            name, label = alias["name"], alias["alias"]
            version = str(client.get_model_version_by_alias(name, label).version)
        else:
            name, label, version = numbered["name"], "", numbered["version"]  # type: ignore[index]
        # Where the version's files are (a models:/ URI would resolve against the
        # process-wide registry URI, not this one).
        download = str(client.get_model_version_download_uri(name, version))
    except Exception as exc:  # MlflowException (unknown name/alias), connection errors
        where = f"tracking URI {tracking}" if tracking else "the default tracking URI"
        msg = f"model.path={uri}: the registry at {where} says: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    return _Source(uri, name, version, label, download=download)


def _alias_poll(mlflow: Any, tracking: str, name: str, alias: str) -> Callable[[], object]:
    """Which version the alias names; the last known one while the registry is unreachable."""
    client = mlflow.MlflowClient(tracking_uri=tracking or None, registry_uri=tracking or None)
    last: list[object] = [None]

    def poll() -> object:
        try:
            last[0] = str(client.get_model_version_by_alias(name, alias).version)
        except Exception as exc:  # an unreachable registry never stops scoring
            log.warning(
                "cannot ask the registry which version %s@%s is (retrying): %s",
                name,
                alias,
                one_line(exc),
            )
        return last[0]

    poll()
    return poll


def _read_mlmodel(directory: Path, where: str) -> dict[str, Any]:
    import yaml  # noqa: PLC0415 - mlflow-skinny depends on PyYAML

    try:
        doc = yaml.safe_load((directory / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        msg = f"{where}: cannot read its MLmodel file: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        msg = f"{where}: its MLmodel file lists no flavors"
        raise ModelLoadError(msg)
    return doc


def _signature_names(doc: dict[str, Any], where: str) -> tuple[str, ...] | None:
    import json  # noqa: PLC0415

    inputs = (doc.get("signature") or {}).get("inputs")
    if not inputs:
        return None
    try:
        columns = json.loads(inputs)
        names = tuple(str(c["name"]) for c in columns)
    except (ValueError, TypeError, KeyError):
        msg = f"{where}: its signature's inputs are not named columns (a tensor signature?)"
        raise ModelLoadError(msg) from None
    return names


def _load_directory(
    options: ModelOptions, source: _Source, directory: Path, *, watched: bool
) -> ChunkedModel:
    where = f"model.path={options.path}"
    doc = _read_mlmodel(directory, where)
    flavors: dict[str, Any] = doc["flavors"]
    signature = _signature_names(doc, where)
    if signature is not None and options.features and set(signature) != set(options.features):
        missing = sorted(set(signature) - set(options.features))
        extra = sorted(set(options.features) - set(signature))
        msg = (
            f"{where}: preprocess.features does not match the model's signature "
            f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'})"
        )
        raise ModelLoadError(msg)
    features = options.features or signature or ()
    inner_options = dataclasses.replace(
        options, features=tuple(features), name=options.name or source.name
    )
    for flavor in _NATIVE:
        if flavor in flavors:
            model = _load_native(flavor, flavors[flavor], inner_options, directory, where)
            break
    else:
        if "python_function" not in flavors:
            msg = f"{where}: no flavour streamer can load (it has {', '.join(flavors)})"
            raise ModelLoadError(msg)
        model = _load_pyfunc(inner_options, directory, where)
    version = options.version or source.label or model.version
    return dataclasses.replace(
        model,
        version=version,
        watch_paths=model.watch_paths if watched else (),
    )


def _load_native(
    flavor: str, conf: dict[str, Any], options: ModelOptions, directory: Path, where: str
) -> ChunkedModel:
    from streamer.core.models import load_model  # noqa: PLC0415 - the table imports this module

    key = "pickled_model" if flavor == "sklearn" else "data"
    data = conf.get(key)
    if not isinstance(data, str) or not (directory / data).is_file():
        msg = f"{where}: its {flavor} flavour names no model file ({key})"
        raise ModelLoadError(msg)
    if flavor == "sklearn":
        return _load_sklearn_flavour(options, directory, directory / data, where)
    loaded = load_model(flavor, str(directory / data), options)
    if not isinstance(loaded, ChunkedModel):  # every native kind is one
        msg = f"{where}: the {flavor} flavour did not load"
        raise ModelLoadError(msg)
    return loaded


def _load_sklearn_flavour(
    options: ModelOptions, directory: Path, data: Path, where: str
) -> ChunkedModel:
    """MLflow's own reader (pickle, cloudpickle or skops), then the sklearn kind's wrapper."""
    import mlflow.sklearn  # noqa: PLC0415

    from streamer.core.models.sklearn import fitted_estimator, wrap_estimator  # noqa: PLC0415

    estimator = fitted_estimator(lambda: mlflow.sklearn.load_model(str(directory)), where)
    inner = dataclasses.replace(options, path=str(data))
    return wrap_estimator(inner, estimator, data.read_bytes(), where)


def _load_pyfunc(options: ModelOptions, directory: Path, where: str) -> ChunkedModel:
    import mlflow.pyfunc  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    try:
        pyfunc = mlflow.pyfunc.load_model(str(directory))
    except Exception as exc:  # any failure of the user's model is a load error
        msg = f"{where}: cannot load it as a pyfunc: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    spec = resolve_spec(
        options, where, model_names=None, model_names_what="the signature", n_inputs=None
    )
    columns = list(spec.names)
    labels: list[str] = []

    def call(chunk: np.ndarray) -> np.ndarray:
        result = pyfunc.predict(pd.DataFrame(chunk, columns=columns, copy=False))
        found = getattr(result, "columns", None)
        if found is not None and not labels:
            labels.extend(str(c) for c in found)
        return as_matrix(result, chunk.shape[0])

    width = probe(call, spec, options.chunk_rows, where)
    names = tuple(labels) if len(labels) == width > 1 else output_names(width, "score")
    return ChunkedModel.from_source(
        options,
        (directory / "MLmodel").read_bytes(),
        kind="mlflow-pyfunc",
        default_name=directory.name,
        spec=spec,
        output_names=names,
        call=call,
        watched=directory / "MLmodel",
    )

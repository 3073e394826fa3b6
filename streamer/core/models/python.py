"""``kind = "python"``: a callable that takes a DataFrame and returns predictions.

``model.path`` is ``package.module:callable`` or ``path/to/file.py:callable``.
The callable gets a DataFrame whose columns are the features, in order, and
returns an array, a Series (one ``score``) or a DataFrame (one field per
column). Its features come from ``preprocess.features``, the stats file, or a
``features`` attribute on the callable.

Each load executes the module's source afresh into a new, private module
object, so a hot reload never changes the globals of the function that the
model actors are still calling.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from streamer.core.models.base import ModelOptions
from streamer.core.models.common import (
    ChunkCall,
    ChunkedModel,
    as_matrix,
    one_line,
    output_names,
    probe,
    resolve_spec,
)
from streamer.errors import ModelLoadError

_loads = itertools.count()


def load(options: ModelOptions) -> ChunkedModel:
    """Import the callable and wrap it for the pipeline.

    Raises:
        ModelLoadError: The reference is malformed, the module cannot be imported,
            the callable does not exist, or it does not fit the features.
    """
    reference = options.path
    source, attribute, function = _resolve(reference)
    where = f"model.path={reference}"
    declared = getattr(function, "features", None)
    spec = resolve_spec(
        options,
        where,
        model_names=[str(n) for n in declared] if declared is not None else None,
        model_names_what=f"{attribute}.features",
        n_inputs=None,
    )
    labels: list[str] = []
    call = _chunk_call(function, list(spec.names), labels)
    width = probe(call, spec, options.chunk_rows, where)
    return ChunkedModel.from_source(
        options,
        source.read_bytes() if source is not None else reference.encode(),
        kind="python",
        default_name=attribute,
        spec=spec,
        output_names=(
            tuple(labels) if width > 1 and len(labels) == width else output_names(width, "score")
        ),
        call=call,
        watched=source,
    )


def _resolve(reference: str) -> tuple[Path | None, str, Callable[..., Any]]:
    """(the module's source file if any, the attribute path, the callable) of a reference."""
    module_ref, sep, attribute = reference.rpartition(":")
    if not sep or not module_ref or not attribute:
        msg = (
            f"model.path={reference!r} must be 'package.module:callable' or "
            "'path/to/file.py:callable' for model.kind='python'"
        )
        raise ModelLoadError(msg)
    source, module = _import_fresh(module_ref, reference)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            msg = f"model.path={reference}: {module_ref} has no attribute {attribute!r}"
            raise ModelLoadError(msg)
        target = getattr(target, part)
    if not callable(target):
        msg = f"model.path={reference}: {attribute} is a {type(target).__name__}, not a callable"
        raise ModelLoadError(msg)
    return source, attribute, target


def _chunk_call(function: Callable[..., Any], columns: list[str], labels: list[str]) -> ChunkCall:
    """Call ``function`` on a chunk as a DataFrame; ``labels`` gets the first result's columns."""
    import pandas as pd  # noqa: PLC0415

    def call(chunk: np.ndarray) -> np.ndarray:
        result = function(pd.DataFrame(chunk, columns=columns, copy=False))
        if not labels and isinstance(result, pd.DataFrame):
            labels.extend(str(c) for c in result.columns)
        return as_matrix(result, chunk.shape[0])

    return call


def _import_fresh(module_ref: str, reference: str) -> tuple[Path | None, ModuleType]:
    """Execute the module's source into a new module object; (source file, module)."""
    if module_ref.endswith(".py"):
        origin: str | None = module_ref
        package = ""
        if not Path(module_ref).is_file():
            msg = f"model.path={reference}: {module_ref} does not exist"
            raise ModelLoadError(msg)
    else:
        try:
            found = importlib.util.find_spec(module_ref)
        except (ImportError, ValueError) as exc:
            msg = f"cannot import {module_ref} (model.path={reference}): {one_line(exc)}"
            raise ModelLoadError(msg) from None
        if found is None:
            msg = f"cannot import {module_ref} (model.path={reference}): no such module"
            raise ModelLoadError(msg)
        origin = found.origin if found.has_location else None
        package = module_ref.rpartition(".")[0]
        if origin is None or not origin.endswith(".py"):
            try:
                return None, importlib.import_module(module_ref)
            except Exception as exc:  # importing runs arbitrary code
                msg = f"cannot import {module_ref}: {one_line(exc)}"
                raise ModelLoadError(msg) from None
    private = f"_streamer_model_{next(_loads)}"
    spec = importlib.util.spec_from_file_location(private, origin)
    if spec is None or spec.loader is None:
        msg = f"cannot import {module_ref} (model.path={reference})"
        raise ModelLoadError(msg)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package  # relative imports resolve in the real package
    sys.modules[private] = module  # dataclasses and pickle look the module up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # importing runs arbitrary code
        sys.modules.pop(private, None)
        msg = f"cannot import {module_ref} (model.path={reference}): {one_line(exc)}"
        raise ModelLoadError(msg) from None
    assert origin is not None
    return Path(origin), module

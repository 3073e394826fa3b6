"""``kind = "onnx"``: an ONNX file run with onnxruntime (the ``streamer[onnx]`` extra).

Inputs are mapped by name. A model with one input of shape ``[N, d]`` gets the
feature matrix (its names come from ``preprocess.features`` or the stats file);
a model with one ``[N, 1]`` input per feature gets each column under the
feature's name. Outputs are chosen by name too (``model.outputs``); by default
``probabilities`` (as skl2onnx names it) or else the first output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.features import FeatureSpec
from streamer.core.models.base import ModelOptions
from streamer.core.models.common import (
    ChunkCall,
    ChunkedModel,
    as_matrix,
    import_for_kind,
    one_line,
    output_names,
    probe,
    read_model_file,
    resolve_spec,
)
from streamer.errors import ModelLoadError

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}
PROBABILITIES = "probabilities"

Feed = Callable[[np.ndarray], dict[str, np.ndarray]]
"""A chunk as the session's inputs, by name."""


def load(options: ModelOptions) -> ChunkedModel:
    """Load an ONNX model with onnxruntime and wrap it for the pipeline.

    Raises:
        ModelLoadError: The file is missing or not ONNX, its inputs are not numeric,
            a configured output does not exist, or it does not fit the features.
    """
    raw = read_model_file(options, "an .onnx file")
    where = f"model.path={options.path}"
    session = _session(raw, where)
    spec, feed = _inputs(session, raw, options, where)
    wanted, proba_mode = _choose_outputs(session, options, where)
    positive = proba_mode and options.probabilities == "positive"
    call = _chunk_call(session, wanted, feed, positive=positive)
    width = probe(call, spec, options.chunk_rows, where)
    return ChunkedModel.from_source(
        options,
        raw,
        kind="onnx",
        default_name=Path(options.path).stem,
        spec=spec,
        output_names=_output_names(width, wanted, proba_mode, where),
        call=call,
        watched=Path(options.path),
    )


def _session(raw: bytes, where: str) -> Any:
    """An onnxruntime session of the model, on one thread."""
    ort = import_for_kind("onnx", "onnxruntime", "onnx")
    session_options = ort.SessionOptions()
    # One thread per session: the pipeline parallelizes across model actors, and
    # one session then never races its own thread pool.
    session_options.intra_op_num_threads = 1
    session_options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(raw, session_options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        msg = f"{where} is not a valid ONNX model: {one_line(exc)}"
        raise ModelLoadError(msg) from None


def _inputs(
    session: Any, raw: bytes, options: ModelOptions, where: str
) -> tuple[FeatureSpec, Feed]:
    """The features the graph reads, and how a chunk is fed to its inputs."""
    inputs = session.get_inputs()
    scales_inside = _has_scaler(raw)
    for node in inputs:
        if node.type not in _DTYPES:
            msg = (
                f"{where}: input {node.name!r} is {node.type}; streamer feeds "
                "numbers (tensor(float) or tensor(double))"
            )
            raise ModelLoadError(msg)
    if len(inputs) == 1 and not _is_column(inputs[0].shape):
        shape = inputs[0].shape
        width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        spec = resolve_spec(
            options,
            where,
            model_names=None,
            model_names_what="",
            n_inputs=width,
            scales_inside=scales_inside,
        )
        return spec, _matrix_feed(inputs[0].name, _DTYPES[inputs[0].type])
    spec = resolve_spec(
        options,
        where,
        model_names=[node.name for node in inputs],
        model_names_what="the model's input names",
        n_inputs=None,
        scales_inside=scales_inside,
    )
    dtypes = {node.name: _DTYPES[node.type] for node in inputs}
    return spec, _column_feed(spec.names, dtypes)


def _chunk_call(session: Any, wanted: list[str], feed: Feed, *, positive: bool) -> ChunkCall:
    """Run the session on one chunk; the positive class's column only when ``positive``."""

    def call(chunk: np.ndarray) -> np.ndarray:
        results = session.run(wanted, feed(chunk))
        columns = [_numeric(result, chunk.shape[0]) for result in results]
        if positive:
            return columns[0][:, 1]
        return columns[0] if len(columns) == 1 else np.column_stack(columns)

    return call


def _output_names(width: int, wanted: list[str], proba_mode: bool, where: str) -> tuple[str, ...]:
    if proba_mode:
        return output_names(width, "proba")
    if len(wanted) == 1:
        return ("score",) if width == 1 else output_names(width, wanted[0])
    if width == len(wanted):
        return tuple(wanted)
    msg = (
        f"{where}: with several model.outputs, each must give one value "
        f"per row; {', '.join(wanted)} give {width} together"
    )
    raise ModelLoadError(msg)


def _choose_outputs(session: Any, options: ModelOptions, where: str) -> tuple[list[str], bool]:
    """(the outputs to read, whether that is the default 'probabilities')."""
    available = [node.name for node in session.get_outputs()]
    for out in options.outputs:
        if out not in available:
            msg = f"{where} has no output {out!r} (model.outputs); it has {', '.join(available)}"
            raise ModelLoadError(msg)
    if options.outputs:
        return list(options.outputs), False
    if PROBABILITIES in available:
        return [PROBABILITIES], True
    return [available[0]], False


def _is_column(shape: list[Any]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def _has_scaler(raw: bytes) -> bool:
    """Does the graph scale its input (skl2onnx turns a StandardScaler into ``Scaler``)?

    onnxruntime does not list a session's nodes; the ``onnx`` package does, when
    it is installed (skl2onnx brings it). Without it this check is skipped.
    """
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        return False
    try:
        graph = onnx.load_from_string(raw).graph
    except Exception:  # onnxruntime accepted the file; this check is best effort
        return False
    return any(node.op_type in ("Scaler", "Normalizer") for node in graph.node)


def _matrix_feed(name: str, dtype: Any) -> Feed:
    def feed(chunk: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(chunk, dtype=dtype)}

    return feed


def _column_feed(names: tuple[str, ...], dtypes: dict[str, Any]) -> Feed:
    def feed(chunk: np.ndarray) -> dict[str, np.ndarray]:
        return {
            name: np.ascontiguousarray(chunk[:, [col]], dtype=dtypes[name])
            for col, name in enumerate(names)
        }

    return feed


def _numeric(result: Any, rows: int) -> np.ndarray:
    if isinstance(result, list) and result and isinstance(result[0], dict):
        # A ZipMap output: one {class: probability} dict per row.
        keys = sorted(result[0])
        result = [[row[k] for k in keys] for row in result]
    return as_matrix(result, rows)

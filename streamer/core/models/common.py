"""What the ``sklearn``, ``onnx`` and ``python`` kinds share.

**Batch invariance.** A BLAS matrix product (a LogisticRegression's
``X @ coef.T``, an ONNX ``MatMul``) may use another kernel, and so sum in
another order, depending on how many rows it gets and on where the matrix lies
in memory. On this machine a scikit-learn LogisticRegression gives scores that
differ in the last bits between a batch of 1 or 7 rows and a batch of 64. So
:func:`predict_in_chunks` always calls the model with exactly ``chunk_rows``
rows, copied into a freshly allocated, 64-byte aligned matrix; the last chunk is
padded with copies of its first row, and the padding's outputs are dropped.
Every row of every batch then goes through the same computation. Tree
ensembles do not need it, but gain nothing from skipping it either:
``model.chunk_rows = 0`` turns it off.

**The user's own layout.** The chunk is column-major (Fortran order), because
that is what scikit-learn gets from the data scientist's
``model.predict_proba(pd.DataFrame(events)[features])``: pandas keeps a
one-dtype frame as one ``(columns, rows)`` block, and ``np.asarray(frame)`` is
its transpose. OpenBLAS computes ``X @ w`` for a column-major ``X`` with
another kernel (and another summation order) than for a row-major one: with
row-major chunks only ~80% of streamed scores were bit-identical to that
offline call, with column-major ones all of them are, except the last
``rows % 4`` rows of the offline frame, which OpenBLAS's kernel computes in
its scalar tail (measured in docs/models.md, "Fidelity").
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.features import FeatureSpec
from streamer.core.files import read_file
from streamer.core.models.base import ModelDefaults, ModelOptions
from streamer.core.stats import FeatureStats, load_stats
from streamer.errors import ModelLoadError

ChunkCall = Callable[[np.ndarray], np.ndarray]

_ALIGN = 64


@dataclass(frozen=True, eq=False)
class ChunkedModel(ModelDefaults):
    """A user's model behind the :class:`~streamer.core.models.base.Model` protocol.

    ``call`` takes a ``(chunk_rows, d)`` float64 matrix and returns float64 of
    shape ``(chunk_rows,)`` or ``(chunk_rows, len(output_names))``.
    """

    name: str
    version: str
    spec: FeatureSpec
    output_names: tuple[str, ...]
    call: ChunkCall
    chunk_rows: int
    kind: str
    digest: str = ""
    watch_paths: tuple[Path, ...] = field(default=())
    contributions: ChunkCall | None = None
    """(n, d) -> (n, d): each feature's contribution to the explained output, if known."""
    explain_top_k: int = 0
    source_poll: Callable[[], object] | None = None
    """What would load now (a registry alias's version); a change hot-reloads the model."""

    @classmethod
    def from_source(
        cls,
        options: ModelOptions,
        source: bytes,
        *,
        kind: str,
        default_name: str,
        spec: FeatureSpec,
        output_names: tuple[str, ...],
        call: ChunkCall,
        watched: Path | None,
        contributions: ChunkCall | None = None,
    ) -> ChunkedModel:
        """A loaded model, named by ``options`` or else by ``default_name`` and ``source``.

        ``source`` is what the model was loaded from (the file's bytes, or a
        callable's module source): its SHA-256 is the digest, and its first 12 hex
        digits the version unless ``model.version`` is set. A change to
        ``watched``, when given, hot-reloads the model. ``contributions``, when
        given, explains each row (``model.explain_top_k``).

        Raises:
            ModelLoadError: ``model.explain_top_k`` is set but the model cannot explain.
        """
        digest = hashlib.sha256(source).hexdigest()
        if options.explain_top_k and contributions is None:
            msg = (
                f"model.explain_top_k={options.explain_top_k}: model.kind={kind!r} at "
                f"model.path={options.path} gives no reason codes (xgboost, lightgbm, linear "
                "and linear sklearn pipelines do); set model.explain_top_k = 0"
            )
            raise ModelLoadError(msg)
        return cls(
            name=options.name or default_name,
            version=options.version or digest[:12],
            spec=spec,
            output_names=output_names,
            call=call,
            chunk_rows=options.chunk_rows,
            kind=kind,
            digest=digest,
            watch_paths=(watched,) if watched is not None else (),
            contributions=contributions,
            explain_top_k=options.explain_top_k,
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Score an (n, d) matrix in fixed-size chunks; see the module docstring."""
        if features.shape[0] == 0:
            width = len(self.output_names)
            return np.empty((0,) if width == 1 else (0, width))
        return predict_in_chunks(self.call, features, self.chunk_rows)

    def poll_source(self) -> object:
        """What the model's source would load now (see ``source_poll``), or None."""
        return self.source_poll() if self.source_poll is not None else None

    def reasons(self, features: np.ndarray) -> list[bytes]:
        """Each row's ``explain_top_k`` reason codes as JSON (see :mod:`.reasons`)."""
        from streamer.core.models.reasons import top_reasons  # noqa: PLC0415

        if self.contributions is None or features.shape[0] == 0:
            return [b"[]"] * features.shape[0]
        parts = predict_in_chunks(self.contributions, features, self.chunk_rows)
        return top_reasons(parts, self.spec.names, self.explain_top_k)


def fresh_matrix(rows: int, width: int) -> np.ndarray:
    """A new column-major float64 matrix whose data starts on a 64-byte boundary.

    Column-major, as ``np.asarray(pd.DataFrame(...))`` is: see the module docstring.
    """
    nbytes = rows * width * 8
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start : start + nbytes].view(np.float64).reshape(width, rows).T


def predict_in_chunks(call: ChunkCall, features: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Call ``call`` on fixed-size, freshly allocated chunks; concatenate the real rows."""
    rows, width = features.shape
    if chunk_rows <= 0:
        whole = fresh_matrix(rows, width)
        whole[:] = features
        return call(whole)
    parts: list[np.ndarray] = []
    for start in range(0, rows, chunk_rows):
        part = features[start : start + chunk_rows]
        size = part.shape[0]
        chunk = fresh_matrix(chunk_rows, width)
        chunk[:size] = part
        if size < chunk_rows:
            chunk[size:] = part[0]
        parts.append(call(chunk)[:size])
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


def as_matrix(result: Any, rows: int) -> np.ndarray:
    """A model's output (array, list, pandas Series or DataFrame) as float64 (n,) or (n, m).

    Raises:
        ValueError: The output is not numeric or does not have one row per input row.
    """
    to_numpy = getattr(result, "to_numpy", None)
    array = (
        to_numpy(dtype=np.float64) if callable(to_numpy) else np.asarray(result, dtype=np.float64)
    )
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim not in (1, 2) or array.shape[0] != rows:
        msg = f"the model returned shape {array.shape} for {rows} rows"
        raise ValueError(msg)
    return array


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def import_for_kind(kind: str, module: str, extra: str) -> Any:
    """Import a kind's library, or say in one line which extra installs it.

    Raises:
        ModelLoadError: The module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.partition(".")[0]
        msg = (
            f"model.kind={kind!r} needs {package} ({exc}); "
            f"install it with: pip install 'streamer[{extra}]'"
        )
        raise ModelLoadError(msg) from None


def read_model_file(options: ModelOptions, what: str) -> bytes:
    """The bytes of ``model.path``.

    Raises:
        ModelLoadError: No path is set, or the file cannot be read.
    """
    if not options.path:
        msg = f"model.kind={options.kind!r} needs model.path ({what})"
        raise ModelLoadError(msg)
    return read_file("model.path", options.path)


def _compare(
    names: Sequence[str], other: Sequence[str], other_what: str, names_what: str, where: str
) -> None:
    missing = [n for n in names if n not in set(other)]
    extra = [n for n in other if n not in set(names)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected: {', '.join(extra)}")
        msg = f"{where}: {other_what} does not match {names_what} ({'; '.join(parts)})"
        raise ModelLoadError(msg)


def _feature_names(
    options: ModelOptions,
    where: str,
    model_names: Sequence[str] | None,
    model_names_what: str,
    n_inputs: int | None,
    stats: FeatureStats | None,
) -> tuple[str, ...]:
    configured = tuple(options.features)
    if len(set(configured)) != len(configured):
        msg = f"preprocess.features names a feature twice: {', '.join(configured)}"
        raise ModelLoadError(msg)
    stats_what = f"the stats file {options.stats_path}"
    names: tuple[str, ...]
    if model_names is not None:
        names, source = tuple(model_names), model_names_what
        if configured:
            _compare(names, configured, "preprocess.features", model_names_what, where)
    elif configured:
        names, source = configured, "preprocess.features"
    elif stats is not None:
        names, source = stats.names, stats_what
    else:
        msg = (
            f"{where} has no feature names; set preprocess.features "
            "(comma-separated, in column order) or preprocess.stats_path"
        )
        raise ModelLoadError(msg)
    if stats is not None and source != stats_what:
        _compare(names, stats.names, stats_what, source, where)
    if n_inputs is not None and len(names) != n_inputs:
        msg = f"{where} expects {n_inputs} features, but {source} names {len(names)}"
        raise ModelLoadError(msg)
    return names


def resolve_spec(
    options: ModelOptions,
    where: str,
    *,
    model_names: Sequence[str] | None,
    model_names_what: str,
    n_inputs: int | None,
    scales_inside: bool = False,
    inner_mean: np.ndarray | None = None,
    inner_std: np.ndarray | None = None,
) -> FeatureSpec:
    """The features a model reads and the statistics to standardize or impute them with.

    The names come from the model itself (``model_names``), else from
    ``preprocess.features``, else from the stats file; whichever of these is
    given must name the same features. The statistics come from the stats file,
    else from the model's own first scaler (``inner_mean``/``inner_std``, used for
    imputing only: the model standardizes itself), else there are none.

    Raises:
        ModelLoadError: The sources disagree, no names are known, the count is wrong,
            standardization would happen twice, or imputing has no means.
    """
    stats = load_stats(options.stats_path) if options.stats_path else None
    names = _feature_names(options, where, model_names, model_names_what, n_inputs, stats)
    width = len(names)
    stats_what = f"the stats file {options.stats_path}"
    if stats is not None:
        ordered = stats.reordered(names)
        if scales_inside and options.standardize:
            msg = (
                f"{where} already scales its input (it contains a scaler); "
                f"standardizing with {stats_what} too would do it twice: remove "
                "preprocess.stats_path, or set preprocess.standardize = false"
            )
            raise ModelLoadError(msg)
        spec = FeatureSpec(
            names, ordered.mean, ordered.std, standardize=options.standardize, fitted=True
        )
    elif inner_mean is not None and inner_mean.shape == (width,):
        std = inner_std if inner_std is not None else np.ones(width)
        spec = FeatureSpec(names, inner_mean, std, standardize=False, fitted=True)
    else:
        spec = FeatureSpec(names, np.zeros(width), np.ones(width), standardize=False, fitted=False)
    if options.missing == "impute" and not spec.fitted:
        msg = (
            f"preprocess.missing='impute' needs the features' fitted means, and "
            f"{where} has none: set preprocess.stats_path (write one with `streamer fit-stats`)"
        )
        raise ModelLoadError(msg)
    return spec


def probe(call: ChunkCall, spec: FeatureSpec, chunk_rows: int, where: str) -> int:
    """Score one typical row to check the model works; returns its number of outputs.

    The row is what the preprocessor would make of the fitted means (zeros after
    standardization), or zeros when no statistics are known.

    Raises:
        ModelLoadError: The model raises, or returns a non-numeric or misshapen result.
    """
    row = np.zeros((1, len(spec.names)))
    if spec.fitted and not spec.standardize:
        row[0] = spec.mean
    try:
        out = predict_in_chunks(call, row, chunk_rows)
    except Exception as exc:  # any failure of the user's model is a load error here
        msg = f"{where}: a test prediction on one row failed: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    return 1 if out.ndim == 1 else int(out.shape[1])


def output_names(width: int, base: str, labels: Sequence[Any] | None = None) -> tuple[str, ...]:
    """``('score',)`` for one output, else ``base_<label>`` per column."""
    if width == 1:
        return ("score",)
    if labels is not None and len(labels) == width:
        return tuple(f"{base}_{label}" for label in labels)
    return tuple(f"{base}_{j}" for j in range(width))

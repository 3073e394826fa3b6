"""Decode JSON records, validate features, and standardize with fixed statistics.

Standardization uses statistics fitted once, offline, and shipped with the
model. The tutorial this project grew from standardized each batch with its
own mean and std, which made a record's prediction depend on which other
records happened to share its batch; here a row's features depend only on
that row.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import orjson

from streamer.core.dead_letters import (
    EMPTY_VALUE,
    INVALID_JSON,
    MISSING_FEATURE,
    NON_FINITE,
    NON_NUMERIC_FEATURE,
    NOT_OBJECT,
    NOT_UTF8,
    OVERSIZED,
)

MISSING_POLICIES = ("dlq", "drop", "impute")


@dataclass(frozen=True)
class FeatureSpec:
    """The model's input: feature names in column order and their fitted statistics.

    ``standardize`` is False for a model that scales inside (or was fitted on raw
    values): the preprocessor then passes raw values. ``fitted`` is False when
    ``mean`` and ``std`` are placeholders (no statistics known): imputing is
    then refused at load time.
    """

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    standardize: bool = True
    fitted: bool = True
    underscored_names: bool = False
    """The model stores names with their spaces turned into underscores (LightGBM: a column
    "mean radius" is the feature "mean_radius"): a record key with spaces then stands for
    the name it becomes, unless the record also carries that name itself."""

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.mean.shape != (n,) or self.std.shape != (n,):
            msg = (
                f"feature statistics must have {n} values each, "
                f"got mean {self.mean.shape} and std {self.std.shape}"
            )
            raise ValueError(msg)
        if np.any(self.std <= 0) or not np.all(np.isfinite(self.std)):
            msg = "every fitted std must be a positive finite number"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one row cannot be scored as it is."""

    index: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch after preprocessing.

    ``features`` has one row per entry of ``valid_rows`` (indexes into the batch).
    """

    features: np.ndarray
    valid_rows: np.ndarray
    rejected: tuple[RowProblem, ...]
    dropped: tuple[RowProblem, ...]


class _InvalidValueError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_value(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """Decode one record value into a JSON object, or raise _InvalidValueError with a reason."""
    if value is None or len(value) == 0:
        raise _InvalidValueError(EMPTY_VALUE, "the record has no value (null or empty)")
    if len(value) > max_bytes:
        raise _InvalidValueError(
            OVERSIZED, f"value is {len(value)} bytes, above batch.max_record_bytes={max_bytes}"
        )
    try:
        doc = loads_json(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise _InvalidValueError(
                NOT_UTF8, f"value is not UTF-8: {uexc.reason} at byte {uexc.start}"
            ) from None
        raise _InvalidValueError(INVALID_JSON, f"value is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _InvalidValueError(
            NOT_OBJECT, f"value is JSON {type(doc).__name__}, expected an object"
        )
    return doc


_NUMBER_OR_STRING = re.compile(
    rb'"(?:[^"\\]|\\.)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?', re.DOTALL
)
"""A JSON string (kept as it is) or a number token: what :func:`loads_json` looks at."""


def loads_json(value: bytes) -> Any:
    """``orjson.loads``, except that a number beyond a double's range reads as +-inf.

    orjson refuses a whole value for one number such as ``1e400`` ("number is
    infinity when parsed as double"), even in a field no feature reads, where
    the batch decoder of the fast path (msgspec, which skips the fields it does
    not read) accepts it: a record's answer then depended on its batch-mates.
    Both paths now *accept* such a value: it is valid JSON (RFC 8259 leaves a
    number's range to the reader; Python's ``json`` and pandas read ``inf``),
    a field nobody reads should not decide a record's fate, and accepting costs
    nothing on the fast path, where rejecting would cost a scan of every batch.
    A feature that reads such a number gets ``inf``: ``non_finite``.
    Any other error is orjson's, raised as it is.
    """
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if "infinity" not in str(exc):
            raise
        doc = _with_infinities(value)
        if doc is _ABSENT:
            raise
        return doc


def _with_infinities(value: bytes) -> Any:
    """``value`` decoded with each out-of-range number as +-inf, or ``_ABSENT`` if it is not JSON.

    Each such number becomes a string that no string of the value can be (a
    control character its text does not escape), orjson decodes the rest as
    ever, and those strings become +-inf again.
    """
    marks = [c for c in (*range(8), 11, *range(14, 32)) if b"\\u%04x" % c not in value.lower()]
    if not marks:
        return _ABSENT
    mark = chr(marks[0])
    found = False

    def substitute(token: re.Match[bytes]) -> bytes:
        nonlocal found
        text = token.group()
        if text[0] == 34 or math.isfinite(float(text)):  # 34: a string
            return text
        found = True
        return b'"\\u%04x%s"' % (marks[0], b"-" if text[0] == 45 else b"+")  # 45: "-"

    marked = _NUMBER_OR_STRING.sub(substitute, value)
    if not found:
        return _ABSENT
    try:
        doc = orjson.loads(marked)
    except orjson.JSONDecodeError:
        return _ABSENT
    infinities = {mark + "+": math.inf, mark + "-": -math.inf}
    if type(doc) is str:
        return infinities.get(doc, doc)
    stack = [doc] if type(doc) is dict or type(doc) is list else []
    while stack:  # no recursion: a value may nest 1,000 deep
        node = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for where, item in items:
            if type(item) is str and item in infinities:
                node[where] = infinities[item]
            elif type(item) is dict or type(item) is list:
                stack.append(item)
    return doc


InvalidValueError = _InvalidValueError
"""What :func:`to_number` raises: ``reason`` (a dead-letter reason) and ``detail``."""


def decoded_object(value: bytes | None, max_bytes: int) -> dict[str, Any] | str:
    """The record value as a JSON object, or the dead-letter reason it gets from decode_value."""
    try:
        return decode_value(value, max_bytes)
    except _InvalidValueError as exc:
        return exc.reason


def to_number(name: str, raw: Any) -> float:
    """Coerce one feature value (number, bool or numeric string) to a finite float."""
    kind = type(raw)
    if kind is float:
        number = raw
    elif kind is int:
        try:
            number = float(raw)
        except OverflowError:
            raise _InvalidValueError(
                NON_FINITE, f"feature {name!r} is too large for a float"
            ) from None
    elif kind is bool:
        number = 1.0 if raw else 0.0
    elif kind is str:
        try:
            number = float(raw.strip())
        except (ValueError, OverflowError):
            raise _InvalidValueError(
                NON_NUMERIC_FEATURE, f"feature {name!r} is the string {raw[:64]!r}, not a number"
            ) from None
    elif raw is None:
        raise _InvalidValueError(MISSING_FEATURE, f"feature {name!r} is null")
    else:
        raise _InvalidValueError(
            NON_NUMERIC_FEATURE, f"feature {name!r} is a JSON {kind.__name__}, not a number"
        )
    if not math.isfinite(number):
        raise _InvalidValueError(NON_FINITE, f"feature {name!r} is {number}, not finite")
    return number


def _missing(name: str, doc: dict[str, Any]) -> str:
    """The detail of a missing feature, with the record's key it was probably meant to be."""
    wanted = _loose(name)
    near = [key for key in doc if isinstance(key, str) and _loose(key) == wanted]
    if not near:
        return f"feature {name!r} is missing"
    return f"feature {name!r} is missing; the records carry {near[0]!r}"


def _loose(name: str) -> str:
    """A name compared loosely: case, spaces, underscores, dashes and dots aside."""
    return re.sub(r"[\s_\-.]+", "", name).lower()


def _row_or_problem(
    doc: dict[str, Any], names: tuple[str, ...], means: list[float], missing: str
) -> list[float] | _InvalidValueError:
    """Validate one decoded record: the exact reason for the first bad feature."""
    row: list[float] = []
    for col, name in enumerate(names):
        raw = doc.get(name, _ABSENT)
        try:
            if raw is _ABSENT:
                raise _InvalidValueError(MISSING_FEATURE, _missing(name, doc))  # noqa: TRY301
            row.append(to_number(name, raw))
        except _InvalidValueError as exc:
            if missing != "impute":
                return exc
            row.append(means[col])
    return row


def _fast_matrix(docs: list[dict[str, Any]], names: tuple[str, ...]) -> np.ndarray | None:
    """All rows at once when every feature is present and a JSON number or bool.

    Returns None when any row needs the per-row path (a missing key, a string,
    a null, a nested value): the caller then validates row by row, which gives
    the same floats, so a row's features never depend on its batch-mates.
    """
    # itemgetter picks every feature of a row in C: about 2x the list comprehension.
    getter = operator.itemgetter(*names)
    try:
        raw = np.array(list(map(getter, docs)))
    except (KeyError, ValueError, TypeError, OverflowError):
        return None
    if len(names) == 1 and raw.ndim == 1:
        raw = raw.reshape(len(docs), 1)
    if raw.dtype.kind not in "fiub" or raw.shape != (len(docs), len(names)):
        return None
    return raw.astype(np.float64, copy=False)


def _decode_all(values: Sequence[bytes | None], max_bytes: int) -> list[dict[str, Any]] | None:
    """Every value at once, when each one is non-empty, small enough and a JSON object.

    Returns None otherwise, and the caller decodes row by row to find the
    reason of each bad row; a good row decodes to the same object either way.
    """
    try:
        if min(map(len, values)) == 0 or max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
            return None
        docs = list(map(orjson.loads, values))  # type: ignore[arg-type]
    except (TypeError, orjson.JSONDecodeError):  # a None value, or one that is not JSON
        return None
    if set(map(type, docs)) != {dict}:
        return None
    return docs


ORJSON_MAX_DEPTH = 1024
"""orjson refuses a value nested deeper (``invalid_json``)."""


def msgspec_nests_like_orjson() -> bool:
    """Whether msgspec refuses, as orjson does, every value nested beyond 1,024 levels.

    msgspec nests through Python's recursion limit (about 995 levels under the
    default 1,000: stricter, which sends a batch the per-record way); a limit
    raised above 1,024 (a library may raise it) would let it decode, in a field
    it skips, what orjson refuses: a fast path then declines every batch.
    """
    return sys.getrecursionlimit() <= ORJSON_MAX_DEPTH


@functools.lru_cache(maxsize=16)
def _features_decoder(
    names: tuple[str, ...],
) -> tuple[msgspec.json.Decoder[Any], Callable[..., Any]]:
    """A msgspec decoder of just the features (as floats), and a getter of their tuple."""
    fields = [f"f{i}" for i in range(len(names))]
    struct = msgspec.defstruct(
        "Features", [(f, float) for f in fields], rename=dict(zip(fields, names, strict=True))
    )
    return msgspec.json.Decoder(struct), operator.attrgetter(*fields)


def typed_matrix(
    values: Sequence[bytes | None], names: tuple[str, ...], max_bytes: int
) -> np.ndarray | None:
    """The raw feature matrix of a whole batch decoded by msgspec, or None.

    A msgspec Struct of the features alone skips the other fields instead of
    building a dict per record (about 0.5 against 0.9 us per record for
    orjson, the dict and itemgetter). It answers only when every value is
    non-empty, within ``max_bytes``, UTF-8, a JSON object, and has every
    feature as a finite JSON number: then the per-record path would score
    every row with the same floats. Otherwise None, and that path finds and
    classifies the bad rows, so a row's fate never depends on this one.
    The batch's UTF-8 is checked at once (ASCII, or a strict decode of the
    joined bytes), because msgspec does not check the fields it skips and
    orjson rejects the whole value; nesting too (see
    :func:`msgspec_nests_like_orjson`); a JSON bool, which msgspec refuses as
    a float, goes the per-record way. A number beyond a double's range in
    a skipped field, which msgspec skips too, is accepted by both paths
    (:func:`loads_json`); one in a feature fails here (msgspec: out of range)
    and is ``non_finite`` there. tests/unit/test_features_typed.py compares
    both paths, and each row alone against the row in a batch.
    """
    if not values:
        return None
    if not msgspec_nests_like_orjson():
        return None
    try:
        if min(map(len, values)) == 0 or max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
            return None
        joined = b"\n".join(values)  # type: ignore[arg-type]  # a None: TypeError
        if not joined.isascii():
            joined.decode()  # strict UTF-8 of every value; a newline splits no character
        decoder, getter = _features_decoder(names)
        rows = list(map(getter, map(decoder.decode, values)))  # type: ignore[arg-type]
    except (TypeError, UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        return None
    matrix = np.array(rows, dtype=np.float64)
    if len(names) == 1:
        matrix = matrix.reshape(len(rows), 1)
    if not bool(np.isfinite(matrix).all()):
        return None
    return matrix


class BatchReader(Protocol):
    """Decodes the values of another input format (core/formats.py's RecordReader)."""

    def decode_batch(  # noqa: D102
        self, values: Sequence[bytes | None], max_record_bytes: int
    ) -> tuple[list[dict[str, Any]], list[int], list[RowProblem]]: ...


Projector = Any
"""``(docs) -> docs`` with each feature at its top level (core/formats.py's ``project``)."""


def prepare_batch(
    values: Sequence[bytes | None],
    spec: FeatureSpec,
    *,
    missing: str = "dlq",
    standardize: bool = True,
    max_record_bytes: int = 1 << 20,
    reader: BatchReader | None = None,
    projector: Projector | None = None,
) -> Prepared:
    """Decode, validate and standardize one micro-batch.

    Each row is processed on its own: the result for a row never depends on
    the other rows of the batch. A batch of clean records is decoded at once
    by :func:`typed_matrix`; any other goes through :func:`prepare_rows`.
    """
    # The msgspec fast path reads flat JSON only; other formats and field paths
    # take the per-record path, which decodes with the format's reader.
    plain_json = reader is None and projector is None
    matrix = typed_matrix(values, spec.names, max_record_bytes) if plain_json else None
    if matrix is None:
        return prepare_rows(
            values,
            spec,
            missing=missing,
            standardize=standardize,
            max_record_bytes=max_record_bytes,
            reader=reader,
            projector=projector,
        )
    return every_row_valid(matrix, spec, standardize=standardize)


def every_row_valid(matrix: np.ndarray, spec: FeatureSpec, *, standardize: bool) -> Prepared:
    """A batch whose every row reads as ``matrix`` (raw values): standardized if asked."""
    features = (matrix - spec.mean) / spec.std if standardize and len(matrix) else matrix
    return Prepared(
        features=features,
        valid_rows=np.arange(len(matrix), dtype=np.int64),
        rejected=(),
        dropped=(),
    )


def prepare_rows(
    values: Sequence[bytes | None],
    spec: FeatureSpec,
    *,
    missing: str = "dlq",
    standardize: bool = True,
    max_record_bytes: int = 1 << 20,
    reader: BatchReader | None = None,
    projector: Projector | None = None,
) -> Prepared:
    """:func:`prepare_batch` by decoding each record with orjson: the reference path.

    Each row is processed on its own: the result for a row never depends on
    the other rows of the batch.

    Args:
        values: Raw record values, in batch order.
        spec: Feature names and fitted statistics.
        missing: Policy for a missing or invalid feature: ``dlq`` rejects the
            row, ``drop`` skips it (reported in ``dropped``), ``impute`` uses the
            fitted mean for that feature. Undecodable records are always rejected.
        standardize: Apply ``(x - mean) / std`` with the fitted statistics.
        max_record_bytes: Larger values are rejected as oversized.
        reader: Decodes another input format than JSON objects (None: JSON).
        projector: Brings nested features (field paths) to the top level of
            each document; None when every feature is a top-level field.
    """
    if reader is None:
        docs, doc_rows, rejected = _decode_batch(values, max_record_bytes)
    else:
        docs, doc_rows, rejected = reader.decode_batch(values, max_record_bytes)
    if projector is not None:
        docs = projector(docs)
    if spec.underscored_names:
        docs = list(map(_with_underscored_keys, docs))
    dropped: list[RowProblem] = []
    matrix = _fast_matrix(docs, spec.names) if docs else None
    if matrix is not None and bool(np.isfinite(matrix).all()):
        features = matrix
        valid = doc_rows
    else:
        features, valid = _rows_one_by_one(docs, doc_rows, spec, missing, rejected, dropped)
    if standardize and len(valid) > 0:
        features = (features - spec.mean) / spec.std
    rejected.sort(key=lambda problem: problem.index)
    return Prepared(
        features=features,
        valid_rows=np.array(valid, dtype=np.int64),
        rejected=tuple(rejected),
        dropped=tuple(dropped),
    )


def _with_underscored_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` plus each key with spaces under its underscored name; the record's own keys win."""
    spaced = {k.replace(" ", "_"): v for k, v in doc.items() if isinstance(k, str) and " " in k}
    return {**spaced, **doc} if spaced else doc


def _decode_batch(
    values: Sequence[bytes | None], max_record_bytes: int
) -> tuple[list[dict[str, Any]], list[int], list[RowProblem]]:
    """(decoded objects, their row indexes, the rows that do not decode); at once if it can."""
    rejected: list[RowProblem] = []
    decoded = _decode_all(values, max_record_bytes) if values else None
    if decoded is not None:
        return decoded, list(range(len(decoded))), rejected
    docs: list[dict[str, Any]] = []
    doc_rows: list[int] = []
    for index, value in enumerate(values):
        try:
            docs.append(decode_value(value, max_record_bytes))
            doc_rows.append(index)
        except _InvalidValueError as exc:
            rejected.append(RowProblem(index, exc.reason, exc.detail))
    return docs, doc_rows, rejected


def _rows_one_by_one(
    docs: list[dict[str, Any]],
    doc_rows: list[int],
    spec: FeatureSpec,
    missing: str,
    rejected: list[RowProblem],
    dropped: list[RowProblem],
) -> tuple[np.ndarray, list[int]]:
    """(features, their row indexes) row by row; bad rows go to ``rejected`` or ``dropped``."""
    names = spec.names
    means = spec.mean.tolist()
    rows: list[list[float]] = []
    valid: list[int] = []
    for index, doc in zip(doc_rows, docs, strict=True):
        outcome = _row_or_problem(doc, names, means, missing)
        if isinstance(outcome, list):
            rows.append(outcome)
            valid.append(index)
        elif missing == "drop":
            dropped.append(RowProblem(index, outcome.reason, outcome.detail))
        else:
            rejected.append(RowProblem(index, outcome.reason, outcome.detail))
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(names)), valid


_ABSENT = object()

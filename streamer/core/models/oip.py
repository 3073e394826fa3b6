"""The Open Inference Protocol (V2) without the I/O: requests, answers, retries, the breaker.

Everything here is a pure function or a small state machine with the time
passed in, so that ``model.kind = "remote"`` is tested without a socket; the
HTTP side is :mod:`streamer.clients.oip`.

**Requests.** One micro-batch is one request: an ``(n, d)`` tensor named like
the server's one input (``input-0`` when it names none), or, when the server's
metadata lists one input per feature, one ``(n,)`` tensor per feature with the
``pd`` content type (MLServer decodes that into a DataFrame). FP64 numbers are
written by orjson as the shortest text that reads back to the same double, so
the JSON transport itself is exact; FP32 rounds each value once.

**Answers.** The outputs the request named (``model.outputs``), else all the
server returned, side by side, become the model's output columns, mapped like a
local model's: one column is ``score``; ``(n, 2)`` probabilities with
``model.probabilities = "positive"`` are ``score`` (the second column); else
one ``<output>_<j>`` per column (``proba_<j>`` for ``predict_proba``).

**Failures.** A status says who is at fault (:func:`classify_status`): 400,
413 and 422 name the input, so the batch is bisected (:func:`score_bisecting`)
and the rows that fail alone are dead-lettered; anything else (a refused
connection, a timeout, 429, 5xx, 401/403/404 while a server restarts) is the
server's, retried with backoff and jitter (:class:`RetryPolicy`) and counted
by the :class:`Breaker`, which pauses every request while the server is down.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streamer.core.models.base import ModelUnavailableError, ScoreOutcome

DATATYPES = {"FP64": np.float64, "FP32": np.float32}
"""The ``model.remote_datatype`` choices and the numpy type each sends."""
DEFAULT_INPUT = "input-0"
"""The input tensor's name when the server's metadata names none (MLServer's default)."""
BAD_INPUT_STATUSES = frozenset({400, 413, 422})
"""Answers that blame the request's content: bisect the batch, dead-letter lone failures."""

OK = "ok"
BAD_INPUT = "bad_input"
TIMEOUT = "timeout"
CONNECTION = "connection"
OUTCOMES = (OK, BAD_INPUT, TIMEOUT, CONNECTION, "http_429", "http_4xx", "http_5xx")
"""The ``outcome`` label of ``streamer_remote_requests_total``."""


class BadInputError(Exception):
    """The server refused the request's content (or answered nonsense): a row-level error."""


class ServerRefusedError(Exception):
    """The server answered and said no to a metadata request (401, 403, 404): configuration."""


class ServerUnavailableError(ModelUnavailableError):
    """The server did not answer in time to be useful (only raised to impatient callers)."""


def classify_status(status: int) -> str:
    """The outcome of an HTTP status: ok, bad_input, or a transient ``http_*`` one."""
    if 200 <= status < 300:
        return OK
    if status in BAD_INPUT_STATUSES:
        return BAD_INPUT
    if status == 429:
        return "http_429"
    if 400 <= status < 500:
        # 401/403/404 are the server's configuration or a model still loading
        # after a restart: waiting is right, dead-lettering every record is not.
        return "http_4xx"
    return "http_5xx"


def is_transient(outcome: str) -> bool:
    """True for an outcome that a later attempt may turn into an answer."""
    return outcome not in (OK, BAD_INPUT)


def build_request(
    features: np.ndarray,
    input_names: Sequence[str],
    datatype: str,
    outputs: Sequence[str],
) -> bytes:
    """The JSON body of one inference request for an ``(n, d)`` matrix (see the module doc)."""
    values = np.ascontiguousarray(features, dtype=DATATYPES[datatype])
    rows = values.shape[0]
    inputs: list[dict[str, Any]]
    if len(input_names) == 1:
        inputs = [
            {"name": input_names[0], "shape": list(values.shape), "datatype": datatype,
             "data": values.ravel()}
        ]  # fmt: skip
        body: dict[str, Any] = {"inputs": inputs}
    else:
        inputs = [
            {"name": name, "shape": [rows], "datatype": datatype,
             "data": np.ascontiguousarray(values[:, j])}
            for j, name in enumerate(input_names)
        ]  # fmt: skip
        body = {"inputs": inputs, "parameters": {"content_type": "pd"}}
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_response(body: bytes, rows: int, wanted: Sequence[str]) -> np.ndarray:
    """The answer's output tensors as one float64 ``(n, m)`` matrix, in ``wanted`` order.

    Raises:
        BadInputError: The body is not an answer of ``rows`` rows of numbers.
    """
    try:
        document = orjson.loads(body)
        tensors = {str(t["name"]): t for t in document["outputs"]}
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        msg = f"the server's answer is not an inference response: {exc}"
        raise BadInputError(msg) from None
    names = list(wanted) or list(tensors)
    columns = []
    for name in names:
        tensor = tensors.get(name)
        if tensor is None:
            msg = f"the server's answer has no output {name!r} (it has {', '.join(tensors)})"
            raise BadInputError(msg)
        try:
            data = np.asarray(tensor["data"], dtype=np.float64).reshape(rows, -1)
        except (ValueError, TypeError, KeyError) as exc:
            msg = f"output {name!r} of the server's answer is not {rows} rows of numbers: {exc}"
            raise BadInputError(msg) from None
        columns.append(data)
    matrix = columns[0] if len(columns) == 1 else np.hstack(columns)
    if not np.all(np.isfinite(matrix)):
        msg = "the server answered a NaN or infinite prediction"
        raise BadInputError(msg)
    return matrix


def error_detail(body: bytes, status: int, limit: int = 300) -> str:
    """The server's error message (``{"error": ...}`` in OIP, ``detail`` in FastAPI) on one line."""
    try:
        document = orjson.loads(body)
        text = str(document.get("error") or document.get("detail") or document)
    except (orjson.JSONDecodeError, AttributeError):
        text = body.decode("utf-8", "replace")
    text = " ".join(f"HTTP {status}: {text}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class OutputMapping:
    """Which answer columns become which output fields."""

    width: int
    columns: tuple[int, ...]
    names: tuple[str, ...]

    def apply(self, matrix: np.ndarray) -> np.ndarray:
        """``(n,)`` for one output field, else ``(n, len(names))``.

        Raises:
            BadInputError: The answer is not as wide as the one the model was loaded with.
        """
        if matrix.shape[1] != self.width:
            msg = f"the server answered {matrix.shape[1]} columns, {self.width} when loaded"
            raise BadInputError(msg)
        if len(self.columns) == 1:
            return np.ascontiguousarray(matrix[:, self.columns[0]])
        return np.ascontiguousarray(matrix[:, list(self.columns)])


def map_outputs(width: int, tensor_names: Sequence[str], probabilities: str) -> OutputMapping:
    """The output fields of an answer ``width`` columns wide, named as a local model's.

    Raises:
        ValueError: ``probabilities = "positive"`` for more than two classes.
    """
    if width == 1:
        return OutputMapping(1, (0,), ("score",))
    single = tensor_names[0] if len(tensor_names) == 1 else ""
    is_proba = single in ("predict_proba", "probabilities", "proba")
    if is_proba and probabilities == "positive":
        if width != 2:
            msg = (
                f"output {single!r} has {width} classes, so there is no one positive class; "
                "set model.probabilities = 'all'"
            )
            raise ValueError(msg)
        return OutputMapping(2, (1,), ("score",))
    base = "proba" if is_proba else (single or "output")
    return OutputMapping(width, tuple(range(width)), tuple(f"{base}_{j}" for j in range(width)))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k waits uniform(0, min(max, initial*2^k))."""

    initial_s: float = 0.1
    max_s: float = 5.0

    def delay(self, attempt: int, uniform: Callable[[], float]) -> float:
        """Seconds to wait before retry ``attempt`` (0-based); ``uniform`` gives [0, 1)."""
        ceiling = min(self.max_s, self.initial_s * math.pow(2.0, min(attempt, 60)))
        return ceiling * uniform()


CLOSED = "closed"
OPEN = "open"


class Breaker:
    """Counts consecutive server failures; open (every request waits) from ``threshold`` on.

    While open, one probe every ``probe_interval_s`` asks whether the model is
    ready; the first yes closes it. The clock is passed in, so that tests need
    no sleeping.
    """

    def __init__(self, threshold: int, probe_interval_s: float) -> None:
        self.threshold = threshold
        self.probe_interval_s = probe_interval_s
        self.state = CLOSED
        self.failures = 0
        self.opened = 0
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        """Requests must wait for a probe to close it."""
        return self.state == OPEN

    def success(self) -> bool:
        """A request was answered (even refused for its input); True when this closed it."""
        self.failures = 0
        if self.state == OPEN:
            self.state = CLOSED
            return True
        return False

    def failure(self, now: float) -> bool:
        """A request failed for a transient reason; True when this opened it."""
        self.failures += 1
        if self.state == CLOSED and self.failures >= self.threshold:
            self.state = OPEN
            self.opened += 1
            self._next_probe = now + self.probe_interval_s
            return True
        return False

    def trip(self, now: float) -> None:
        """Open at once: the server did not answer at start, so there is nothing to count."""
        self.failures = max(self.failures, self.threshold)
        if self.state == CLOSED:
            self.state = OPEN
            self.opened += 1
        self._next_probe = now + self.probe_interval_s

    def probe_in(self, now: float) -> float:
        """Seconds until the next probe is due (0 when due now)."""
        return max(0.0, self._next_probe - now)

    def probed(self, now: float, *, ready: bool) -> bool:
        """A probe's answer; True when it closed the breaker."""
        if ready:
            return self.success()
        self._next_probe = now + self.probe_interval_s
        return False


InferCall = Callable[[np.ndarray], Awaitable[np.ndarray]]


async def score_bisecting(call: InferCall, features: np.ndarray, width: int) -> ScoreOutcome:
    """Score all rows in one call; when the server blames the input, bisect to the lone bad rows.

    Like :func:`streamer.core.scoring.score_isolating_failures`, but the halves
    are asked for concurrently, and only :class:`BadInputError` is a row's fault:
    any other exception (the server being down) propagates, so that nothing is
    dead-lettered for an outage.
    """
    empty_shape: tuple[int, ...] = (0,) if width == 1 else (0, width)
    rows = features.shape[0]
    if rows == 0:
        return ScoreOutcome(np.empty(empty_shape), [])
    try:
        return ScoreOutcome(await call(features), [])
    except BadInputError as exc:
        if rows == 1:
            return ScoreOutcome(np.empty(empty_shape), [(0, f"{type(exc).__name__}: {exc}")])
    middle = rows // 2
    left, right = await asyncio.gather(
        score_bisecting(call, features[:middle], width),
        score_bisecting(call, features[middle:], width),
    )
    failed = left.failed + [(pos + middle, err) for pos, err in right.failed]
    return ScoreOutcome(np.concatenate([left.predictions, right.predictions]), failed)

"""``kind = "remote"``: a model behind an Open Inference Protocol (V2) server.

KServe, MLServer and Triton speak it. ``model.remote_url`` is the server
(``http(s)://host:port``) and ``model.path`` the model's name on it, optionally
``name/versions/<v>``. Loading reads the model's metadata
(``GET /v2/models/<path>``) and scores one typical row, so that a malformed URL,
a model name or token the server refuses (401, 403, 404) or a wrong feature
count stops the start with one line (exit 2). A server that does not answer at
all (refused connection, timeout, 429, 5xx) is an outage, not a configuration
error: :class:`~streamer.errors.ModelServerDownError` carries a
:class:`WaitingModel`, and the pipeline waits for the server, not ready.

Features: when the metadata lists one input per feature, those are the feature
names, in order; with one ``(n, d)`` input (MLServer's scikit-learn runtime),
``preprocess.features`` (or the stats file) names them and the metadata's
``d``, when known, is checked against it. The outputs are the tensors that
``model.outputs`` names (``predict_proba`` for MLServer's scikit-learn
runtime), else all the server returns; see :mod:`streamer.core.models.oip`
for how they map to output fields.

Scoring is asynchronous: :meth:`RemoteModel.submit` starts one request per
batch on the shared event loop of :mod:`streamer.clients.oip` and returns a
future, so that a model actor keeps up to ``model.max_concurrent_requests``
batches in flight; the producer's reorderer puts their answers back in order.
:meth:`RemoteModel.predict` is the blocking form, for challengers and checks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streamer.core.features import FeatureSpec
from streamer.core.models.base import ModelDefaults, ModelOptions
from streamer.core.models.common import import_for_kind, one_line, resolve_spec
from streamer.core.models.oip import (
    DEFAULT_INPUT,
    OutputMapping,
    ServerUnavailableError,
    map_outputs,
    score_bisecting,
)
from streamer.core.scoring import ScoreOutcome
from streamer.errors import ModelLoadError, ModelServerDownError

if TYPE_CHECKING:
    from streamer.clients.oip import OipClient

MODEL_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(/versions/[A-Za-z0-9_.\-]+)?$")
"""``name`` or ``name/versions/<v>``, as they appear in an OIP URL."""
_POLL_TIMEOUT_S = 2.0
LOCAL_STEP_TIMEOUT_S = 30.0
"""For the client's own steps on its loop (its session, its breaker): no network, but
the first one imports aiohttp, which takes seconds on a loaded machine."""


@dataclass(frozen=True, eq=False)
class RemoteModel(ModelDefaults):
    """A model on an Open Inference Protocol server behind the Model protocol.

    It answers the protocol's ``submit`` (the model actor scores through it, in
    the background) and ``reachable`` (readiness) itself.
    """

    name: str
    version: str
    spec: FeatureSpec
    output_names: tuple[str, ...]
    digest: str
    client: OipClient
    input_names: tuple[str, ...]
    requested: tuple[str, ...]
    mapping: OutputMapping
    kind: str = "remote"
    watch_paths: tuple[Path, ...] = field(default=())
    source_poll: Callable[[], object] | None = None
    """The server's metadata digest: a model redeployed under the same name hot-reloads."""

    def poll_source(self) -> object:
        """What would load now (the metadata's digest); a change hot-reloads the model."""
        return self.source_poll() if self.source_poll is not None else None

    @property
    def reachable(self) -> bool:
        """False while the server is down (the circuit breaker is open)."""
        return self.client.reachable

    async def _call(self, features: np.ndarray, *, patient: bool = True) -> np.ndarray:
        matrix = await self.client.infer(
            features, self.input_names, self.requested, patient=patient
        )
        return self.mapping.apply(matrix)

    def submit(self, features: np.ndarray) -> concurrent.futures.Future[ScoreOutcome]:
        """Score a batch in the background: one request, bisected if the server blames rows.

        The future never fails for an outage (the request waits for the server);
        cancelling it abandons the request.
        """
        return self.client.submit(score_bisecting(self._call, features, len(self.output_names)))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Score a batch and wait; a few attempts, then ServerUnavailableError.

        Raises:
            BadInputError: The server blamed the input.
            ServerUnavailableError: The server did not answer.
        """
        return self.client.run(self._call(features, patient=False), self.client.impatient_budget_s)


@dataclass(frozen=True, eq=False)
class WaitingModel(ModelDefaults):
    """The stand-in for a remote model whose server did not answer at start.

    Not loaded and not reachable (readiness false); it scores nothing: the
    pipeline loads the real model before it reads a record.
    """

    name: str
    client: OipClient
    version: str = ""
    spec: FeatureSpec = field(
        default_factory=lambda: FeatureSpec((), np.zeros(0), np.ones(0), fitted=False)
    )
    output_names: tuple[str, ...] = ()
    digest: str = ""
    kind: str = "remote"
    watch_paths: tuple[Path, ...] = ()
    loaded: bool = False
    reachable: bool = False

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Never called: the pipeline reads nothing before the real model is loaded."""
        msg = f"model {self.name!r}: its server has not answered yet"
        raise ServerUnavailableError(msg)


def load(options: ModelOptions) -> RemoteModel:
    """Connect to the model's server, read its metadata and score one row.

    Raises:
        ModelLoadError: Missing or malformed settings, an unreachable server, an
            unknown model, features that do not fit, or a failed test prediction.
    """
    import_for_kind("remote", "aiohttp", "remote")
    from streamer.clients.oip import client_for  # noqa: PLC0415 - needs aiohttp

    remote = options.remote
    if not remote.url.startswith(("http://", "https://")):
        msg = (
            "model.kind='remote' needs model.remote_url = 'http(s)://host:port', "
            f"got {remote.url!r}"
        )
        raise ModelLoadError(msg)
    if not MODEL_PATH.match(options.path):
        msg = (
            "model.kind='remote' needs model.path = the model's name on the server "
            f"(or 'name/versions/<version>'), got {options.path!r}"
        )
        raise ModelLoadError(msg)
    client = client_for(remote, options.path)
    where = f"model {options.path!r} at model.remote_url={remote.url}"
    try:
        metadata = _metadata(client, where)
        client.run(client.mark_up(), LOCAL_STEP_TIMEOUT_S)
        input_names, model_names, width = _inputs(metadata)
        spec = resolve_spec(
            options,
            where,
            model_names=model_names,
            model_names_what="the server's model metadata inputs",
            n_inputs=width,
        )
        requested = tuple(options.outputs)
        mapping = _probe(client, spec, input_names, requested, options.probabilities, where)
    except ServerUnavailableError as exc:  # no answer: an outage, not the configuration
        with contextlib.suppress(ServerUnavailableError):  # the loop too busy: still an outage
            client.run(client.mark_down(), LOCAL_STEP_TIMEOUT_S)
        waiting = WaitingModel(name=options.name or options.path, client=client)
        msg = f"{where}: the server does not answer: {one_line(exc)}"
        raise ModelServerDownError(msg, waiting) from None
    digest = _digest(options, metadata)
    versions = metadata.get("versions") or []
    _, _, pinned = options.path.partition("/versions/")
    version = options.version or pinned or (str(versions[0]) if versions else digest[:12])
    return RemoteModel(
        name=options.name or str(metadata.get("name") or options.path),
        version=version,
        spec=spec,
        output_names=mapping.names,
        digest=digest,
        client=client,
        input_names=input_names,
        requested=requested,
        mapping=mapping,
        source_poll=_poller(client, options, digest),
    )


def _metadata(client: OipClient, where: str) -> dict[str, Any]:
    try:
        metadata = client.run(client.get_json(client.model_url), client.options.timeout_s + 1)
    except ServerUnavailableError:
        raise
    except Exception as exc:  # refused (401, 403, 404) or not JSON: the configuration
        msg = f"{where}: cannot read the model's metadata: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    if not isinstance(metadata, dict):
        msg = f"{where}: the metadata is not a JSON object"
        raise ModelLoadError(msg)
    return metadata


def _inputs(metadata: dict[str, Any]) -> tuple[tuple[str, ...], list[str] | None, int | None]:
    """(the request's tensor names, the feature names if the server gives them, the width)."""
    inputs = [i for i in metadata.get("inputs") or [] if isinstance(i, dict) and "name" in i]
    if len(inputs) >= 2:
        names = [str(i["name"]) for i in inputs]
        return tuple(names), names, len(names)
    if len(inputs) == 1:
        shape = inputs[0].get("shape") or []
        width = int(shape[-1]) if len(shape) >= 2 and int(shape[-1]) > 0 else None
        return (str(inputs[0]["name"]),), None, width
    return (DEFAULT_INPUT,), None, None


def _probe(
    client: OipClient,
    spec: FeatureSpec,
    input_names: tuple[str, ...],
    requested: tuple[str, ...],
    probabilities: str,
    where: str,
) -> OutputMapping:
    row = np.zeros((1, len(spec.names)))
    if spec.fitted and not spec.standardize:
        row[0] = spec.mean
    try:
        answer = client.run(
            client.infer(row, input_names, requested, patient=False), client.impatient_budget_s
        )
    except ServerUnavailableError:
        raise
    except Exception as exc:  # BadInputError: the row does not fit the model
        msg = f"{where}: a test prediction on one row failed: {one_line(exc)}"
        raise ModelLoadError(msg) from None
    try:
        return map_outputs(answer.shape[1], requested, probabilities)
    except ValueError as exc:
        msg = f"{where}: {exc}"
        raise ModelLoadError(msg) from None


def _digest(options: ModelOptions, metadata: dict[str, Any]) -> str:
    text = orjson.dumps(
        [options.remote.url, options.path, list(options.outputs), metadata],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(text).hexdigest()


def _poller(client: OipClient, options: ModelOptions, digest: str) -> Callable[[], object]:
    """The metadata's digest now; the last one known while the server does not answer."""
    last = [digest]
    lock = threading.Lock()

    def poll() -> object:
        try:
            metadata = client.run(client.get_json(client.model_url), _POLL_TIMEOUT_S)
        except Exception:  # the reloader's poll must not raise; an outage is no redeploy
            return last[0]
        with lock:
            last[0] = _digest(options, metadata) if isinstance(metadata, dict) else last[0]
            return last[0]

    return poll

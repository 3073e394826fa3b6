"""The bottom of the models package: what every kind and every caller share.

:class:`Model` is all that the actors, the reloader and the topology read from a
model; :class:`ModelOptions` is all that a loader reads of the settings. The
vocabularies of ``model.method`` and ``model.probabilities`` live here, next to
the options that take them, so that ``streamer.settings`` validates with the
same tuples the kinds use.

This module imports no numpy (its types are only annotations), so that the
settings, which import the loader table, stay quick to import.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import concurrent.futures

    import numpy as np

    from streamer.core.features import FeatureSpec

ESTIMATOR_METHODS = ("predict", "predict_proba", "decision_function", "score_samples")
"""The scikit-learn methods that ``model.method`` may name."""
METHODS = ("auto", *ESTIMATOR_METHODS)
"""The choices of ``model.method``; ``auto`` is predict_proba when the estimator has it."""
PROBABILITY_MODES = ("positive", "all")
"""The choices of ``model.probabilities``: the positive class's only, or one per class."""


class ModelUnavailableError(Exception):
    """The model could not score at all (a remote model's server is down): no row is at fault.

    :func:`~streamer.core.scoring.score_isolating_failures` re-raises it instead of
    bisecting the batch and blaming rows.
    """


@dataclass(frozen=True, slots=True)
class ScoreOutcome:
    """Predictions for the rows that scored, and (position, error) for those that did not.

    ``predictions`` has one entry per scored row, in row order, skipping failed positions.
    (Here, beside :class:`Model`, because a remote model's ``submit`` answers with it.)
    """

    predictions: np.ndarray
    failed: list[tuple[int, str]]


class Model(Protocol):
    """What a model actor needs from a model (read-only, so frozen dataclasses qualify)."""

    @property
    def name(self) -> str:
        """Written to every output record and to ``streamer_model_info``."""
        ...

    @property
    def version(self) -> str:
        """Written to every output record and to ``streamer_model_info``."""
        ...

    @property
    def spec(self) -> FeatureSpec:
        """The features the model reads, in column order, and their fitted statistics."""
        ...

    @property
    def output_names(self) -> tuple[str, ...]:
        """One name per output column; a single output is ``score``."""
        ...

    @property
    def digest(self) -> str:
        """SHA-256 of what the model was loaded from; empty when unknown.

        A reload that loads the same digest, name, version and outputs is ``unchanged``.
        """
        ...

    @property
    def watch_paths(self) -> tuple[Path, ...]:
        """The files whose change hot-reloads the model; none for the packaged demo model."""
        ...

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Score an (n, d) standardized matrix; return shape (n,) or (n, len(output_names))."""
        ...

    # Optional capabilities: a model class that lacks one inherits ModelDefaults' answer.

    @property
    def explain_top_k(self) -> int:
        """How many reason codes each prediction carries (``model.explain_top_k``); 0: none."""
        ...

    def reasons(self, features: np.ndarray) -> list[bytes]:
        """Each row's ``explain_top_k`` reason codes as one JSON array; read only when above 0."""
        ...

    def poll_source(self) -> object:
        """What the model's source would load now (a registry alias's version), or None.

        Files are watched by their signature; a change of this answer hot-reloads
        the model like a changed file. It must not raise.
        """
        ...

    @property
    def loaded(self) -> bool:
        """False for the stand-in of a remote model whose server was down at start (readiness)."""
        ...

    @property
    def reachable(self) -> bool:
        """False while a remote model's server does not answer (readiness; nothing is lost)."""
        ...

    def submit(self, features: np.ndarray) -> concurrent.futures.Future[ScoreOutcome] | None:
        """Score in the background and return the future answer (a remote model).

        None: the model scores in the caller's thread, through ``predict``.
        """
        ...


class ModelDefaults:
    """The optional capabilities of :class:`Model`, for a class that has none of its own.

    A model class inherits from it (the protocol stays structural), so that
    callers read ``model.explain_top_k``, ``loaded`` and ``reachable`` and call
    ``model.poll_source()`` and ``model.submit()`` without probing whether they exist.
    """

    explain_top_k: int = 0

    def reasons(self, features: np.ndarray) -> list[bytes]:
        """No reason codes: an empty array per row."""
        return [b"[]"] * features.shape[0]

    def poll_source(self) -> object:
        """Nothing to poll: only the watched files reload the model."""
        return None

    @property
    def loaded(self) -> bool:
        """A model that loaded is loaded."""
        return True

    @property
    def reachable(self) -> bool:
        """A model in this process is always reachable."""
        return True

    def submit(self, features: np.ndarray) -> concurrent.futures.Future[ScoreOutcome] | None:
        """Nothing in the background: the caller scores with ``predict``."""
        return None


def preparation_key(spec: FeatureSpec) -> str:
    """A fingerprint of how a batch is prepared for this spec.

    A batch prepared under one key must not be scored by a model with another:
    the model actor prepares it again from the source bytes.
    """
    digest = hashlib.sha256()
    digest.update("\x1f".join(spec.names).encode())
    # tobytes() writes C order whatever the layout: the bytes of a contiguous float64 copy.
    digest.update(spec.mean.astype("float64", copy=False).tobytes())
    digest.update(spec.std.astype("float64", copy=False).tobytes())
    digest.update(b"1" if spec.standardize else b"0")
    digest.update(b"_" if spec.underscored_names else b"")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class RemoteOptions:
    """How ``model.kind = "remote"`` reaches its model server (the ``model.remote_*`` keys)."""

    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    bearer_token: str = field(default="", repr=False)
    tls_verify: bool = True
    ca_file: str = ""
    timeout_s: float = 10.0
    max_concurrent_requests: int = 4
    datatype: str = "FP64"
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    breaker_failures: int = 3
    probe_interval_s: float = 1.0


@dataclass(frozen=True)
class ModelOptions:
    """Everything a loader needs; ``Settings.model_options()`` gives the configured ones.

    The settings map their ``[model]`` and ``[preprocess]`` keys onto these
    fields, so that this package never depends on how the configuration is laid out.
    """

    kind: str = "linear"
    path: str = ""
    name: str = ""
    version: str = ""
    method: str = "auto"
    probabilities: str = "positive"
    outputs: tuple[str, ...] = ()
    chunk_rows: int = 1000
    features: tuple[str, ...] = ()
    stats_path: str = ""
    standardize: bool = True
    missing: str = "dlq"
    explain_top_k: int = 0
    tracking_uri: str = ""
    remote: RemoteOptions = field(default_factory=RemoteOptions)

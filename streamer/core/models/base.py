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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from streamer.core.features import FeatureSpec

ESTIMATOR_METHODS = ("predict", "predict_proba", "decision_function", "score_samples")
"""The scikit-learn methods that ``model.method`` may name."""
METHODS = ("auto", *ESTIMATOR_METHODS)
"""The choices of ``model.method``; ``auto`` is predict_proba when the estimator has it."""
PROBABILITY_MODES = ("positive", "all")
"""The choices of ``model.probabilities``: the positive class's only, or one per class."""


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


class ModelDefaults:
    """The optional capabilities of :class:`Model`, for a class that has none of its own.

    A model class inherits from it (the protocol stays structural), so that
    callers read ``model.explain_top_k`` and call ``model.poll_source()`` without
    probing whether they exist.
    """

    explain_top_k: int = 0

    def reasons(self, features: np.ndarray) -> list[bytes]:
        """No reason codes: an empty array per row."""
        return [b"[]"] * features.shape[0]

    def poll_source(self) -> object:
        """Nothing to poll: only the watched files reload the model."""
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

"""Scoring a batch and isolating the rows a model fails on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from streamer.core.features import FeatureSpec
from streamer.core.models import ModelDefaults
from streamer.core.scoring import score_isolating_failures

SPEC = FeatureSpec(("x", "y"), np.zeros(2), np.ones(2))


@dataclass
class PickyModel(ModelDefaults):
    """Scores 2*x + y, but fails on whole calls that contain a row whose x is in ``bad``.

    ``nan`` rows make it return NaN instead of raising.
    """

    bad: set[float] = field(default_factory=set)
    nan: set[float] = field(default_factory=set)
    name: str = "picky"
    version: str = "1"
    spec: FeatureSpec = SPEC
    output_names: tuple[str, ...] = ("score",)
    calls: list[int] = field(default_factory=list)

    def predict(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features.shape[0])
        hit = sorted(self.bad.intersection(features[:, 0].tolist()))
        if hit:
            msg = f"cannot score x={hit[0]}"
            raise ArithmeticError(msg)
        out = 2 * features[:, 0] + features[:, 1]
        for i, x in enumerate(features[:, 0].tolist()):
            if x in self.nan:
                out[i] = math.nan
        return out


def matrix(n: int) -> np.ndarray:
    return np.column_stack([np.arange(n, dtype=np.float64), np.full(n, 0.5)])


def test_a_good_batch_is_scored_in_one_call() -> None:
    model = PickyModel()
    outcome = score_isolating_failures(model, matrix(50))
    assert outcome.failed == []
    assert np.array_equal(outcome.predictions, 2 * np.arange(50.0) + 0.5)
    assert model.calls == [50]


def test_an_empty_batch_is_not_sent_to_the_model() -> None:
    model = PickyModel()
    outcome = score_isolating_failures(model, np.empty((0, 2)))
    assert outcome.predictions.shape == (0,)
    assert outcome.failed == []
    assert model.calls == []


def test_the_failing_rows_are_found_and_the_others_scored_exactly() -> None:
    model = PickyModel(bad={3.0, 17.0, 18.0})
    outcome = score_isolating_failures(model, matrix(40))
    assert outcome.failed == [
        (3, "ArithmeticError: cannot score x=3.0"),
        (17, "ArithmeticError: cannot score x=17.0"),
        (18, "ArithmeticError: cannot score x=18.0"),
    ]
    good = [i for i in range(40) if i not in (3, 17, 18)]
    assert np.array_equal(outcome.predictions, 2 * np.array(good, dtype=np.float64) + 0.5)


def test_one_bad_row_costs_a_logarithmic_number_of_extra_calls() -> None:
    model = PickyModel(bad={37.0})
    outcome = score_isolating_failures(model, matrix(64))
    assert [pos for pos, _ in outcome.failed] == [37]
    assert len(model.calls) <= 1 + 2 * 6


def test_a_batch_where_every_row_fails_scores_nothing() -> None:
    model = PickyModel(bad={0.0, 1.0, 2.0})
    outcome = score_isolating_failures(model, matrix(3))
    assert [pos for pos, _ in outcome.failed] == [0, 1, 2]
    assert outcome.predictions.shape == (0,)


def test_a_nan_prediction_fails_only_its_row() -> None:
    model = PickyModel(nan={2.0, 5.0})
    outcome = score_isolating_failures(model, matrix(8))
    assert outcome.failed == [
        (2, "ValueError: model returned a NaN or infinite prediction"),
        (5, "ValueError: model returned a NaN or infinite prediction"),
    ]
    assert np.array_equal(outcome.predictions, np.array([0.5, 2.5, 6.5, 8.5, 12.5, 14.5]))


@dataclass
class ShapedModel(ModelDefaults):
    """Returns whatever ``shape_of(n)`` says, filled with 0.25."""

    width: int = 1
    extra: int = 0
    column: bool = False
    name: str = "shaped"
    version: str = "1"
    spec: FeatureSpec = SPEC

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f"out{i}" for i in range(self.width))

    def predict(self, features: np.ndarray) -> np.ndarray:
        n = features.shape[0] + self.extra
        if self.column or self.width > 1:
            return np.full((n, self.width), 0.25)
        return np.full(n, 0.25)


def test_a_model_returning_the_wrong_shape_fails_every_row() -> None:
    outcome = score_isolating_failures(ShapedModel(extra=1), matrix(4))
    assert outcome.failed == [
        (i, "ValueError: model returned shape (2,), expected (1,)") for i in range(4)
    ]
    assert outcome.predictions.shape == (0,)


def test_a_single_output_model_may_return_a_column() -> None:
    outcome = score_isolating_failures(ShapedModel(column=True), matrix(3))
    assert outcome.failed == []
    assert outcome.predictions.tolist() == [0.25, 0.25, 0.25]


def test_a_multi_output_model_gives_one_column_per_output() -> None:
    outcome = score_isolating_failures(ShapedModel(width=3), matrix(4))
    assert outcome.failed == []
    assert outcome.predictions.shape == (4, 3)


def test_a_multi_output_model_keeps_its_width_when_rows_fail() -> None:
    outcome = score_isolating_failures(ShapedModel(width=2, extra=1), matrix(2))
    assert [pos for pos, _ in outcome.failed] == [0, 1]
    assert outcome.predictions.shape == (0, 2)


class Fatal(BaseException):
    """Not an Exception: it must not be swallowed as a row failure."""


@dataclass
class FatalModel(ModelDefaults):
    name: str = "fatal"
    version: str = "1"
    spec: FeatureSpec = SPEC
    output_names: tuple[str, ...] = ("score",)

    def predict(self, features: np.ndarray) -> np.ndarray:
        raise Fatal


def test_a_base_exception_from_the_model_is_not_isolated() -> None:
    with pytest.raises(Fatal):
        score_isolating_failures(FatalModel(), matrix(4))

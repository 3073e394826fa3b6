"""The window's metrics equal scikit-learn's on the same joined records, in any arrival order."""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from streamer.core.labels.join import REGRESSION, Label, LabelSpec, Output, coordinates_identity
from streamer.core.labels.ledger import PredictionLedger
from streamer.core.labels.metrics import (
    calibration,
    classification_metrics,
    regression_metrics,
    window_report,
)
from streamer.core.labels.window import LabelWindow
from streamer.core.state.store import MemoryStore

SECOND = 1_000_000
HORIZON = 100 * SECOND


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _same(ours: float | None, theirs: float) -> bool:
    """Bit for bit, or both undefined (None here, NaN there)."""
    return (ours is None and math.isnan(theirs)) or ours == theirs


def sklearn_classification(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    """The data scientist's own calls; NaN where a metric is undefined."""
    decided = s >= threshold
    both = 0 < y.sum() < y.size
    probabilities = bool(s.min() >= 0 and s.max() <= 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "precision": precision_score(y, decided, zero_division=np.nan),
            "recall": recall_score(y, decided, zero_division=np.nan),
            "f1": f1_score(y, decided, zero_division=np.nan),
            "roc_auc": roc_auc_score(y, s) if both else math.nan,
            "pr_auc": average_precision_score(y, s) if y.sum() else math.nan,
            "log_loss": log_loss(y, s, labels=[0, 1]) if probabilities else math.nan,
            "brier": brier_score_loss(y, s) if probabilities else math.nan,
        }


def assert_like_sklearn(
    ours: dict[str, Any], y: np.ndarray, s: np.ndarray, threshold: float
) -> None:
    theirs = sklearn_classification(y, s, threshold)
    for name, value in theirs.items():
        assert _same(ours[name], value), (name, ours[name], value)
    assert ours["records"] == y.size


scores = st.one_of(
    st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),  # ties and edges
    st.floats(0.0, 1.0, allow_nan=False),
)


@st.composite
def windows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 60))
    y = np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
    s = np.array(draw(st.lists(scores, min_size=n, max_size=n)))
    return y, s


class TestEachMetric:
    @settings(max_examples=200, deadline=None)
    @given(windows(), st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]))
    def test_classification_metrics_equal_sklearn_bit_for_bit(
        self, window: tuple[np.ndarray, np.ndarray], threshold: float
    ) -> None:
        y, s = window
        assert_like_sklearn(classification_metrics(y, s, threshold, 10), y, s, threshold)

    @settings(max_examples=100, deadline=None)
    @given(windows(), st.integers(1, 12))
    def test_calibration_buckets_are_calibration_curves_uniform_bins(
        self, window: tuple[np.ndarray, np.ndarray], buckets: int
    ) -> None:
        y, s = window
        observed, predicted = calibration_curve(y, s, n_bins=buckets, strategy="uniform")
        ours = calibration(y, s, buckets)
        assert ours is not None
        filled = [b for b in ours if b["records"]]
        assert [b["observed_rate"] for b in filled] == observed.tolist()
        assert [b["mean_score"] for b in filled] == predicted.tolist()
        assert sum(b["records"] for b in ours) == y.size

    def test_scores_outside_zero_one_have_no_probability_metrics(self) -> None:
        y, s = np.array([0.0, 1.0, 1.0]), np.array([-2.0, 0.5, 3.0])
        ours = classification_metrics(y, s, 0.5, 10)
        assert (ours["log_loss"], ours["brier"], ours["calibration"]) == (None, None, None)
        assert ours["roc_auc"] == roc_auc_score(y, s) == 1.0
        assert ours["precision"] == 1.0

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), min_size=1))
    def test_mae_and_rmse_equal_sklearn_bit_for_bit(self, pairs: list[tuple[float, float]]) -> None:
        y = np.array([p[0] for p in pairs])
        s = np.array([p[1] for p in pairs])
        ours = regression_metrics(y, s)
        assert ours["mae"] == mean_absolute_error(y, s)
        assert ours["rmse"] == root_mean_squared_error(y, s)


@dataclass(frozen=True)
class Scored:
    """One record of a generated stream: its scores, label and label delay."""

    offset: int
    champion: float
    challenger: float | None
    label: float
    delay_s: int


@st.composite
def streams(draw: st.DrawFn, task: str = "classification") -> list[Scored]:
    n = draw(st.integers(1, 50))
    values = st.sampled_from([0.0, 1.0]) if task != REGRESSION else st.floats(-100, 100)
    score = scores if task != REGRESSION else st.floats(-100, 100)
    return [
        Scored(
            offset,
            draw(score),
            draw(st.none() | score),
            draw(values),
            draw(st.integers(0, 150)),  # beyond 100 s: past the horizon
        )
        for offset in range(n)
    ]


def _outputs(record: Scored) -> tuple[Output, Output | None]:
    identity = coordinates_identity("events", 0, record.offset)
    time_us = record.offset * SECOND
    champion = Output(identity, False, "demo", "1", record.champion, time_us)
    if record.challenger is None:
        return champion, None
    return champion, Output(identity, True, "candidate", "2", record.challenger, time_us + 500)


def _label(record: Scored) -> Label:
    identity = coordinates_identity("events", 0, record.offset)
    return Label(identity, record.label, record.offset * SECOND + record.delay_s * SECOND)


def run_live_like(
    stream: list[Scored], seed: int, max_records: int, *, task: str = "classification"
) -> dict[str, Any]:
    """Champion outputs first; then labels and challenger outputs in a random order and chunks."""
    ledger = PredictionLedger(MemoryStore(), HORIZON)
    window = LabelWindow(max_records)
    ledger.record([_outputs(r)[0] for r in stream])
    late: list[Output | Label] = [_label(r) for r in stream]
    late += [c for r in stream if (c := _outputs(r)[1]) is not None]
    shuffler = random.Random(seed)
    shuffler.shuffle(late)
    while late:
        size = shuffler.randint(1, 7)
        chunk, late = late[:size], late[size:]
        labels = [e for e in chunk if isinstance(e, Label)]
        outputs = [e for e in chunk if isinstance(e, Output)]
        window.add(ledger.join(labels)[0])
        window.add(ledger.record(outputs)[0])
    return window_report(window.records(), task=task, threshold=0.5, buckets=10)


def _expected_window(stream: list[Scored], max_records: int) -> list[Scored]:
    joined = [r for r in stream if r.delay_s * SECOND <= HORIZON]
    return joined[-max_records:]  # offsets are prediction times: the latest predictions


class TestWindowOverAStream:
    @settings(max_examples=80, deadline=None)
    @given(streams(), st.integers(0, 10**6), st.integers(1, 60))
    def test_each_model_equals_sklearn_on_the_joined_records_in_any_arrival_order(
        self, stream: list[Scored], seed: int, max_records: int
    ) -> None:
        report = run_live_like(stream, seed, max_records)
        expected = _expected_window(stream, max_records)
        assert report["records"] == len(expected)
        models = {(m["role"], m["name"]): m for m in report["models"]}
        y = np.array([r.label for r in expected])
        if expected:
            s = np.array([r.champion for r in expected])
            assert_like_sklearn(models["champion", "demo"], y, s, 0.5)
        both = [r for r in expected if r.challenger is not None]
        if both:
            yb = np.array([r.label for r in both])
            sc = np.array([r.challenger for r in both])
            assert_like_sklearn(models["challenger", "candidate"], yb, sc, 0.5)
            (comparison,) = report["comparisons"]
            assert comparison["records"] == len(both)
            champion_on_both = sklearn_classification(yb, np.array([r.champion for r in both]), 0.5)
            challenger_on_both = sklearn_classification(yb, sc, 0.5)
            for name, delta in comparison["deltas"].items():
                assert _same(delta, challenger_on_both[name] - champion_on_both[name]), name
        else:
            assert ("challenger", "candidate") not in models
            assert report["comparisons"] == []

    @settings(max_examples=60, deadline=None)
    @given(streams(), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 60))
    def test_two_arrival_orders_give_the_same_report(
        self, stream: list[Scored], first: int, second: int, max_records: int
    ) -> None:
        one = run_live_like(stream, first, max_records)
        other = run_live_like(stream, second, max_records)
        assert repr(one) == repr(other)  # NaN-free, so repr is bit for bit

    @settings(max_examples=80, deadline=None)
    @given(streams(REGRESSION), st.integers(0, 10**6), st.integers(1, 60))
    def test_regression_errors_equal_sklearn_in_any_arrival_order(
        self, stream: list[Scored], seed: int, max_records: int
    ) -> None:
        report = run_live_like(stream, seed, max_records, task=REGRESSION)
        expected = _expected_window(stream, max_records)
        if not expected:
            assert report["models"] == []
            return
        (champion,) = [m for m in report["models"] if m["role"] == "champion"]
        y = np.array([r.label for r in expected])
        s = np.array([r.champion for r in expected])
        assert champion["mae"] == mean_absolute_error(y, s)
        assert champion["rmse"] == root_mean_squared_error(y, s)


def test_label_latency_is_label_time_minus_prediction_time() -> None:
    stream = [Scored(i, 0.5, None, 1.0, delay) for i, delay in enumerate([10, 20, 30, 40])]
    report = run_live_like(stream, 0, 10)
    assert report["label_latency"] == {
        "records": 4,
        "mean_s": 25.0,
        "p50_s": 25.0,
        "p95_s": 38.5,
        "max_s": 40.0,
    }


def test_a_spec_default_horizon_is_thirty_days() -> None:
    assert LabelSpec().horizon_us == 30 * 86400 * SECOND


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_a_worked_window(threshold: float) -> None:
    y = np.array([1.0, 0.0, 0.0, 1.0])
    s = np.array([0.9, 0.6, 0.2, 0.6])
    ours = classification_metrics(y, s, threshold, 2)
    if threshold == 0.5:
        assert (ours["precision"], ours["recall"], ours["f1"]) == (2 / 3, 1.0, 0.8)
    else:
        assert (ours["precision"], ours["recall"], ours["f1"]) == (1.0, 0.5, 2 / 3)
    assert ours["roc_auc"] == 0.875  # 3.5 of the 4 (positive, negative) pairs in order
    assert ours["pr_auc"] == 0.5 * 1.0 + 0.5 * (2 / 3)
    assert ours["calibration"] == [
        {"low": 0.0, "high": 0.5, "records": 1, "mean_score": 0.2, "observed_rate": 0.0},
        {
            "low": 0.5,
            "high": 1.0,
            "records": 3,
            "mean_score": (0.9 + 0.6 + 0.6) / 3,
            "observed_rate": 2 / 3,
        },
    ]

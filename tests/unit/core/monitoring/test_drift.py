"""Profiles, PSI, bins and the sliding drift window, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.core.monitoring.drift import CodeWindow, DriftMonitor, psi
from streamer.core.monitoring.profile import (
    Binned,
    Profile,
    assign_bins,
    build_profile,
    check_profile,
    parse_profile,
    quantile_edges,
)


def test_psi_matches_the_hand_computed_value() -> None:
    # (0.5-0.25)ln(2) + (0.25-0.25)ln(1) + (0.25-0.5)ln(0.5) = 0.5 ln 2
    assert psi(np.array([2, 1, 1]), np.array([0.25, 0.25, 0.5])) == pytest.approx(0.5 * math.log(2))
    assert psi(np.array([1, 1]), np.array([0.5, 0.5])) == 0.0


def test_psi_floors_an_empty_bin_and_is_nan_without_data() -> None:
    # a = (1e-4, 1), e = (0.5, 0.5): (1e-4-0.5)ln(1e-4/0.5) + 0.5 ln 2
    expected = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.5 * math.log(2)
    assert psi(np.array([0, 10]), np.array([0.5, 0.5])) == pytest.approx(expected)
    assert math.isnan(psi(np.array([0, 0]), np.array([0.5, 0.5])))


def test_bins_are_left_closed_with_the_ends_open_and_nan_in_the_missing_slot() -> None:
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    values = np.array([-5.0, 0.0, 0.999, 1.0, 2.5, 3.0, 9.0, np.nan])
    assert assign_bins(values, edges).tolist() == [0, 0, 0, 1, 2, 2, 2, 3]


def test_quantile_edges_merge_repeats() -> None:
    assert quantile_edges(np.array([1.0, 1.0, 1.0, 1.0, 2.0]), 4).tolist() == [1.0, 2.0]
    assert quantile_edges(np.array([5.0, 5.0]), 10).tolist() == [5.0, 5.0]
    assert quantile_edges(np.arange(5.0), 4).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def _profile() -> Profile:
    edges = np.array([0.0, 1.0, 2.0])
    return Profile(
        features=("a", "b"),
        distributions=(Binned(edges, np.array([0.5, 0.5])), Binned(edges, np.array([0.5, 0.5]))),
        score=Binned(np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.5])),
        score_output="score",
        model_name="m",
        model_version="1",
        rows=4,
    )


def test_profile_round_trips_through_its_json() -> None:
    import orjson

    profile = _profile()
    again = parse_profile(orjson.loads(profile.to_json(source="x.csv")))
    assert again.features == profile.features
    assert again.model_name == "m"
    assert again.model_version == "1"
    assert again.feature("b").edges.tolist() == [0.0, 1.0, 2.0]
    assert again.score.fractions.tolist() == [0.5, 0.5]


def test_profile_of_other_features_is_refused() -> None:
    with pytest.raises(ValueError, match="profiles features"):
        check_profile(_profile(), ["a", "c"], "p.json")
    check_profile(_profile(), ["a", "b"], "p.json")


def test_build_profile_counts_every_row_in_sample_edges() -> None:
    data = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 3.0], [3.0, 5.0]])
    profile = build_profile(
        ["x", "y"],
        lambda: [data[:3], data[3:]],
        lambda rows: rows[:, 0] / 10,
        model_name="m",
        model_version="v",
        bins=2,
    )
    x = profile.feature("x")
    assert x.edges.tolist() == [0.0, 1.5, 3.0]
    assert x.fractions.tolist() == [0.5, 0.5]
    y = profile.feature("y")
    assert y.missing_rate == 0.25
    assert y.edges.tolist() == [1.0, 3.0, 5.0]
    assert y.fractions.tolist() == pytest.approx([1 / 3, 2 / 3])
    # scores of the complete rows: 0.0, 0.2, 0.3
    assert profile.score.edges.tolist() == pytest.approx([0.0, 0.2, 0.3])
    assert profile.rows == 4


def test_window_slides_over_the_last_n_records() -> None:
    window = CodeWindow(width=1, slots=3, capacity=3)
    window.add(np.array([[0], [1]]), now=0.0)
    window.add(np.array([[2], [2]]), now=0.0)
    assert window.counts.tolist() == [[0, 1, 2]]
    window.add(np.array([[0], [0], [0], [1]]), now=0.0)
    assert window.counts.tolist() == [[2, 1, 0]]
    assert window.size == 3


def test_window_forgets_records_older_than_window_s() -> None:
    window = CodeWindow(width=1, slots=2, capacity=100, window_s=10.0)
    window.add(np.array([[0], [0]]), now=0.0)
    window.add(np.array([[1]]), now=5.0)
    window.expire(now=12.0)
    assert window.counts.tolist() == [[0, 1]]


def _observe_in_batches(monitor: DriftMonitor, rows: np.ndarray, size: int) -> None:
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        monitor.observe(part, np.arange(len(part)), [], part[:, 0] / 2, now=0.0)


def test_gauges_do_not_depend_on_the_batch_split() -> None:
    rng = np.random.default_rng(1)
    rows = rng.uniform(-0.5, 2.5, size=(2500, 2))
    one = DriftMonitor(_profile(), window_records=1000)
    thousand = DriftMonitor(_profile(), window_records=1000)
    _observe_in_batches(one, rows, 1)
    _observe_in_batches(thousand, rows, 1000)
    a, b = one.snapshot(), thousand.snapshot()
    assert a.feature_psi.tolist() == b.feature_psi.tolist()
    assert a.out_of_range_ratio.tolist() == b.out_of_range_ratio.tolist()
    assert a.score_counts.tolist() == b.score_counts.tolist()
    assert a.score_psi == b.score_psi
    assert a.records == 1000


def test_monitor_counts_out_of_range_and_missing_features() -> None:
    monitor = DriftMonitor(_profile(), window_records=100)
    features = np.array([[0.5, 0.5], [1.5, 5.0], [-1.0, 1.5]])
    rejected = [(1, "feature 'b' is missing")]
    monitor.observe(features, np.array([0, 2, 3]), rejected, np.array([0.1, 0.2, 0.7]), now=0.0)
    snap = monitor.snapshot()
    assert snap.records == 4
    assert snap.missing_ratio.tolist() == [0.0, 0.25]
    # a: values 0.5, 1.5, -1.0 -> one outside [0, 2]; b: 0.5, 5.0, 1.5 -> one outside
    assert snap.out_of_range_ratio.tolist() == pytest.approx([1 / 3, 1 / 3])
    # a's bins: 0.5 -> 0, 1.5 -> 1, -1.0 -> 0: (2/3, 1/3) against (0.5, 0.5)
    expected = (2 / 3 - 0.5) * math.log((2 / 3) / 0.5) + (1 / 3 - 0.5) * math.log((1 / 3) / 0.5)
    assert snap.feature_psi[0] == pytest.approx(expected)
    assert snap.score_counts.tolist() == [2, 1]
    assert snap.worst()[0] in ("a", "b")


def test_standardized_features_are_binned_in_raw_units() -> None:
    monitor = DriftMonitor(_profile(), window_records=10)
    mean, std = np.array([1.0, 1.0]), np.array([2.0, 2.0])
    monitor.set_scaling(mean, std)
    raw = np.array([[0.5, 1.5]])
    monitor.observe((raw - mean) / std, np.array([0]), [], np.array([0.2]), now=0.0)
    snap = monitor.snapshot()
    assert snap.out_of_range_ratio.tolist() == [0.0, 0.0]
    # one value in bin 0 of a, bin 1 of b
    assert snap.feature_psi[0] == pytest.approx(snap.feature_psi[1])


def test_the_score_window_holds_the_records_of_the_feature_window() -> None:
    monitor = DriftMonitor(_profile(), window_records=4)
    monitor.observe(np.full((4, 2), 0.5), np.arange(4), [], np.full(4, 0.1), now=0.0)
    # The window's 4 records: 2 dead-lettered, 1 the model failed on (NaN), 1 scored.
    rejected = [(0, "feature 'a' is missing"), (2, "feature 'b' is missing")]
    scores = np.array([np.nan, 0.9])
    monitor.observe(np.full((2, 2), 0.5), np.array([1, 3]), rejected, scores, now=0.0)
    snap = monitor.snapshot()
    assert (snap.records, snap.scores) == (4, 1)
    assert snap.score_counts.tolist() == [0, 1]  # only the 0.9: no score from the first batch

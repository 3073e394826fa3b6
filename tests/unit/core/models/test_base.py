"""What every model shares: the preparation key of a feature spec."""

from __future__ import annotations

import numpy as np

from streamer.core.features import FeatureSpec
from streamer.core.models import preparation_key


def test_specs_that_differ_only_in_standardization_have_different_keys() -> None:
    spec = FeatureSpec(("a",), np.array([0.0]), np.array([1.0]))
    assert preparation_key(spec) == preparation_key(
        FeatureSpec(("a",), np.array([0.0]), np.array([1.0]))
    )
    raw = FeatureSpec(("a",), np.array([0.0]), np.array([1.0]), standardize=False)
    assert preparation_key(raw) != preparation_key(spec)


def test_the_key_reads_the_statistics_as_contiguous_float64() -> None:
    plain = FeatureSpec(("a", "b"), np.array([0.5, 1.5]), np.array([1.0, 2.0]))
    columns = np.array([[0.5, 9.0], [1.5, 9.0]])
    strided = FeatureSpec(("a", "b"), columns[:, 0], np.array([1.0, 2.0]))
    single = FeatureSpec(
        ("a", "b"), np.array([0.5, 1.5], dtype=np.float32), np.array([1.0, 2.0], dtype=np.float32)
    )
    assert preparation_key(strided) == preparation_key(plain)
    assert preparation_key(single) == preparation_key(plain)
    assert preparation_key(plain) != preparation_key(
        FeatureSpec(("a", "b"), np.array([0.5, 1.25]), np.array([1.0, 2.0]))
    )

"""Fixtures of the topology tests."""

from __future__ import annotations

import pytest

from streamer.core.models.linear import LinearModel, load_linear


@pytest.fixture(scope="module")
def demo() -> LinearModel:
    return load_linear(None)

"""Shared fixtures of the unit suite: every actor is stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest
from hypothesis import HealthCheck, settings

# The property tests share two cores with brokers and servers in a full run: a slow
# example is the machine's, not a finding, so the too_slow health check is off and no
# example has a deadline (a 200 ms deadline made a property "flaky" under load). A test's
# own @settings (max_examples, deadline) still applies.
settings.register_profile(
    "shared-cores", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
settings.load_profile("shared-cores")


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3 reads its protocol schemas with deprecated importlib.resources calls.
    config.addinivalue_line(
        "filterwarnings", r"ignore:(open|read)_text is deprecated:DeprecationWarning"
    )


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)

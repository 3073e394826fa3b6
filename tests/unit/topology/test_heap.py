"""The start-up heap is frozen out of the collector's sight; a reload gives it back."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streamer.core.models.linear import load_linear
from streamer.topology.heap import freeze_startup_heap, thaw
from streamer.topology.hot_reload import HotReload


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's heap goes back to the collector whatever happened


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_the_start_up_heap_is_collected_then_frozen_then_thawed() -> None:
    garbage = _Node()
    alive = weakref.ref(garbage)
    del garbage
    freeze_startup_heap()
    assert alive() is None  # collected first: no garbage is frozen for good
    assert gc.get_freeze_count() > 0
    thaw()
    assert gc.get_freeze_count() == 0


def test_a_reloaded_model_gives_the_frozen_heap_back_to_the_collector() -> None:
    old, new = load_linear(None), load_linear(None)
    swapped = []
    reload = HotReload(old, lambda: new, swapped.append, interval_s=3600.0)
    freeze_startup_heap()
    reload._install(new)
    assert (reload.model, swapped) == (new, [new])
    assert gc.get_freeze_count() == 0  # the old model's cycles can be collected

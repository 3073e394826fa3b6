"""The start-up heap is frozen out of the collector's sight; a reload gives it back."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streamer.core.models.linear import load_linear
from streamer.topology.heap import (
    YOUNG_COLLECTION_THRESHOLD,
    collect_young_less_often,
    freeze_startup_heap,
    thaw,
)
from streamer.topology.hot_reload import HotReload


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
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


def test_the_young_generation_is_collected_after_a_batch_worth_of_objects() -> None:
    gc.set_threshold(700, 10, 10)
    collect_young_less_often()
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, 10, 10)
    gc.collect()
    young = [gc.get_stats()[0]["collections"]]
    kept = [[] for _ in range(YOUNG_COLLECTION_THRESHOLD // 2)]  # half the threshold: none
    young.append(gc.get_stats()[0]["collections"])
    kept += [[] for _ in range(YOUNG_COLLECTION_THRESHOLD)]  # past it: one
    young.append(gc.get_stats()[0]["collections"])
    assert (young[1] - young[0], young[2] - young[1]) == (0, 1)
    del kept

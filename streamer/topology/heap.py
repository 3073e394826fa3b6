"""The start-up heap, kept out of the garbage collector's sight while the daemon runs.

What start-up loads (the model, numpy, the clients, the actors) lives as long as the
daemon, yet every full collection scans it again, holding the GIL, and so every
actor, meanwhile; frozen, it is not scanned (the cost of a full collection with and
without: docs/performance.md). A model reload or an actor restart replaces some of
those objects: they may be garbage held in reference cycles, which only the collector
frees, so both give the frozen objects back to it.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then freeze every object that is left."""
    gc.collect()
    gc.freeze()


YOUNG_COLLECTION_THRESHOLD = 10_000
"""Container objects allocated (net) between two young collections: above a batch's
worth, so that most of a batch's objects are freed before a collection sees them."""


def collect_young_less_often() -> None:
    """Raise the young generation's threshold (the older ones' stay CPython's)."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def thaw() -> None:
    """Give the frozen objects back to the collector (after a reload or a restart)."""
    gc.unfreeze()

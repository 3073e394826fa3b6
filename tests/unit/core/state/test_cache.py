"""One engine over many batches (its keys cached between them) against a fresh engine per batch."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state.store import Change, MemoryStore
from streamer.core.state.windows import PartitionState, StateInput
from tests.unit.core.state.streams import (
    SHAPES,
    Rec,
    bits,
    by_partition,
    layout,
    reference,
    streams,
)
from tests.unit.core.state.test_windows import BATCH_SIZES, cut, run_batched

PROPERTIES = settings(deadline=None, database=None, max_examples=150)


def run_one_engine(
    inputs: list[StateInput],
    sizes: list[int],
    store: Any,
    partition: int,
    cached_entries: int,
    *,
    shape: str = "two groups",
) -> tuple[list[tuple[tuple[bytes, ...] | None, str]], list[Change]]:
    """Apply in batches with one engine (a live partition), sweeping after every other batch."""
    state = PartitionState(
        layout(4_000_000, shape=shape),
        store,
        "events",
        partition,
        cached_entries=cached_entries,
    )
    outcomes = []
    changelog: list[Change] = []
    for index, batch in enumerate(cut(inputs, sizes)):
        applied = state.apply(batch)
        changelog.extend(applied.changes)
        if index % 2:
            changelog.extend(state.sweep())
        outcomes.extend(
            (bits(o.values), o.reason) if o is not None else (None, "") for o in applied.outcomes
        )
    return outcomes, changelog


class FailingStore(MemoryStore):
    """A store whose next write fails once (a full disk), after the engine changed its keys."""

    fail = False

    def write(self, changes: Any) -> None:
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        super().write(changes)


class TestCache:
    @PROPERTIES
    @given(
        stream=streams(),
        sizes=BATCH_SIZES,
        cached=st.sampled_from([0, 3, 10, 250_000]),
        shape=st.sampled_from(sorted(SHAPES)),
    )
    def test_one_engine_gives_the_values_and_changes_of_a_fresh_engine_per_batch(
        self, stream: list[Rec], sizes: list[int], cached: int, shape: str
    ) -> None:
        # cached 0 and 3 evict keys between batches; the sweep deletes keys the cache holds
        for partition, inputs in by_partition(stream).items():
            live, live_log = run_one_engine(
                inputs, sizes, MemoryStore(), partition, cached, shape=shape
            )
            fresh, fresh_log = run_batched(
                inputs, sizes, MemoryStore(), partition, 4_000_000, shape=shape
            )
            assert live == fresh == reference(layout(4_000_000, shape=shape), inputs)
            written = [c for c in live_log if c[1] is not None]
            assert written == [c for c in fresh_log if c[1] is not None]

    @PROPERTIES
    @given(stream=streams(), data=st.data(), shape=st.sampled_from(sorted(SHAPES)))
    def test_a_failed_write_leaves_no_cached_key_the_store_does_not_hold(
        self, stream: list[Rec], data: st.DataObject, shape: str
    ) -> None:
        lay = layout(shape=shape)
        for partition, inputs in by_partition(stream).items():
            cut_at = data.draw(st.integers(0, len(inputs)))
            store = FailingStore()
            state = PartitionState(lay, store, "events", partition)
            state.apply(inputs[:cut_at])
            store.fail = True
            with pytest.raises(OSError, match="disk full"):
                state.apply(inputs[cut_at:])
            # the same engine applies the batch again: as a fresh engine over the store does
            fresh_store = MemoryStore()
            fresh_store.data = dict(store.data)
            again = state.apply(inputs[cut_at:])
            fresh = PartitionState(lay, fresh_store, "events", partition)
            expected = fresh.apply(inputs[cut_at:])
            assert [bits(o.values) if o else None for o in again.outcomes] == [
                bits(o.values) if o else None for o in expected.outcomes
            ]
            assert store.data == fresh_store.data

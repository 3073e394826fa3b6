"""The restore plan: each row of its table, and crashes followed by the plan's action."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state.codec import CODEC_VERSION, META_KEY, Meta
from streamer.core.state.restore import Action, local_meta, newest_meta, plan_restore, restore
from streamer.core.state.store import Change, MemoryStore
from tests.unit.core.state.streams import Rec, by_partition, layout, streams
from tests.unit.core.state.test_windows import compact, cut, run_batched

FINGERPRINT = layout().fingerprint


def meta(last_offset: int, *, partition: int = 0, fingerprint: str = FINGERPRINT) -> Meta:
    return Meta(CODEC_VERSION, fingerprint, "events", partition, last_offset, (None, None), 0)


def plan(local: Meta | str | None, changelog: Meta | None) -> tuple[Action, bool]:
    decided = plan_restore(local, changelog, fingerprint=FINGERPRINT, topic="events", partition=0)
    assert decided.reason
    return decided.action, decided.discard_local


@pytest.mark.parametrize(
    ("local", "changelog", "expected"),
    [
        (meta(10), meta(10), (Action.USE_LOCAL, False)),
        (meta(7), meta(10), (Action.REBUILD, True)),  # behind: the partition was elsewhere
        (meta(12), meta(10), (Action.REBUILD, True)),  # ahead: its last changelog records lost
        (None, meta(10), (Action.REBUILD, False)),
        ("corrupt meta: ...", meta(10), (Action.REBUILD, True)),
        (meta(10, partition=3), meta(10), (Action.REBUILD, True)),  # another partition's store
        (meta(10, fingerprint="other"), meta(10), (Action.REBUILD, True)),
        (meta(10), None, (Action.START_EMPTY, True)),  # ahead of an empty changelog
        (None, None, (Action.START_EMPTY, False)),
        (meta(10, fingerprint="other"), None, (Action.START_EMPTY, True)),
        (meta(10), meta(10, fingerprint="other"), (Action.START_EMPTY, True)),
        (None, meta(10, fingerprint="other"), (Action.START_EMPTY, False)),
    ],
)
def test_each_row_of_the_plan(
    local: Meta | str | None, changelog: Meta | None, expected: tuple[Action, bool]
) -> None:
    assert plan(local, changelog) == expected


def test_the_local_meta_of_an_empty_a_good_and_a_corrupt_store() -> None:
    store = MemoryStore()
    assert local_meta(store) is None
    store.write([(META_KEY, b"\xc1")])
    assert isinstance(local_meta(store), str)


@settings(deadline=None, database=None, max_examples=60)
@given(stream=streams(), sizes=st.lists(st.integers(1, 7), min_size=1, max_size=3), data=st.data())
def test_a_crash_then_the_plan_then_the_replay_equals_one_uninterrupted_run(
    stream: list[Rec], sizes: list[int], data: st.DataObject
) -> None:
    """A local store and its changelog after a crash: lost changelog batches, or a stale store.

    The crash loses the changelog records of the last ``lost`` batches (their
    outputs were not acknowledged, so nothing past them was committed) and
    maybe the local store (``stale``: another instance kept the partition and
    only the first batches are local). Then the plan acts, and the input comes
    again from the first batch whose changelog records were lost.
    """
    for partition, inputs in by_partition(stream).items():
        whole, _ = run_batched(inputs, sizes, MemoryStore(), partition)
        batches = cut(inputs, sizes)
        local = MemoryStore()
        changelog: list[Change] = []
        per_batch: list[list[Change]] = []
        for batch in batches:
            _, changes = run_batched(batch, [len(batch)], local, partition)
            per_batch.append(changes)
        lost = data.draw(st.integers(0, len(batches)))
        durable = len(batches) - lost
        for changes in per_batch[:durable]:
            changelog.extend(changes)
        if data.draw(st.booleans()) and durable:  # a stale local store: only the first batches
            local = MemoryStore()
            for changes in per_batch[: data.draw(st.integers(0, durable))]:
                local.write(changes)
        decided = plan_restore(
            local_meta(local),
            newest_meta(changelog),
            fingerprint=FINGERPRINT,
            topic="events",
            partition=partition,
        )
        if decided.action is not Action.USE_LOCAL:
            local = MemoryStore()  # discarded (or never there)
            if decided.action is Action.REBUILD:
                *_, _count = restore(local, compact(changelog))
        resume = sum(len(batch) for batch in batches[:durable])
        tail, written = run_batched(inputs[resume:], sizes, local, partition)
        assert tail == whole[resume:]
        # and the changelog holds the state as it is: a later restore loses nothing
        rebuilt = MemoryStore()
        *_, _count = restore(rebuilt, compact(changelog + written))
        assert rebuilt.data == local.data

"""The deferred engine (the daemon's): changes encoded and written once per take, same values.

A deferred :class:`PartitionState` writes nothing per batch: its changed keys
stay live until :meth:`~PartitionState.take_changes` encodes them, with the
served runs and the meta, in one store write. Against the engine that writes
each batch (the offline command's), over the same records cut and replayed
the same way, it must serve the same values bit for bit, and after each take
hold in its store exactly what that engine holds.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state import windows
from streamer.core.state.codec import KEY_PREFIX, META_KEY, decode_meta, key_state_key
from streamer.core.state.restore import restore
from streamer.core.state.store import Change, MemoryStore
from streamer.core.state.windows import PartitionState, StateInput
from tests.unit.core.state.streams import SHAPES, Rec, bits, by_partition, layout, streams

PROPERTIES = settings(deadline=None, database=None, max_examples=150)

Step = tuple[str, int]
"""("batch", size), ("replay", how many records back), ("take", 0), ("forget", records back)."""

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.integers(1, 7)),
        st.tuples(st.just("replay"), st.integers(1, 10)),
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("forget"), st.integers(0, 10)),
    ),
    min_size=1,
    max_size=30,
)


def outcomes(applied: windows.Applied) -> list[tuple[tuple[bytes, ...] | None, str]]:
    return [(bits(o.values), o.reason) if o is not None else (None, "") for o in applied.outcomes]


class TestDeferredEqualsWriteThrough:
    @PROPERTIES
    @given(stream=streams(), steps=STEPS, shape=st.sampled_from(sorted(SHAPES)))
    def test_same_values_and_after_each_take_the_same_store(
        self, stream: list[Rec], steps: list[Step], shape: str
    ) -> None:
        for partition, inputs in by_partition(stream).items():
            lay = layout(shape=shape)
            direct_store, deferred_store = MemoryStore(), MemoryStore()
            direct = PartitionState(lay, direct_store, "events", partition)
            deferred = PartitionState(lay, deferred_store, "events", partition, deferred=True)
            changelog: list[Change] = []
            at = 0
            for step, n in [*steps, ("batch", len(inputs)), ("take", 0)]:
                if step in {"batch", "replay"}:
                    start = at if step == "batch" else max(0, at - n)
                    batch = inputs[start : at + n] if step == "batch" else inputs[start:at]
                    at = max(at, start + len(batch))
                    first = direct.apply(batch)
                    second = deferred.apply(batch)
                    assert second.changes == ()
                    assert outcomes(first) == outcomes(second)
                elif step == "forget":
                    below = max(0, at - n)
                    direct.forget_served(below)
                    assert deferred.forget_served(below) == ()
                elif META_KEY in direct_store.data:  # the daemon takes after a change only
                    taken = deferred.take_changes()
                    changelog.extend(taken)
                    assert taken[-1] == (META_KEY, direct_store.data[META_KEY])
                    assert deferred_store.data == direct_store.data
            # The takes are a changelog: restored into an empty store, it is the store.
            rebuilt = MemoryStore()
            list(restore(rebuilt, changelog))
            assert rebuilt.data == deferred_store.data


def test_a_key_out_of_the_cache_is_read_live_until_the_take() -> None:
    lay = layout(shape="one group")
    store = MemoryStore()
    state = PartitionState(lay, store, "events", 0, deferred=True, cached_entries=0)
    doc = {"card": "a", "amount": 1.0, "shop": "s1", "ts": 1_700_000_000_000}
    state.apply([StateInput(0, None, 0, doc)])
    assert store.data == {}  # nothing written per batch
    (outcome,) = state.apply([StateInput(1, None, 0, {**doc, "ts": doc["ts"] + 1000})]).outcomes
    assert outcome is not None
    assert outcome.values is not None
    assert outcome.values[0] == 2.0  # n_10s: the first record, live, though not cached
    state.take_changes()
    assert decode_meta(store.data[META_KEY]).last_offset == 1
    assert key_state_key(0, b"a") in store.data


def test_a_batch_that_fails_reading_a_key_changes_nothing_live() -> None:
    """A key that does not decode fails the batch before it changes any key."""
    lay = layout(shape="one group")
    base = 1_700_000_000_000
    a, b = ({"card": c, "amount": 1.0, "shop": "s1", "ts": base} for c in "ab")
    states = []
    for _ in range(2):
        store = MemoryStore()
        state = PartitionState(lay, store, "events", 0, deferred=True)
        state.apply([StateInput(0, None, 0, a), StateInput(1, None, 0, b)])
        state.take_changes()
        state.apply([StateInput(2, None, 0, {**a, "ts": base + 1000})])  # "a" live, changed
        states.append((state, store))
    (failed, store), (untouched, _) = states
    store.data[key_state_key(0, b"b")] = b"\xc1"  # "b" is read from the store: corrupt
    late = [StateInput(3, None, 0, {**a, "ts": base + 2000}), StateInput(4, None, 0, b)]
    with pytest.raises(msgspec.DecodeError):
        failed.apply(late)
    assert not failed.broken
    assert failed.take_changes(write=False) == untouched.take_changes(write=False)


def test_a_batch_that_fails_after_changing_keys_breaks_the_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lay = layout(shape="one group")
    state = PartitionState(lay, MemoryStore(), "events", 0, deferred=True)
    doc = {"card": "a", "amount": 1.0, "shop": "s1", "ts": 1_700_000_000_000}
    state.apply([StateInput(0, None, 0, doc)])

    def no_room(value: object) -> bytes:
        raise MemoryError

    monkeypatch.setattr(windows, "encode", no_room)  # the served run, after the loop
    with pytest.raises(MemoryError):
        state.apply([StateInput(1, None, 0, doc)])
    assert state.broken
    with pytest.raises(RuntimeError, match="rebuild"):
        state.take_changes()
    with pytest.raises(RuntimeError, match="rebuild"):
        state.apply([StateInput(2, None, 0, doc)])


def test_the_sweep_leaves_a_dirty_key_and_deletes_at_the_take() -> None:
    lay = layout(ttl_us=5_000_000, shape="one group")
    store = MemoryStore()
    state = PartitionState(lay, store, "events", 0, deferred=True)
    base = 1_700_000_000_000
    doc = {"amount": 1.0, "shop": "s1"}
    state.apply([StateInput(0, None, 0, {**doc, "card": "a", "ts": base})])
    state.apply([StateInput(1, None, 0, {**doc, "card": "b", "ts": base})])
    state.take_changes()
    state.apply([StateInput(2, None, 0, {**doc, "card": "b", "ts": base + 60_000})])
    # "a" is past its TTL; "b" is dirty (its store bytes are old): left alone.
    assert state.sweep() == ()
    assert key_state_key(0, b"a") in store.data
    state.take_changes()
    assert sorted(k for k in store.data if k[:1] == KEY_PREFIX) == [key_state_key(0, b"b")]

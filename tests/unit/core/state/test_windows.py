"""The window engine against the definition: batching, restore, replay, bad input, bounds."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state.codec import (
    META_KEY,
    SERVED_PREFIX,
    KeyState,
    decode_key_state,
    decode_served,
    encode,
    key_state_key,
)
from streamer.core.state.declared import parse_features
from streamer.core.state.layout import build_layout
from streamer.core.state.restore import newest_meta, restore
from streamer.core.state.store import Change, MemoryStore, RocksStore
from streamer.core.state.windows import (
    COMPILED,
    ForeignStoreError,
    PartitionState,
    StateInput,
    aggregate,
)
from tests.unit.core.state.streams import (
    LATENESS_US,
    SHAPES,
    Rec,
    bits,
    by_partition,
    layout,
    reference,
    streams,
)

PROPERTIES = settings(deadline=None, database=None, max_examples=150)


def cut(inputs: list[StateInput], sizes: list[int]) -> list[list[StateInput]]:
    """The inputs cut into batches of the given sizes (cycled)."""
    batches = []
    at = 0
    index = 0
    while at < len(inputs):
        size = sizes[index % len(sizes)]
        batches.append(inputs[at : at + size])
        at += size
        index += 1
    return batches


def run_batched(
    inputs: list[StateInput],
    sizes: list[int],
    store: object,
    partition: int,
    ttl_us: int = 0,
    *,
    sweep: bool = False,
    shape: str = "two groups",
) -> tuple[list[tuple[tuple[bytes, ...] | None, str]], list[Change]]:
    """Apply in batches, with a fresh engine over the same store for each batch (a restart).

    ``sweep`` deletes the keys past their TTL after every batch.
    """
    outcomes = []
    changelog: list[Change] = []
    lay = layout(ttl_us, shape=shape)
    for batch in cut(inputs, sizes):
        state = PartitionState(lay, store, "events", partition)  # type: ignore[arg-type]
        applied = state.apply(batch)
        changelog.extend(applied.changes)
        if sweep:
            changelog.extend(state.sweep())
        outcomes.extend(
            (bits(o.values), o.reason) if o is not None else (None, "") for o in applied.outcomes
        )
    return outcomes, changelog


BATCH_SIZES = st.lists(st.integers(1, 7), min_size=1, max_size=4)


class TestSemantics:
    @PROPERTIES
    @given(
        stream=streams(),
        sizes=BATCH_SIZES,
        ttl=st.sampled_from([0, 4_000_000, 60_000_000]),
        sweep=st.booleans(),
        shape=st.sampled_from(sorted(SHAPES)),
    )
    def test_batched_application_equals_the_definition_bit_for_bit(
        self, stream: list[Rec], sizes: list[int], ttl: int, sweep: bool, shape: str
    ) -> None:
        # the sweep deletes keys past their TTL: when it runs changes no value
        for partition, inputs in by_partition(stream).items():
            batched, _ = run_batched(
                inputs, sizes, MemoryStore(), partition, ttl, sweep=sweep, shape=shape
            )
            assert batched == reference(layout(ttl, shape=shape), inputs)

    @PROPERTIES
    @given(
        stream=streams(),
        sizes=BATCH_SIZES,
        other=BATCH_SIZES,
        shape=st.sampled_from(sorted(SHAPES)),
    )
    def test_the_values_never_depend_on_the_batching(
        self, stream: list[Rec], sizes: list[int], other: list[int], shape: str
    ) -> None:
        for partition, inputs in by_partition(stream).items():
            first, _ = run_batched(inputs, sizes, MemoryStore(), partition, shape=shape)
            second, _ = run_batched(inputs, other, MemoryStore(), partition, shape=shape)
            one_by_one, _ = run_batched(inputs, [1], MemoryStore(), partition, shape=shape)
            assert first == second == one_by_one

    @PROPERTIES
    @given(
        stream=streams(),
        sizes=BATCH_SIZES,
        ttl=st.sampled_from([0, 4_000_000]),
        shape=st.sampled_from(sorted(SHAPES)),
    )
    def test_records_in_time_order_equal_the_definition_bit_for_bit(
        self, stream: list[Rec], sizes: list[int], ttl: int, shape: str
    ) -> None:
        # every key's records in time order (equal times too): the engine's inline loop,
        # which bisects and appends in place and drops past the horizon as it goes
        ordered = [
            Rec(
                rec.partition,
                rec.key,
                rec.timestamp_ms if rec.timestamp_ms == -1 else 1_700_000_000_000 + 1000 * (i // 2),
                {**rec.doc, "ts": 1_700_000_000_000 + 1000 * (i // 3)}
                if isinstance(rec.doc.get("ts"), int)
                else rec.doc,
            )
            for i, rec in enumerate(stream)
        ]
        for partition, inputs in by_partition(ordered).items():
            batched, _ = run_batched(inputs, sizes, MemoryStore(), partition, ttl, shape=shape)
            assert batched == reference(layout(ttl, shape=shape), inputs)

    def test_a_worked_example(self) -> None:
        features = parse_features(
            [
                {"name": "n", "key": "card", "agg": "count", "window": "1h", "time": "ts"},
                {"name": "s", "key": "card", "agg": "sum", "field": "x", "window": "1h",
                 "time": "ts"},
                {"name": "gap", "key": "card", "agg": "time_since_last", "window": "1h",
                 "time": "ts", "default": -1},
                {"name": "prev", "key": "card", "agg": "last", "field": "x", "window": "1h",
                 "time": "ts", "include_current": False},
            ]
        )  # fmt: skip
        state = PartitionState(build_layout(features, 60_000_000), MemoryStore(), "t", 0)
        hour = 3_600_000
        docs = [
            {"card": "a", "x": 0.1, "ts": 0},
            {"card": "a", "x": 0.2, "ts": 1000},
            {"card": "b", "x": 5, "ts": 1500},
            {"card": "a", "x": 0.3, "ts": hour},  # (t - 1h, t]: the record at 0 is out
            {"card": "a", "x": 1, "ts": hour - 30_000},  # 30 s out of order: applied, and its
            # window (t - 1h, t] holds the records at 0 and 1000 s, not the one at 3600 s
            {"card": "a", "x": 1, "ts": hour - 61_000},  # 61 s behind the newest: late
        ]
        applied = state.apply([StateInput(i, None, None, d) for i, d in enumerate(docs)])
        got = [(o.values, o.reason) for o in applied.outcomes if o is not None]
        assert got == [
            ((1.0, 0.1, -1.0, 0.0), ""),
            ((2.0, 0.30000000000000004, 1.0, 0.1), ""),
            ((1.0, 5.0, -1.0, 0.0), ""),
            ((2.0, 0.5, 3599.0, 0.2), ""),
            ((3.0, 1.3, 3569.0, 0.2), ""),
            (None, "late"),
        ]


class TestBadInput:
    @pytest.mark.parametrize(
        ("doc", "key", "timestamp", "reason"),
        [
            ({"card": None, "amount": 1, "shop": "s", "ts": 5}, b"k", 1, "missing_key"),
            ({"amount": 1, "shop": "s", "ts": 5}, b"k", 1, "missing_key"),
            ({"card": "a", "amount": 1, "shop": "s", "ts": 5}, None, 1, "missing_key"),
            ({"card": "a", "amount": "x", "shop": "s", "ts": 5}, b"k", 1, "non_numeric_feature"),
            ({"card": "a", "amount": [1], "shop": "s", "ts": 5}, b"k", 1, "non_numeric_feature"),
            ({"card": "a", "shop": "s", "ts": 5}, b"k", 1, "missing_feature"),
            ({"card": "a", "amount": 1, "shop": "s", "ts": "noon"}, b"k", 1, "bad_timestamp"),
            ({"card": "a", "amount": 1, "shop": "s", "ts": 5}, b"k", -1, "bad_timestamp"),
            ({"card": "a", "amount": 1, "shop": "s", "ts": 10**30}, b"k", 1, "bad_timestamp"),
            ({"card": "a", "amount": 1, "shop": "s", "ts": 1e300}, b"k", 1, "bad_timestamp"),
            ({"card": "a", "amount": 1, "shop": "s", "ts": 1.7e306}, b"k", 1, "bad_timestamp"),
            ({"card": "a", "amount": "inf", "shop": "s", "ts": 5}, b"k", 1, "non_finite"),
        ],
    )
    def test_a_bad_record_gets_its_reason_and_leaves_the_state_as_it_was(
        self, doc: dict[str, object], key: bytes | None, timestamp: int, reason: str
    ) -> None:
        store = MemoryStore()
        state = PartitionState(layout(), store, "events", 0)
        good = {"card": "a", "amount": 2.5, "shop": "s", "ts": 1}
        state.apply([StateInput(0, b"k", 1, good)])
        before = {k: v for k, v in store.data.items() if k != META_KEY and k[:1] != b"\x01"}
        (outcome,) = state.apply([StateInput(1, key, timestamp, doc)]).outcomes
        assert outcome is not None
        assert (outcome.values, outcome.reason) == (None, reason)
        after = {k: v for k, v in store.data.items() if k != META_KEY and k[:1] != b"\x01"}
        assert after == before
        assert state.last_offset == 1  # applied (as a dead letter): a replay will not count it

    def test_a_whole_float_and_an_integer_are_one_key_and_one_distinct_value(self) -> None:
        features = parse_features(
            [
                {"name": "n", "key": "card", "agg": "count", "window": "1h", "time": "ts"},
                {"name": "d", "key": "card", "agg": "distinct_count", "field": "shop",
                 "window": "1h", "time": "ts"},
            ]
        )  # fmt: skip
        state = PartitionState(build_layout(features, 0), MemoryStore(), "t", 0)
        docs = [{"card": 7, "shop": 3, "ts": 1}, {"card": 7.0, "shop": 3.0, "ts": 2}]
        applied = state.apply([StateInput(i, None, None, d) for i, d in enumerate(docs)])
        assert [o.values for o in applied.outcomes if o is not None] == [(1.0, 1.0), (2.0, 1.0)]

    def test_a_value_that_is_not_a_json_object_is_left_to_the_preprocessor(self) -> None:
        state = PartitionState(layout(), MemoryStore(), "events", 0)
        assert state.apply([StateInput(0, b"k", 1, None)]).outcomes == (None,)


class TestOncePerRecord:
    @PROPERTIES
    @given(
        stream=streams(), sizes=BATCH_SIZES, data=st.data(), shape=st.sampled_from(sorted(SHAPES))
    )
    def test_a_replay_changes_nothing_and_gets_what_it_got_the_first_time(
        self, stream: list[Rec], sizes: list[int], data: st.DataObject, shape: str
    ) -> None:
        for partition, inputs in by_partition(stream).items():
            store = MemoryStore()
            first, _ = run_batched(inputs, sizes, store, partition, shape=shape)
            snapshot = dict(store.data)
            replay_from = data.draw(st.integers(0, len(inputs) - 1))
            again, _ = run_batched(inputs[replay_from:], sizes, store, partition, shape=shape)
            assert again == first[replay_from:]
            snapshot.pop(META_KEY)
            assert {k: v for k, v in store.data.items() if k != META_KEY} == snapshot

    @pytest.mark.parametrize("engine", ["native", "python"])
    def test_a_served_run_of_the_codec_before_the_block_still_replays(self, engine: str) -> None:
        """A store (or changelog) written before 2026-12-06 keeps a Served per record in its
        runs: its replays get those values and reasons, as the runs of one block do."""
        if engine == "native" and COMPILED is None:
            pytest.skip("the compiled loop is not built")
        store = MemoryStore()
        state = PartitionState(layout(), store, "events", 0, engine=engine)
        docs = [
            {"card": "a", "amount": 1.5, "shop": "s", "ts": 1},
            {"amount": 2.0, "shop": "s", "ts": 2},  # no card: missing_key
            {"card": "a", "amount": 0.25, "shop": "t", "ts": 3},
        ]
        inputs = [StateInput(i, b"k", 1, doc) for i, doc in enumerate(docs)]
        first = state.apply(inputs).outcomes
        assert [o.reason for o in first if o is not None] == ["", "missing_key", ""]
        width = len(state.layout.features)
        runs = {k: decode_served(v, width) for k, v in store.data.items() if k[:1] == SERVED_PREFIX}
        assert runs
        assert all(isinstance(run.served, bytes) for run in runs.values())
        for key, run in runs.items():  # as the codec before the block wrote them
            old = [run.outcome(place, width) for place in range(len(run.offsets))]
            store.data[key] = msgspec.msgpack.encode((run.offsets, old))
            assert decode_served(store.data[key], width).served == old
        again = state.apply(inputs).outcomes
        assert [(o.values, o.reason, o.detail) for o in again if o is not None] == [
            (o.values, o.reason, o.detail) for o in first if o is not None
        ]
        assert first[0] is not None
        assert first[0].values is not None
        assert first[0].values[0] == 1.0

    def test_a_served_run_that_does_not_hold_a_row_per_offset_is_a_corrupt_store(self) -> None:
        store = MemoryStore()
        state = PartitionState(layout(), store, "events", 0)
        doc = {"card": "a", "amount": 1.5, "shop": "s", "ts": 1}
        inputs = [StateInput(i, b"k", 1, doc) for i in range(3)]
        state.apply(inputs)
        (key,) = [k for k in store.data if k[:1] == SERVED_PREFIX]
        run = decode_served(store.data[key], len(state.layout.features))
        assert isinstance(run.served, bytes)
        short = msgspec.msgpack.encode((run.offsets, run.served[:-8], []))
        for bad in (short, msgspec.msgpack.encode((run.offsets, run.served, [(3, "late", "")]))):
            store.data[key] = bad
            with pytest.raises(msgspec.DecodeError, match="a served run of 3 records"):
                state.apply(inputs[:1])

    def test_a_replay_below_the_forgotten_offsets_is_dead_lettered_not_counted(self) -> None:
        state = PartitionState(layout(), MemoryStore(), "events", 0)
        doc = {"card": "a", "amount": 1, "shop": "s", "ts": 1}
        state.apply([StateInput(i, b"k", 1, doc) for i in range(3)])
        state.forget_served(2)
        (outcome,) = state.apply([StateInput(1, b"k", 1, doc)]).outcomes
        assert outcome is not None
        assert outcome.reason == "state_replayed"
        (third,) = state.apply([StateInput(2, b"k", 1, doc)]).outcomes
        assert third is not None
        assert third.values is not None
        assert third.values[0] == 3.0  # kept: offset 2 was not forgotten


def compact(changelog: list[Change]) -> list[Change]:
    """What a compacted topic keeps: the newest value of each key, tombstones gone."""
    newest: dict[bytes, bytes | None] = {}
    for key, value in changelog:
        newest.pop(key, None)
        newest[key] = value
    return [(k, v) for k, v in newest.items() if v is not None]


class TestRestore:
    @PROPERTIES
    @given(
        stream=streams(), sizes=BATCH_SIZES, data=st.data(), shape=st.sampled_from(sorted(SHAPES))
    )
    def test_restore_from_the_changelog_then_the_rest_equals_one_uninterrupted_run(
        self, stream: list[Rec], sizes: list[int], data: st.DataObject, shape: str
    ) -> None:
        for partition, inputs in by_partition(stream).items():
            whole, _ = run_batched(inputs, sizes, MemoryStore(), partition, shape=shape)
            split = data.draw(st.integers(0, len(inputs)))
            head, changelog = run_batched(
                inputs[:split],
                sizes,
                MemoryStore(),
                partition,
                sweep=data.draw(st.booleans()),
                shape=shape,
            )
            rebuilt = MemoryStore()
            compacted = compact(changelog)
            assert list(restore(rebuilt, compacted, chunk=3))[-1] == len(compacted)
            if split:
                meta = newest_meta(changelog)
                assert meta is not None
                assert meta.last_offset == split - 1
            # the crash came after the changelog was written and before the commit:
            # the whole tail (and some of the head) comes again
            again_from = data.draw(st.integers(0, split))
            tail, _ = run_batched(inputs[again_from:], sizes, rebuilt, partition, shape=shape)
            assert head + tail[split - again_from :] == whole
            assert tail[: split - again_from] == head[again_from:]

    def test_a_store_of_another_partition_or_declaration_is_refused(self) -> None:
        store = MemoryStore()
        PartitionState(layout(), store, "events", 0).apply([])
        with pytest.raises(ForeignStoreError, match="written for events/0"):
            PartitionState(layout(), store, "events", 1)
        with pytest.raises(ForeignStoreError, match="features"):
            PartitionState(layout(ttl_us=5), store, "events", 0)
        store.data[META_KEY] = b"\xc1garbage"
        with pytest.raises(ForeignStoreError, match="corrupt"):
            PartitionState(layout(), store, "events", 0)

    def test_a_key_state_of_another_shape_is_a_corrupt_store(self) -> None:
        # it decodes, but its columns do not fit the group: the daemon rebuilds the store
        store = MemoryStore()
        state = PartitionState(layout(), store, "events", 0)
        store.data[key_state_key(0, b"a")] = encode(KeyState(5, [5_000_000], [[1.0]]))
        doc = {"card": "a", "amount": 1, "shop": "s", "ts": 6}
        with pytest.raises(msgspec.DecodeError, match="field values"):
            state.apply([StateInput(0, b"k", 6, doc)])


class TestBounds:
    def test_a_key_keeps_only_the_entries_a_later_record_can_see(self) -> None:
        store = MemoryStore()
        state = PartitionState(layout(), store, "events", 0)
        docs = [{"card": "a", "amount": 1, "shop": "s", "ts": i * 1000} for i in range(200)]
        state.apply([StateInput(i, b"k", i * 1000, d) for i, d in enumerate(docs)])
        kept = decode_key_state(store.data[key_state_key(0, b'"a"'[1:-1])])
        # the largest window of the group is 30 s, plus 3 s of allowed lateness
        horizon = 30_000_000 + LATENESS_US
        assert kept.times == [
            t * 1000 for t in range(0, 200_000, 1000) if t * 1000 > 199_000_000 - horizon
        ]

    def test_a_key_past_its_ttl_reads_as_empty_and_the_sweep_deletes_it(self) -> None:
        store = MemoryStore()
        state = PartitionState(layout(ttl_us=10_000_000), store, "events", 0)
        old = {"card": "a", "amount": 1, "shop": "s", "ts": 0}
        new = {"card": "b", "amount": 1, "shop": "s", "ts": 20_000}
        state.apply([StateInput(0, b"k", 0, old), StateInput(1, b"j", 20_000, new)])
        assert key_state_key(0, b"a") in store.data
        deleted = state.sweep()
        assert (key_state_key(0, b"a"), None) in deleted
        assert key_state_key(0, b"a") not in store.data
        assert key_state_key(0, b"b") in store.data
        assert (key_state_key(1, b"k"), None) in deleted  # the record key k is past its TTL too
        assert state.key_count() == 2  # b, and the record key j
        assert isinstance(decode_key_state(store.data[key_state_key(0, b"b")]), KeyState)


class TestRocksStore:
    @settings(deadline=None, database=None, max_examples=15)
    @given(stream=streams(max_records=40), sizes=BATCH_SIZES)
    def test_on_disk_it_gives_what_memory_gives(
        self, tmp_path_factory: pytest.TempPathFactory, stream: list[Rec], sizes: list[int]
    ) -> None:
        directory = tmp_path_factory.mktemp("rocks")
        for partition, inputs in by_partition(stream).items():
            rocks = RocksStore(directory / f"events-{partition}")
            try:
                on_disk, _ = run_batched(inputs, sizes, rocks, partition)
            finally:
                rocks.close()
            in_memory, _ = run_batched(inputs, sizes, MemoryStore(), partition)
            assert on_disk == in_memory

    def test_it_survives_a_reopen_and_trims_served_records_by_offset(self, tmp_path: Path) -> None:
        rocks = RocksStore(tmp_path / "events-0")
        state = PartitionState(layout(), rocks, "events", 0)
        doc = {"card": "a", "amount": 1, "shop": "s", "ts": 1}
        state.apply([StateInput(i, b"k", 1, doc) for i in range(5)])
        state.forget_served(3)
        rocks.close()
        reopened = RocksStore(tmp_path / "events-0")
        state = PartitionState(layout(), reopened, "events", 0)
        assert state.last_offset == 4
        replayed = state.apply([StateInput(i, b"k", 1, doc) for i in range(2, 5)]).outcomes
        assert [o.reason for o in replayed if o is not None] == ["state_replayed", "", ""]
        assert reopened.approximate_bytes() >= 0
        reopened.destroy()
        assert not (tmp_path / "events-0").exists()


class TestAggregate:
    def test_sums_are_correctly_rounded_whatever_the_order(self) -> None:
        values = [1e16, 1.0, -1e16, 0.1, 0.2]
        assert aggregate("sum", values, 0.0) == aggregate("sum", values[::-1], 0.0) == 1.3
        assert aggregate("mean", [0.3, 0.2, 0.1], 0.0) == 0.6 / 3  # fsum is 0.6 exactly rounded
        assert aggregate("std", [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 0.0) == 2.0
        assert aggregate("distinct_count", ["a", "b", "a"], 0.0) == 2.0
        assert aggregate("min", [], -1.0) == -1.0

    def test_a_sum_beyond_the_floats_is_infinite_not_an_error(self) -> None:
        # math.fsum raises OverflowError for these: a record must never stop the daemon
        assert aggregate("sum", [1e308, 1e308], 0.0) == math.inf
        assert aggregate("sum", [-1e308, -1e308], 0.0) == -math.inf
        assert aggregate("sum", [1e308, 1e308, -1e308], 0.0) == 1e308  # the exact sum
        assert aggregate("mean", [1e308, 1e308], 0.0) == math.inf
        assert aggregate("std", [1e200, -1e200], 0.0) == math.inf
        features = parse_features(
            [
                {"name": "s", "key": "k", "agg": "sum", "field": "x", "window": "1h", "time": "t"},
                {"name": "d", "key": "k", "agg": "std", "field": "x", "window": "1h", "time": "t"},
            ]
        )
        state = PartitionState(build_layout(features, 0), MemoryStore(), "t", 0)
        docs = [{"k": "a", "x": 1e308, "t": 1}, {"k": "a", "x": 1e308, "t": 2}]
        applied = state.apply([StateInput(i, None, None, d) for i, d in enumerate(docs)])
        assert [o.values for o in applied.outcomes if o is not None] == [
            (1e308, 0.0),
            (math.inf, math.inf),  # the mean (the sum over n) is infinite too
        ]

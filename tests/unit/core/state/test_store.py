"""RocksDB written behind: it reads what a store written at once reads; it loses whole writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.state.store import Change, MemoryStore, RocksStore
from streamer.core.state.windows import PartitionState
from tests.unit.core.state.streams import Rec, by_partition, layout, streams
from tests.unit.core.state.test_windows import BATCH_SIZES, run_batched

KEYS = st.binary(min_size=1, max_size=3).map(
    lambda tail: b"\x01\x02\x03"[len(tail) % 3 :][:1] + tail
)
"""Keys of three kinds (first bytes), so that ranges cross kinds."""
CHANGES = st.lists(st.tuples(KEYS, st.one_of(st.none(), st.binary(max_size=12))), max_size=6)


def _everything(store: Any) -> list[tuple[bytes, bytes]]:
    return list(store.items_from(b""))


class TestWriteBehind:
    @settings(deadline=None, database=None, max_examples=60)
    @given(
        writes=st.lists(CHANGES, max_size=12),
        limit=st.sampled_from([1, 40, 10_000]),
        data=st.data(),
    )
    def test_it_reads_what_a_store_written_at_once_reads(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        writes: list[list[Change]],
        limit: int,
        data: st.DataObject,
    ) -> None:
        rocks = RocksStore(tmp_path_factory.mktemp("wb") / "p", write_behind_bytes=limit)
        memory = MemoryStore()
        try:
            for changes in writes:
                rocks.write(changes)
                memory.write(changes)
                low, high = sorted(data.draw(st.tuples(KEYS, KEYS)))
                assert rocks.keys_between(low, high) == memory.keys_between(low, high)
                probe = data.draw(KEYS)
                assert rocks.get(probe) == memory.get(probe)
            assert _everything(rocks) == _everything(memory)
        finally:
            rocks.close()

    def test_a_reopen_after_close_reads_every_write(self, tmp_path: Path) -> None:
        rocks = RocksStore(tmp_path / "p", write_behind_bytes=1_000_000)
        rocks.write([(b"\x02a", b"1"), (b"\x00meta", b"m1")])
        rocks.write([(b"\x02a", None), (b"\x02b", b"2")])
        rocks.close()
        reopened = RocksStore(tmp_path / "p")
        try:
            assert _everything(reopened) == [(b"\x00meta", b"m1"), (b"\x02b", b"2")]
        finally:
            reopened.close()

    def test_a_process_killed_before_the_flush_leaves_the_store_of_a_whole_earlier_write(
        self, tmp_path: Path
    ) -> None:
        # 30 bytes gathered at most: the second write (16 bytes more) goes to RocksDB with
        # the first; the third stays in memory, and is lost when nothing closes the store.
        rocks = RocksStore(tmp_path / "p", write_behind_bytes=30)
        rocks.write([(b"\x02a", b"1"), (b"\x00meta", b"m1______")])
        rocks.write([(b"\x02a", b"2"), (b"\x00meta", b"m2______")])
        rocks.write([(b"\x02a", b"3"), (b"\x00meta", b"m3")])
        assert rocks.get(b"\x02a") == b"3"
        on_disk = dict(rocks._db.items())  # what a kill -9 now leaves
        assert on_disk == {b"\x02a": b"2", b"\x00meta": b"m2______"}
        rocks.close()

    def test_a_failed_write_to_rocksdb_fails_the_write_and_loses_nothing_gathered(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rocks = RocksStore(tmp_path / "p", write_behind_bytes=10)
        rocks.write([(b"\x02a", b"1")])

        def full(changes: Any) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(rocks, "_write_through", full)
        with pytest.raises(OSError, match="disk full"):
            rocks.write([(b"\x02b", b"0123456789")])
        assert (rocks.get(b"\x02a"), rocks.get(b"\x02b")) == (b"1", None)
        monkeypatch.undo()
        rocks.close()

    @settings(deadline=None, database=None, max_examples=15)
    @given(
        stream=streams(max_records=40),
        sizes=BATCH_SIZES,
        limit=st.sampled_from([1, 300, 8_000_000]),
    )
    def test_the_engine_on_it_gives_what_memory_gives_and_a_reopen_goes_on(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        stream: list[Rec],
        sizes: list[int],
        limit: int,
    ) -> None:
        directory = tmp_path_factory.mktemp("rocks")
        for partition, inputs in by_partition(stream).items():
            half = len(inputs) // 2
            rocks = RocksStore(directory / f"events-{partition}", write_behind_bytes=limit)
            try:
                first, _ = run_batched(inputs[:half], sizes, rocks, partition)
            finally:
                rocks.close()
            rocks = RocksStore(directory / f"events-{partition}", write_behind_bytes=limit)
            try:
                assert PartitionState(layout(), rocks, "events", partition).last_offset == (
                    inputs[half - 1].offset if half else -1
                )
                second, _ = run_batched(inputs[half:], sizes, rocks, partition)
            finally:
                rocks.close()
            in_memory, _ = run_batched(inputs, sizes, MemoryStore(), partition)
            assert first + second == in_memory

"""StateKeeper: restore paths against an in-memory changelog, replays, forget_served, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.core.offsets import WatermarkTracker
from streamer.core.state import windows
from streamer.core.state.changelog import (
    Flush,
    RestoreCount,
    acknowledged_changes,
    last_meta,
)
from streamer.core.state.codec import META_KEY, SERVED_PREFIX, decode_meta, served_key
from streamer.core.state.store import RocksStore
from streamer.messages import SourceBatch
from streamer.settings import Settings, build_settings
from streamer.statefile import StateApplier
from streamer.topology import state as state_module
from streamer.topology.state import StateKeeper, changelog_topic_name

TOPIC = "tx"
FEATURES = [
    {"name": "n_1h", "key": "card", "agg": "count", "window": "1h", "time": "ts"},
    {
        "name": "sum_1h",
        "key": "card",
        "agg": "sum",
        "field": "amount",
        "window": "1h",
        "time": "ts",
    },
]


def make_settings(state_dir: str = "", interval_s: float = 0.0, **kafka: str) -> Settings:
    """Settings of a keeper whose batches carry their own changes (``interval_s`` 0)."""
    return build_settings(
        {
            "kafka": {"input_topic": TOPIC, "output_topic": "out", **kafka},
            "state": {"features": FEATURES, "dir": state_dir, "changelog_interval_s": interval_s},
        },
        environ={},
    )


class MemoryChangelog:
    """A changelog topic's partitions as lists: what the producer would have sent."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.closed = False

    def append(self, partition: int, changes: tuple[tuple[bytes, bytes | None], ...]) -> None:
        self.partitions.setdefault(partition, []).extend(changes)

    def high_watermark(self, partition: int, timeout_s: float) -> int:
        return len(self.partitions.get(partition, []))

    def read(
        self, partition: int, start: int, end: int
    ) -> Iterator[list[tuple[int, bytes, bytes | None]]]:
        records = self.partitions.get(partition, [])
        end = min(end, len(records))
        for low in range(start, end, 3):  # small chunks: a meta record may end any chunk
            yield [(o, *records[o]) for o in range(low, min(end, low + 3))]

    def close(self) -> None:
        self.closed = True


def event(offset: int, card: str, ts: int, amount: float) -> tuple[int, bytes]:
    return offset, orjson.dumps({"card": card, "ts": ts, "amount": amount})


EVENTS = [
    event(0, "a", 1_000, 1.5),
    event(1, "b", 2_000, 2.0),
    event(2, "a", 3_000, 0.25),
    event(3, "a", 4_000, 10.0),
    event(4, "b", 5_000, 7.0),
    (5, b"not json"),
    event(6, "a", 7_000, 1.0),
    event(7, "c", 8_000, 3.0),
]


def batch(events: list[tuple[int, bytes]], partition: int = 0) -> SourceBatch:
    return SourceBatch(
        batch_id=0,
        topic=TOPIC,
        partition=partition,
        seq=0,
        offsets=[o for o, _ in events],
        keys=[None] * len(events),
        values=[v for _, v in events],
        timestamps_ms=[0] * len(events),
        dispatched_at=0.0,
    )


def offline(events: list[tuple[int, bytes]]) -> dict[int, tuple[float, ...] | None]:
    """The values `streamer features` computes for the same records, in offset order."""
    applier = StateApplier(make_settings(), TOPIC)
    results = applier.apply(
        [o for o, _ in events], [None] * len(events), [v for _, v in events], [0] * len(events)
    )
    return {r.offset: (r.features if r.enriched is not None else None) for r in results}


def run(keeper: StateKeeper, log: MemoryChangelog, events: list[tuple[int, bytes]]) -> SourceBatch:
    """Apply a batch and deliver its changelog (as an acknowledged batch would be)."""
    out = keeper.apply(batch(events))
    log.append(0, out.changelog)
    return out


def served(out: SourceBatch) -> dict[int, tuple[float, ...] | None]:
    return dict(zip(out.offsets, out.state_values.rows(), strict=True))


def test_changelog_topic_name_derives_from_group_input_and_fingerprint() -> None:
    name = changelog_topic_name(make_settings(group_id="fraud team/1"))
    keeper = StateKeeper(make_settings(), None)
    assert name == f"fraud_team_1.tx.state-{keeper.layout.fingerprint[:8]}-changelog"
    explicit = build_settings(
        {
            "kafka": {"input_topic": TOPIC, "output_topic": "out"},
            "state": {"features": FEATURES, "changelog_topic": "mine"},
        },
        environ={},
    )
    assert changelog_topic_name(explicit) == "mine"


def test_batches_carry_served_values_rejections_and_changelog_equal_to_offline() -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(), lambda: log)
    first = run(keeper, log, EVENTS[:3])
    second = run(keeper, log, EVENTS[3:])
    expected = offline(EVENTS)
    assert {**served(first), **served(second)} == expected
    assert expected[3] == (3.0, 11.75)
    assert first.state_names == ("n_1h", "sum_1h")
    assert first.state_values.row(2) == (2.0, 1.75)
    assert first.values[2] == EVENTS[2][1]  # the original bytes: dead letters carry them
    assert second.state_values.row(2) is None  # not JSON: no features
    assert second.state_rejections == ()
    assert first.changelog[-1][0] == META_KEY
    assert decode_meta(first.changelog[-1][1] or b"").last_offset == 2
    assert keeper.state_keys == 3


def test_missing_key_is_a_state_rejection() -> None:
    keeper = StateKeeper(make_settings(), None)
    out = keeper.apply(batch([(0, b'{"ts": 1, "amount": 1.0}'), event(1, "a", 2, 1.0)]))
    assert [(r.index, r.reason, r.stage) for r in out.state_rejections] == [
        (0, "missing_key", "state")
    ]
    assert out.state_values.rows() == [None, (1.0, 1.0)]


def test_replay_after_restore_serves_the_same_values_and_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    first = run(keeper, log, EVENTS[:4])
    keeper.close()
    # The changelog is current with the local store: used as it is; the batch comes again.
    again = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    replay = again.apply(batch(EVENTS[:4]))
    assert served(replay) == served(first)
    rest = again.apply(batch(EVENTS[4:]))
    assert served(rest) == {o: v for o, v in offline(EVENTS).items() if o >= 4}
    again.close()


def test_local_store_ahead_of_the_changelog_is_rebuilt(tmp_path: Path) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    run(keeper, log, EVENTS[:3])
    keeper.apply(batch(EVENTS[3:5]))  # applied locally, its changelog never acknowledged
    keeper.close()
    again = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    out = again.apply(batch(EVENTS[3:]))  # the uncommitted batch comes again: applied again
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 3}
    assert again.progress().restored == {(TOPIC, 0): len(log.partitions[0])}
    again.close()


def test_local_store_behind_the_changelog_is_rebuilt(tmp_path: Path) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    run(keeper, log, EVENTS[:3])
    keeper.close()
    # Another instance had the partition meanwhile and went on (its own local store).
    elsewhere = StateKeeper(make_settings(str(tmp_path / "other")), lambda: log)
    elsewhere.apply(batch(EVENTS[:3]))  # rebuilt from the changelog, then replayed: no change
    run(elsewhere, log, EVENTS[3:5])
    elsewhere.close()
    back = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    out = back.apply(batch(EVENTS[5:]))
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 5}
    back.close()


def test_corrupt_local_store_is_discarded_and_rebuilt(tmp_path: Path) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    run(keeper, log, EVENTS[:3])
    keeper.close()
    store = RocksStore(tmp_path / "streamer" / f"{TOPIC}-0")
    store.write([(META_KEY, b"\xc1garbage")])
    store.close()
    again = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    out = again.apply(batch(EVENTS[3:]))
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 3}
    again.close()


def test_corrupt_key_state_in_a_current_store_is_rebuilt_from_the_changelog(
    tmp_path: Path,
) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    run(keeper, log, EVENTS[:3])
    keeper.close()
    store = RocksStore(tmp_path / "streamer" / f"{TOPIC}-0")
    key_a = next(k for k, _ in log.partitions[0] if k.endswith(b"a") and k[:1] == b"\x02")
    store.write([(key_a, b"\xc1")])
    store.close()
    again = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    out = again.apply(batch(EVENTS[3:]))
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 3}
    again.close()


def test_foreign_local_store_is_discarded(tmp_path: Path) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    run(keeper, log, EVENTS[:3])
    keeper.close()
    # The store of partition 0 moved to partition 1's place: it belongs to another partition.
    (tmp_path / "streamer" / f"{TOPIC}-0").rename(tmp_path / "streamer" / f"{TOPIC}-1")
    again = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    out = again.apply(batch(EVENTS[:2], partition=1))
    assert out.state_values.rows() == [(1.0, 1.5), (1.0, 2.0)]  # partition 1 starts empty
    again.close()


def test_records_after_the_last_meta_are_not_restored() -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(), lambda: log)
    run(keeper, log, EVENTS[:3])
    cut = keeper.apply(batch(EVENTS[3:5])).changelog
    log.append(0, cut[:-1])  # the batch's changelog cut short: its meta never arrived
    meta = last_meta(log.read(0, 0, len(log.partitions[0])))
    assert meta is not None
    assert meta.last_offset == 2
    count = RestoreCount()
    restored = [c for chunk in acknowledged_changes(log.read(0, 0, 99), count) for c in chunk]
    assert count.dropped == len(cut) - 1
    assert count.kept == len(restored) == len(log.partitions[0]) - count.dropped
    again = StateKeeper(make_settings(), lambda: log)  # in memory: rebuilt from the changelog
    out = again.apply(batch(EVENTS[3:]))
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 3}


def test_forget_served_rides_with_the_next_batch_to_the_changelog() -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(), lambda: log)
    first = run(keeper, log, EVENTS[:3])
    served_keys = [k for k, _ in first.changelog if k.startswith(SERVED_PREFIX)]
    assert served_keys == [served_key(2)]  # one run: the batch's records, under its last offset
    keeper.committed({(TOPIC, 0): 2})  # the run holds offset 2: it is kept
    nxt = run(keeper, log, EVENTS[3:5])
    assert (served_keys[0], None) not in nxt.changelog
    assert [k for k, _ in nxt.changelog].count(META_KEY) == 1  # the batch's, last
    assert nxt.changelog[-1][0] == META_KEY
    # A replay of a forgotten offset is not served again: it is dead-lettered.
    again = StateKeeper(make_settings(), lambda: log)
    out = again.apply(batch(EVENTS[:3]))
    assert [(r.index, r.reason) for r in out.state_rejections] == [
        (0, "state_replayed"),
        (1, "state_replayed"),
    ]
    assert served(out)[2] == served(first)[2]
    keeper.committed({(TOPIC, 0): 3})  # past the run's last offset: its tombstone rides next
    assert run(keeper, log, EVENTS[5:6]).changelog[0] == (served_keys[0], None)


def test_progress_reports_keys_and_bytes_and_revoke_closes(tmp_path: Path) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    run(keeper, log, EVENTS)
    progress = keeper.progress()
    assert progress.keys == {(TOPIC, 0): 3}
    assert progress.restoring == {(TOPIC, 0): False}
    assert progress.nbytes[(TOPIC, 0)] >= 0
    assert keeper.state_keys == keeper._partitions[(TOPIC, 0)].state.key_count() == 3
    keeper.revoke([(TOPIC, 0)])
    assert keeper.state_keys == 0
    RocksStore(tmp_path / "streamer" / f"{TOPIC}-0").close()  # closed: RocksDB's lock is free
    keeper.close()
    assert log.closed


@pytest.mark.parametrize("state_dir", ["", "rocks"])
def test_changelog_restores_the_same_values_as_an_uninterrupted_run(
    tmp_path: Path, state_dir: str
) -> None:
    log = MemoryChangelog()
    directory = str(tmp_path / state_dir) if state_dir else ""
    keeper = StateKeeper(make_settings(directory), lambda: log)
    run(keeper, log, EVENTS[:4])
    keeper.close()
    if state_dir:
        import shutil

        shutil.rmtree(directory)  # the local state deleted between runs
    again = StateKeeper(make_settings(directory), lambda: log)
    out = again.apply(batch(EVENTS[4:]))
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 4}
    again.close()


def test_a_store_another_process_holds_is_waited_for_never_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    run(keeper, log, EVENTS[:3])
    keeper.close()
    held = RocksStore(tmp_path / "streamer" / f"{TOPIC}-0")  # the member handing it over
    monkeypatch.setattr("streamer.topology.state.STORE_LOCK_WAIT_S", 0.3)
    again = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    with pytest.raises(Exception, match="lock"):
        again.apply(batch(EVENTS[3:]))
    assert decode_meta(held.get(META_KEY) or b"").last_offset == 2  # still there
    held.close()
    out = again.apply(batch(EVENTS[3:]))  # released: opened, current, used as it is
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 3}
    again.close()


def test_two_groups_on_one_machine_keep_separate_stores(tmp_path: Path) -> None:
    log = MemoryChangelog()
    mine = StateKeeper(make_settings(str(tmp_path)), lambda: log)
    theirs = StateKeeper(make_settings(str(tmp_path), group_id="other team"), None)
    run(mine, log, EVENTS[:3])
    theirs.apply(batch(EVENTS[:3]))  # both open at once: no lock conflict
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_team", "streamer"]
    mine.close()
    theirs.close()


def test_gathered_changes_hold_the_commit_until_their_flush_is_acknowledged() -> None:
    """Exact commit offsets through acks before a flush, its ack, an idle flush, revoke, restart."""
    tp = (TOPIC, 0)
    now = [0.0]
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(interval_s=1.0), lambda: log, clock=lambda: now[0])
    tracker = WatermarkTracker()

    def dispatch(batch_id: int, events: list[tuple[int, bytes]]) -> SourceBatch:
        out = keeper.apply(batch(events))
        assert out.changelog == ()  # gathered, not carried
        tracker.hold(tp, keeper.durable_bounds()[tp])
        tracker.track(tp, batch_id, out.first_offset, out.last_offset, len(out))
        return out

    def deliver(flushes: list[tuple[tuple[str, int], Flush]]) -> None:
        for where, sent in flushes:
            log.append(where[1], sent.changes)
            assert keeper.flushed(where, sent.flush_id)
            tracker.hold(where, keeper.durable_bounds()[where])

    first = dispatch(0, EVENTS[:3])
    now[0] = 0.5
    second = dispatch(1, EVENTS[3:5])
    tracker.ack(tp, 0)
    tracker.ack(tp, 1)
    assert tracker.committable() == {tp: 0}  # answered, but their changes are not durable
    assert keeper.flushes() == []  # half an interval after the first change
    now[0] = 1.0
    ((_, one),) = keeper.flushes()
    keys = [key for key, _ in one.changes]
    assert len(keys) == len(set(keys))  # each key once
    assert keys[-1] == META_KEY
    assert decode_meta(one.changes[-1][1] or b"").last_offset == 4
    assert one.covers_from == 0
    assert tracker.committable() == {tp: 0}  # sent, not yet acknowledged
    deliver([(tp, one)])
    assert tracker.committable() == {tp: 5}
    tracker.mark_committed({tp: 5})
    keeper.committed({tp: 5})  # forgets what was served below 5: gathered, binds no offset
    assert keeper.durable_bounds() == {tp: None}

    third = dispatch(2, EVENTS[5:7])
    tracker.ack(tp, 2)
    assert tracker.committable() == {}  # held at 5
    # No batch comes any more: the interval alone sends the gathered changes.
    now[0] = 2.5
    idle = keeper.flushes()
    assert [sent.covers_from for _, sent in idle] == [5]
    deliver(idle)
    assert tracker.committable() == {tp: 7}
    tracker.mark_committed({tp: 7})

    fourth = dispatch(3, EVENTS[7:8])
    tracker.ack(tp, 3)
    assert tracker.committable() == {}  # held at 7; then the partition is revoked
    keeper.revoke([tp])
    assert keeper.durable_bounds() == {}
    assert keeper.flushes(force=True) == []

    # The next owner restores from the changelog (up to the idle flush) and applies 7 once.
    again = StateKeeper(make_settings(interval_s=1.0), lambda: log)
    redo = again.apply(batch(EVENTS[7:8]))
    expected = offline(EVENTS)
    assert {**served(first), **served(second), **served(third), **served(fourth)} == expected
    assert served(redo) == {7: expected[7]}


def test_a_rebuilt_store_gets_back_the_changes_not_yet_in_the_changelog(tmp_path: Path) -> None:
    now = [0.0]
    log = MemoryChangelog()
    settings = make_settings(str(tmp_path), interval_s=1.0)
    keeper = StateKeeper(settings, lambda: log, clock=lambda: now[0])
    keeper.apply(batch(EVENTS[:3]))
    now[0] = 1.0
    ((tp, sent),) = keeper.flushes()
    log.append(0, sent.changes)
    keeper.flushed(tp, sent.flush_id)
    keeper.apply(batch(EVENTS[3:5]))  # gathered only
    # A key state in the store that no longer decodes: the store is rebuilt from the
    # changelog, and the gathered changes are written back over it.
    part = keeper._partitions[tp]
    part.state._forget_cache()
    for key in part.store.inner.keys_between(b"\x02", b"\x03"):
        part.store.inner.write([(key, b"\xc1garbage")])
    later = keeper.apply(batch(EVENTS[6:]))
    assert served(later) == {o: v for o, v in offline(EVENTS).items() if o >= 6}


def deliver_all(keeper: StateKeeper, log: MemoryChangelog, *, force: bool = True) -> int:
    """Send every flush due to the changelog and acknowledge it; how many there were."""
    flushes = keeper.flushes(force=force)
    for where, sent in flushes:
        log.append(where[1], sent.changes)
        assert keeper.flushed(where, sent.flush_id)
    return len(flushes)


def test_a_corrupt_key_under_live_changes_is_rebuilt_and_they_reach_the_changelog(
    tmp_path: Path,
) -> None:
    """The keys changed since the last flush are live only: a rebuild keeps them, and sends them."""
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(str(tmp_path), interval_s=1.0), lambda: log)
    keeper.apply(batch(EVENTS[:3]))  # a, b, a
    assert deliver_all(keeper, log) == 1
    live = keeper.apply(batch(EVENTS[3:4]))  # a: changed, live, not in the store yet
    part = keeper._partitions[(TOPIC, 0)]
    part.state._forget_cache()  # "b" is read from the store...
    key_b = next(k for k, _ in log.partitions[0] if k.endswith(b"b") and k[:1] == b"\x02")
    part.store.inner.write([(key_b, b"\xc1garbage")])  # ...which holds it corrupt
    later = keeper.apply(batch(EVENTS[4:5]))  # b: rebuilt from the changelog, applied once
    assert deliver_all(keeper, log) == 1
    expected = offline(EVENTS)
    assert {**served(live), **served(later)} == {o: expected[o] for o in (3, 4)}
    # What the changelog holds now restores a's change at 3 (made live before the rebuild).
    keeper.close()
    elsewhere = StateKeeper(make_settings(interval_s=1.0), lambda: log)
    rest = elsewhere.apply(batch(EVENTS[5:]))
    assert served(rest) == {o: v for o, v in expected.items() if o >= 5}


def test_live_changes_past_their_budget_are_flushed_before_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_module, "DIRTY_ENTRIES", 4)
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(interval_s=60.0), lambda: log, clock=lambda: 0.0)
    keeper.apply(batch(EVENTS[:2]))  # a, b: counted as 4 entries at most (held, and records)
    assert keeper.flushes() == []
    keeper.apply(batch(EVENTS[2:3]))  # 5: past the budget
    assert deliver_all(keeper, log, force=False) == 1
    assert keeper.flushes() == []  # the flush took them: nothing live


def test_more_live_keys_than_their_budget_are_flushed_before_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_module, "DIRTY_KEYS", 2)
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(interval_s=60.0), lambda: log, clock=lambda: 0.0)
    keeper.apply(batch(EVENTS[:5]))  # keys a and b: at the budget, not past it
    assert keeper.flushes() == []
    keeper.apply(batch(EVENTS[5:8]))  # c: a third key
    assert deliver_all(keeper, log, force=False) == 1
    assert keeper.flushes() == []


def test_a_revoke_drops_the_live_changes_and_the_store_is_as_the_last_flush_left_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = MemoryChangelog()
    settings = make_settings(str(tmp_path), interval_s=1.0)
    keeper = StateKeeper(settings, lambda: log)
    keeper.apply(batch(EVENTS[:3]))
    assert deliver_all(keeper, log) == 1
    keeper.apply(batch(EVENTS[3:5]))  # live only; committed only below 3 (the durable bound)
    assert keeper.durable_bounds() == {(TOPIC, 0): 3}
    keeper.revoke([(TOPIC, 0)])
    caplog.set_level("INFO", logger="streamer.topology.state")
    again = StateKeeper(settings, lambda: log)
    out = again.apply(batch(EVENTS[3:]))  # from the committed offset: applied once
    assert served(out) == {o: v for o, v in offline(EVENTS).items() if o >= 3}
    assert "using the local store" in caplog.text  # it is where the changelog is: no rebuild
    again.close()


def test_a_rewind_within_the_interval_is_served_what_it_was_from_memory() -> None:
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(interval_s=1.0), lambda: log, clock=lambda: 0.0)
    first = keeper.apply(batch(EVENTS[:4]))
    replay = keeper.apply(batch(EVENTS[:4]))  # not flushed yet: the runs are in memory
    assert served(replay) == served(first)
    keeper.committed({(TOPIC, 0): 4})
    forgotten = keeper.apply(batch(EVENTS[:1]))
    assert [r.reason for r in forgotten.state_rejections] == ["state_replayed"]
    assert deliver_all(keeper, log) == 1
    assert not [k for k, v in log.partitions[0] if k.startswith(SERVED_PREFIX) and v is not None]
    rest = keeper.apply(batch(EVENTS[4:]))
    assert served(rest) == {o: v for o, v in offline(EVENTS).items() if o >= 4}


def test_an_idle_poll_sends_changes_gathered_a_tenth_of_the_interval_and_no_younger() -> None:
    now = [0.0]
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(interval_s=1.0), lambda: log, clock=lambda: now[0])
    keeper.apply(batch(EVENTS[:3]))
    now[0] = 0.09
    assert keeper.flushes(idle=True) == []  # younger than a tenth of the interval
    assert keeper.flushes() == []
    now[0] = 0.1
    assert keeper.flushes() == []  # busy: the interval holds
    ((_, sent),) = keeper.flushes(idle=True)
    assert sent.covers_from == 0
    assert decode_meta(sent.changes[-1][1] or b"").last_offset == 2


@pytest.mark.parametrize("engine", ["native", "python"])
def test_a_batch_block_holds_each_served_row_in_place_and_nan_only_where_none_is_served(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One float64 block a batch: a row per record, in the batch's order.

    A record the state rejects (late, missing_key) or that is not JSON has a
    row of NaN, is in ``absent`` and, rejected, in ``state_rejections`` at its
    own index; every other row holds what offline serves that record, a replay
    what it was served the first time.
    """
    if engine == "native" and windows.COMPILED is None:
        pytest.skip("the compiled loop is not built")
    monkeypatch.setattr(windows, "ENGINE", engine)
    events = [
        event(0, "a", 5_000_000, 1.5),
        event(1, "b", 5_000_000, 2.0),
        event(2, "a", 1_000, 4.0),  # 5,000 s before a's newest: late
        (3, b'{"ts": 5000001, "amount": 1.0}'),  # no card: missing_key
        (4, b"[1, 2]"),  # not a JSON object
        event(5, "a", 5_000_002, 0.25),
    ]
    log = MemoryChangelog()
    keeper = StateKeeper(make_settings(), lambda: log)
    first = run(keeper, log, events)
    expected = offline(events)
    assert [(r.index, r.reason) for r in first.state_rejections] == [
        (2, "late"),
        (3, "missing_key"),
    ]
    assert first.state_values is not None
    assert first.state_values.absent == {2, 3, 4}
    matrix = first.state_values.matrix
    assert matrix.shape == (6, 2)
    for row in range(6):
        if row in (2, 3, 4):
            assert np.isnan(matrix[row]).all()
            assert expected[row] is None
        else:
            assert not np.isnan(matrix[row]).any()
            assert tuple(matrix[row].tolist()) == expected[row]
    assert first.state_values.row(5) == (2.0, 1.75)
    # A rewind: offsets 3-5 again (replays, from the served runs), then a new record.
    again = keeper.apply(batch([*events[3:], event(6, "b", 5_000_003, 1.0)]))
    assert again.state_values is not None
    assert [(r.index, r.reason) for r in again.state_rejections] == [(0, "missing_key")]
    assert again.state_values.absent == {0, 1}
    assert again.state_values.rows()[2:] == [(2.0, 1.75), (2.0, 3.0)]
    assert again.state_values.tail(1).rows() == again.state_values.rows()[1:]
    assert again.state_values.tail(2).absent == frozenset()

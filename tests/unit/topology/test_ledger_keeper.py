"""LedgerKeeper: record and join in one write with a meta record, flushes, replays, restore."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pytest

from streamer.core.labels import ledger as ledger_module
from streamer.core.labels.join import coordinates_identity
from streamer.core.labels.ledger import (
    COUNTS_KEY,
    PredictionBatch,
    PredictionLedger,
    decode_prediction,
    entry_key,
    joins_key,
)
from streamer.core.labels.ledger_log import batch_key, decode_batch
from streamer.core.labels.live import LEDGER_FINGERPRINT, MARKS_KEY, decode_marks
from streamer.core.state.changelog import last_meta
from streamer.core.state.codec import META_KEY, Meta
from streamer.core.state.restore import local_meta
from streamer.core.state.store import RocksStore
from streamer.messages import LedgerHeld, SourceBatch
from streamer.settings import Settings, build_settings
from streamer.topology.labels import LedgerFlush, LedgerKeeper, ledger_topic
from tests.unit.topology.test_state_keeper import MemoryChangelog

TOPIC = "tx"
LABELS = "tx.labels"
SCORED_AT = "2026-12-06T06:00:00.000Z"
SCORED_US = 1_796_536_800_000_000


def make_settings(state_dir: str = "", **labels: object) -> Settings:
    return build_settings(
        {
            "kafka": {"input_topic": TOPIC, "output_topic": "out", "group_id": "g/1"},
            "state": {"dir": state_dir},
            "labels": {"topic": LABELS, "time_field": "at", **labels},
            "challenger": [{"name": "cand", "output_topic": "out.cand"}],
        },
        environ={},
    )


def batch(topic: str, partition: int, offsets: list[int], values: list[bytes]) -> SourceBatch:
    return SourceBatch(
        batch_id=0,
        topic=topic,
        partition=partition,
        seq=0,
        offsets=offsets,
        keys=[b"k%d" % o for o in offsets],
        values=values,
        timestamps_ms=[0] * len(offsets),
        dispatched_at=0.0,
    )


def records(partition: int, offsets: list[int]) -> SourceBatch:
    return batch(TOPIC, partition, offsets, [b"{}"] * len(offsets))


def labels(partition: int, offsets: list[int], docs: list[object]) -> SourceBatch:
    return batch(LABELS, partition, offsets, [orjson.dumps(doc) for doc in docs])


def label(partition: int, offset: int, value: int) -> dict[str, object]:
    at = SCORED_US // 1000 + 60_000
    return {"topic": TOPIC, "partition": partition, "offset": offset, "label": value, "at": at}


def send(changelog: MemoryChangelog, partition: int, changes: tuple) -> None:  # type: ignore[type-arg]
    changelog.append(partition, changes)


def delivered(keeper: LedgerKeeper, partition: int = 0) -> LedgerFlush:
    """The one flush that the partition's last steps made, acknowledged."""
    (flush,) = keeper.flushes(partition)
    assert keeper.flushed(partition, flush.flush_id)
    return flush


def test_the_ledger_changelog_topic_is_derived_from_the_group_and_the_input() -> None:
    assert ledger_topic(make_settings()) == "g_1.tx.ledger-changelog"
    assert ledger_topic(make_settings(ledger_topic="mine")) == "mine"


def test_record_then_join_each_end_with_a_meta_record_and_join_once() -> None:
    changelog = MemoryChangelog()
    keeper = LedgerKeeper(make_settings(), lambda: changelog)
    keeper.record(records(1, [10, 11, 12]), [0, 2], [0.25, 0.75], ("m", "1"), SCORED_AT)
    delivery = delivered(keeper, 1)
    assert delivery.changes[-1][0] == META_KEY
    assert delivery.changes[-2][0] == MARKS_KEY
    assert delivery.report.counts.outputs == 2
    assert delivery.report.held == 2
    assert delivery.report.joined == ()
    send(changelog, 1, delivery.changes)
    # The restore of the partition (empty) told the metrics a reset, once.
    resets = keeper.take_resets()
    assert [(r.partition, r.reset, r.joined) for r in resets] == [(1, True, ())]
    assert keeper.take_resets() == []

    rejections = keeper.join(
        labels(1, [0, 1, 2, 3], [label(1, 10, 1), label(1, 11, 0), "x", label(0, 12, 1)])
    )
    assert [(r.index, r.reason) for r in rejections] == [(2, "malformed"), (3, "misrouted")]
    joined = delivered(keeper, 1)
    assert [j.identity for j in joined.report.joined] == [coordinates_identity(TOPIC, 1, 10)]
    assert joined.report.joined[0].label.value == 1.0
    assert joined.report.counts.joined == 1
    assert joined.report.counts.labels == {"unmatched": 1}  # offset 11 was never scored
    meta = last_meta([[(0, k, v) for k, v in joined.changes]])
    assert meta is not None
    assert (meta.fingerprint, meta.topic, meta.partition, meta.last_offset) == (
        LEDGER_FINGERPRINT,
        TOPIC,
        1,
        2,
    )
    send(changelog, 1, joined.changes)

    # The same labels again (a rewind): below the last joined offset, they join nothing.
    keeper.join(labels(1, [0, 1, 2, 3], [label(1, 10, 1), label(1, 11, 0), "x", {}]))
    again = delivered(keeper, 1)
    assert again.report.joined == ()
    assert again.report.counts.joined == 1
    assert again.report.counts.labels == {"unmatched": 1}
    # A later label for a labelled record is a duplicate.
    keeper.join(labels(1, [4], [label(1, 10, 0)]))
    later = delivered(keeper, 1)
    assert later.report.counts.labels == {"unmatched": 1, "duplicate": 1}


def test_a_replayed_batch_records_nothing_and_sends_its_current_values_again() -> None:
    keeper = LedgerKeeper(make_settings(), None)
    keeper.record(records(0, [5, 6]), [0, 1], [0.5, 0.5], ("m", "1"), SCORED_AT)
    record = next(c for c in delivered(keeper).changes if c[0][:2] == b"Lb")
    keeper.join(labels(0, [0], [label(0, 6, 1)]))
    delivered(keeper)
    labelled_key = entry_key(coordinates_identity(TOPIC, 0, 6))
    # Offsets 6 and 7 again (a rewind cut another batch): 6 is recorded, 7 is new.
    keeper.record(records(0, [6, 7]), [0, 1], [0.9, 0.25], ("m", "1"), SCORED_AT)
    again = delivered(keeper)
    assert again.report.counts.outputs == 3
    assert again.report.counts.duplicate_outputs == 0
    keys = [key for key, _ in again.changes]
    # The new batch record (offset 7), then the first batch's record as it was and the
    # labelled entry of offset 6 (sent again), the counts, the marks, the meta record.
    assert keys == [batch_key(7), COUNTS_KEY, record[0], labelled_key, MARKS_KEY, META_KEY]
    assert dict(again.changes)[record[0]] == record[1]
    assert decode_batch(dict(again.changes)[batch_key(7)]).scores_list() == [0.25]
    assert decode_prediction(dict(again.changes)[labelled_key]).champion.score == 0.5  # type: ignore[union-attr]


def test_a_challenger_goes_with_the_next_flush_and_a_labelled_record_changes() -> None:
    keeper = LedgerKeeper(make_settings(), None)
    keeper.record(records(0, [1]), [0], [0.5], ("m", "1"), SCORED_AT)
    (in_flight,) = keeper.flushes(0)
    keeper.join(labels(0, [0], [label(0, 1, 1)]))
    keeper.record_challenger(records(0, [1]), [0], [0.75], ("cand", "2"), SCORED_AT)
    keeper.record_challenger(records(3, [1]), [0], [0.75], ("cand", "2"), SCORED_AT)  # not held
    keeper.record(records(0, [2]), [0], [0.1], ("m", "1"), SCORED_AT)
    assert keeper.flushes(0) == []  # one flush in flight: the steps since wait for it
    assert keeper.flushed(0, in_flight.flush_id)
    assert not keeper.flushed(0, in_flight.flush_id)  # acknowledged once
    delivery = delivered(keeper)
    # The join, then the challenger's change of the labelled record (the metrics replace it).
    joined, changed = delivery.report.joined
    assert joined.identity == changed.identity == coordinates_identity(TOPIC, 0, 1)
    assert joined.prediction.challengers == ()
    assert [c.score for c in changed.prediction.challengers] == [0.75]
    assert delivery.report.counts.outputs == 3
    metas = [change for change in delivery.changes if change[0] == META_KEY]
    assert len(metas) == 1  # only the last meta record of the steps goes
    assert delivery.changes[-1][0] == META_KEY
    assert keeper.partitions == [0]


def test_the_durable_bounds_move_as_flushes_are_acknowledged() -> None:
    keeper = LedgerKeeper(make_settings(), None)
    keeper.record(records(0, [10, 11]), [0, 1], [0.5, 0.5], ("m", "1"), SCORED_AT)
    assert keeper.moved() == [LedgerHeld(0, 10, None)]
    assert keeper.moved() == []  # told once
    (first,) = keeper.flushes()
    keeper.join(labels(0, [4, 5], [label(0, 10, 1), label(0, 11, 0)]))
    keeper.record(records(0, [12]), [0], [0.5], ("m", "1"), SCORED_AT)
    assert keeper.moved(0) == [LedgerHeld(0, 10, 4)]  # gathered: the labels from 4
    assert keeper.flushed(0, first.flush_id)
    assert keeper.moved() == [LedgerHeld(0, 12, 4)]
    (second,) = keeper.flushes()
    assert keeper.moved() == []  # in flight: the same bounds
    assert [j.identity for j in second.report.joined] == [
        coordinates_identity(TOPIC, 0, 10),
        coordinates_identity(TOPIC, 0, 11),
    ]
    assert keeper.flushed(0, second.flush_id)
    assert keeper.moved() == [LedgerHeld(0, None, None)]
    assert keeper.revoke([0]) == [0]
    assert not keeper.flushed(0, second.flush_id)
    assert keeper.moved(0) == []


def test_past_the_byte_budget_a_flush_leaves_with_another_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streamer.topology.labels.LEDGER_FLUSH_BYTES", 2_000)
    keeper = LedgerKeeper(make_settings(), None)
    keeper.record(records(0, [1]), [0], [0.5], ("m", "1"), SCORED_AT)
    (first,) = keeper.flushes()
    keeper.record(records(0, [2, 3]), [0, 1], [0.5, 0.5], ("m", "1"), SCORED_AT)
    assert keeper.flushes() == []
    offsets = list(range(4, 400))  # 396 consecutive predictions: 8 bytes each in their batch
    keeper.record(records(0, offsets), list(range(396)), [0.5] * 396, ("m", "1"), SCORED_AT)
    (second,) = keeper.flushes()
    assert [key for key, _ in second.changes][:2] == [batch_key(3), COUNTS_KEY]
    assert batch_key(399) in dict(second.changes)
    assert keeper.moved() == [LedgerHeld(0, 1, None)]
    assert keeper.flushed(0, second.flush_id)  # acknowledged out of order: the first holds
    assert keeper.moved() == []
    assert keeper.flushed(0, first.flush_id)
    assert keeper.moved() == [LedgerHeld(0, None, None)]


@pytest.mark.parametrize("stored", ["memory", "rocksdb"])
def test_a_restore_rebuilds_up_to_the_last_meta_and_a_new_keeper_goes_on(
    tmp_path: Path, stored: str
) -> None:
    changelog = MemoryChangelog()
    settings = make_settings(str(tmp_path) if stored == "rocksdb" else "")
    keeper = LedgerKeeper(settings, lambda: changelog)
    keeper.record(records(0, [1, 2]), [0, 1], [0.5, 0.25], ("m", "1"), SCORED_AT)
    send(changelog, 0, delivered(keeper).changes)
    keeper.join(labels(0, [0], [label(0, 1, 1)]))
    send(changelog, 0, delivered(keeper).changes)
    # A join whose flush never came back: in the local store, not in the changelog.
    keeper.join(labels(0, [1], [label(0, 2, 0)]))
    (unsent,) = keeper.flushes()
    send(changelog, 0, unsent.changes[:-1])  # cut short: no meta record
    keeper.close()

    restarted = LedgerKeeper(settings, lambda: changelog)
    restarted.join(labels(0, [1], [label(0, 2, 0)]))  # the label comes again
    delivery = delivered(restarted)
    assert [j.identity for j in delivery.report.joined] == [coordinates_identity(TOPIC, 0, 2)]
    assert delivery.report.counts.joined == 2
    assert delivery.report.held == 2
    (reset,) = restarted.take_resets()
    assert reset.reset
    assert [j.identity for j in reset.joined] == [coordinates_identity(TOPIC, 0, 1)]
    assert decode_marks(dict(delivery.changes)[MARKS_KEY]).label_offset == 1
    assert restarted.revoke([0, 5]) == [0]
    assert restarted.partitions == []


def test_expiry_runs_on_the_partition_clock_and_rides_with_the_next_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streamer.topology.labels.EXPIRE_EVERY_S", 0.0)
    keeper = LedgerKeeper(make_settings(horizon_s=60.0), None)
    keeper.record(records(0, [1, 2]), [0, 1], [0.5, 0.5], ("m", "1"), SCORED_AT)
    keeper.join(labels(0, [0], [label(0, 1, 1)]))  # its time, a minute later, is the clock
    # Two minutes after the predictions: the horizon (60 s) passed for both.
    later = "2026-12-06T06:02:00.000Z"
    delivered(keeper)
    keeper.record(records(0, [3]), [0], [0.5], ("m", "1"), later)
    assert delivered(keeper).report.counts.expired_unlabelled == 0  # the clock was 06:01 still
    keeper.record(records(0, [4]), [0], [0.5], ("m", "1"), later)
    delivery = delivered(keeper)
    counts = delivery.report.counts
    assert (counts.expired_unlabelled, counts.expired_labelled) == (1, 1)
    assert delivery.report.held == 2  # offsets 3 and 4
    deleted = [key for key, value in delivery.changes if value is None]
    # The labelled entry went in its label batch's joins record: the entry's tombstone
    # (a changelog of the format before sent it on its own) and the joins record's; the
    # unlabelled one goes with its batch record's tombstone.
    assert deleted == [
        entry_key(coordinates_identity(TOPIC, 0, 1)),
        joins_key(2, 0),
        batch_key(2),
    ]


def compacted(changes: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """A compacted topic: the last record of each key, in the order of those records."""
    last = {key: at for at, (key, _value) in enumerate(changes)}
    return [change for at, change in enumerate(changes) if last[change[0]] == at]


@pytest.mark.parametrize("compact", [False, True])
def test_the_store_rebuilt_from_the_changelog_equals_the_local_one(
    monkeypatch: pytest.MonkeyPatch, compact: bool
) -> None:
    """Batch records, labels, a challenger, a replay and an expiry: the indexes come back."""
    monkeypatch.setattr("streamer.topology.labels.EXPIRE_EVERY_S", 0.0)
    changelog = MemoryChangelog()
    settings = make_settings(horizon_s=90.0)
    keeper = LedgerKeeper(settings, lambda: changelog)
    minute = "2026-12-06T06:01:00.000Z"

    def after(_step: object) -> LedgerFlush:
        return delivered(keeper)

    steps = [
        after(
            keeper.record(
                records(0, [1, 2, 3]), [0, 1, 2], [0.5, 0.25, 0.75], ("m", "1"), SCORED_AT
            )
        ),
        after(keeper.join(labels(0, [0, 1], [label(0, 2, 1), label(0, 9, 0)]))),
    ]
    keeper.record_challenger(records(0, [1, 3]), [0, 1], [0.125, 0.625], ("cand", "2"), SCORED_AT)
    steps += [
        after(keeper.record(records(0, [4, 5]), [0, 1], [0.375, 0.875], ("m", "1"), minute)),
        after(keeper.record(records(0, [3, 4, 5, 6]), [0, 1, 2, 3], [0.0] * 4, ("m", "1"), minute)),
        # Two minutes on: the first batch (06:00) passed the 90 s horizon.
        after(keeper.join(labels(0, [2], [{**label(0, 5, 0), "at": SCORED_US // 1000 + 120_000}]))),
        after(keeper.record(records(0, [7]), [0], [0.5], ("m", "1"), minute)),
    ]
    for step in steps:
        send(changelog, 0, step.changes)
    counts = steps[-1].report.counts
    assert (counts.outputs, counts.expired_unlabelled, counts.expired_labelled) == (9, 2, 1)
    local = dict(keeper._partitions[0].deferred.inner.data)  # type: ignore[attr-defined]
    # The first batch record expired; the replay's one new offset (6) made a record of its own.
    assert sorted(k for k in local if k[:2] == b"Lb") == [batch_key(5), batch_key(6), batch_key(7)]
    assert sum(k[:2] == b"Lx" for k in local) == 3
    keeper.close()
    if compact:
        changelog.partitions[0] = compacted(changelog.partitions[0])

    restored = LedgerKeeper(settings, lambda: changelog)
    restored.take_resets()
    restored.join(labels(0, [3], [label(0, 4, 1)]))
    delivery = delivered(restored)
    assert delivery.report.held == 4  # offsets 4, 5, 6, 7
    assert [j.identity for j in delivery.report.joined] == [coordinates_identity(TOPIC, 0, 4)]
    rebuilt = restored._partitions[0].deferred.inner.data  # type: ignore[attr-defined]
    # The same store as the one that wrote the changelog, up to this join's own changes.
    for key in set(local) | set(rebuilt):
        if key[:2] not in (b"Lm", b"Lo", META_KEY[:2]) and key not in (
            entry_key(coordinates_identity(TOPIC, 0, 4)),
            joins_key(5, 3),
        ):
            assert rebuilt.get(key) == local.get(key), key
    if not compact:

        def entry(offset: int) -> bytes:
            return entry_key(coordinates_identity(TOPIC, 0, offset))

        sent = [
            (k, v is None) for k, v in changelog.partitions[0] if k[:2] in (b"Lb", b"Lp", b"Lj")
        ]
        assert sent == [
            (batch_key(3), False),  # the first batch's three predictions
            (joins_key(3, 1), False),  # its label, in the label batch's joins record
            (entry(1), False),  # the challenger's scores
            (entry(3), False),
            (batch_key(5), False),
            (batch_key(6), False),  # the replay: offset 6 is new,
            (batch_key(3), False),  # offsets 3, 4, 5: their records are sent again
            (batch_key(5), False),
            (entry(3), False),
            (joins_key(5, 2), False),  # the label of offset 5 (its time moves the clock on)
            (entry(1), True),  # expired: the entries not plain, the joins records, the batch
            (entry(2), True),
            (entry(3), True),
            (joins_key(3, 1), True),
            (batch_key(3), True),
            (batch_key(7), False),
        ]


@pytest.mark.parametrize("compact", [False, True])
def test_by_record_id_the_store_rebuilt_from_the_changelog_equals_the_local_one(
    monkeypatch: pytest.MonkeyPatch, compact: bool
) -> None:
    """With record ids, each batch's plain entries come back from its record, ids repeated."""
    monkeypatch.setattr("streamer.topology.labels.EXPIRE_EVERY_S", 0.0)
    changelog = MemoryChangelog()
    settings = make_settings(horizon_s=90.0, id_field="id")
    keeper = LedgerKeeper(settings, lambda: changelog)
    minute = "2026-12-06T06:01:00.000Z"

    def after(_step: object) -> LedgerFlush:
        return delivered(keeper)

    def scored(offsets: list[int], ids: list[str]) -> SourceBatch:
        return batch(TOPIC, 0, offsets, [orjson.dumps({"id": i}) for i in ids])

    def id_label(record_id: str, value: int, at_ms: int) -> dict[str, object]:
        return {"id": record_id, "label": value, "at": at_ms}

    at = SCORED_US // 1000
    steps = [
        after(
            keeper.record(
                scored([1, 2, 3], ["a", "b", "a"]),
                [0, 1, 2],
                [0.5, 0.25, 0.75],
                ("m", "1"),
                SCORED_AT,
            )
        ),
        after(keeper.join(labels(0, [0], [id_label("b", 1, at + 60_000)]))),
    ]
    keeper.record_challenger(scored([1], ["a"]), [0], [0.125], ("cand", "2"), SCORED_AT)
    steps += [
        after(
            keeper.record(scored([4, 5], ["c", "b"]), [0, 1], [0.375, 0.875], ("m", "1"), minute)
        ),
        after(keeper.join(labels(0, [1], [id_label("c", 0, at + 120_000)]))),  # first expires
        after(keeper.record(scored([6], ["a"]), [0], [0.5], ("m", "1"), minute)),  # "a" again, anew
    ]
    for step in steps:
        send(changelog, 0, step.changes)
    counts = steps[-1].report.counts
    # Outputs: a, b; a's challenger; c; a anew. Duplicates: a in the first batch, b in the second.
    assert (counts.outputs, counts.duplicate_outputs) == (5, 2)
    assert (counts.expired_unlabelled, counts.expired_labelled) == (1, 1)
    assert steps[-1].report.held == 2  # c (labelled) and the new a
    sent = [key for key, _ in changelog.partitions[0] if key[:2] == b"Lp"]
    # Only entries that are not plain went on their own: b's label, a's challenger, c's label,
    # and the tombstones of the first two when their batch expired.
    assert sent == [
        entry_key(b"ib"),
        entry_key(b"ia"),
        entry_key(b"ic"),
        entry_key(b"ia"),
        entry_key(b"ib"),
    ]
    local = dict(keeper._partitions[0].deferred.inner.data)  # type: ignore[attr-defined]
    keeper.close()
    if compact:
        changelog.partitions[0] = compacted(changelog.partitions[0])

    restored = LedgerKeeper(settings, lambda: changelog)
    restored.join(labels(0, [2], [id_label("a", 1, at + 130_000)]))
    report = delivered(restored).report
    assert [j.identity for j in report.joined] == [b"ia"]  # the new prediction of "a"
    assert report.held == 2
    rebuilt = restored._partitions[0].deferred.inner.data  # type: ignore[attr-defined]
    for key in set(local) | set(rebuilt):
        if key[:2] not in (b"Lm", b"Lo", META_KEY[:2]) and key != entry_key(b"ia"):
            assert rebuilt.get(key) == local.get(key), key


def test_a_batch_without_challengers_is_recorded_in_columns_as_with_them() -> None:
    """No challenger: the rows and scores go as numpy columns; the changes are the same."""
    alone = build_settings(
        {
            "kafka": {"input_topic": TOPIC, "output_topic": "out", "group_id": "g/1"},
            "labels": {"topic": LABELS, "time_field": "at"},
        },
        environ={},
    )
    columns, rows = LedgerKeeper(alone, None), LedgerKeeper(make_settings(), None)
    steps = [  # a score that is not a number is not recorded; offset 7 comes again
        (records(0, [5, 6, 7]), [0, 1, 2], [0.5, float("nan"), 0.25]),
        (records(0, [7, 8]), [0, 1], [0.9, 0.125]),
    ]
    for source, scored, scores in steps:
        columns.record(
            source, np.array(scored), np.array(scores, dtype=np.float32), ("m", "1"), SCORED_AT
        )
        rows.record(source, scored, np.float32(scores).tolist(), ("m", "1"), SCORED_AT)
        assert delivered(columns).changes == delivered(rows).changes
    found = []
    for keeper in (columns, rows):
        keeper.join(labels(0, [0, 1, 2, 3], [label(0, offset, 1) for offset in (5, 6, 7, 8)]))
        found.append(delivered(keeper).report)
    assert found[0] == found[1]
    assert [j.prediction.champion.score for j in found[0].joined] == [0.5, 0.25, 0.125]  # type: ignore[union-attr]
    assert (found[0].counts.outputs, found[0].counts.labels) == (3, {"unmatched": 1})


@pytest.mark.parametrize("seed", range(40))
def test_random_batches_are_recorded_in_columns_as_with_challengers(seed: int) -> None:
    """Columns (no challenger) == rows (with): every delivery, the joins, the ledger after.

    Random batches: whole and consecutive (the common batch's way), with gaps, with rows
    not scored, scores that are not numbers, float32 scores, replays and overlaps.
    """
    rng = np.random.default_rng(seed)
    alone = build_settings(
        {
            "kafka": {"input_topic": TOPIC, "output_topic": "out", "group_id": "g/1"},
            "labels": {"topic": LABELS, "time_field": "at"},
        },
        environ={},
    )
    columns, rows = LedgerKeeper(alone, None), LedgerKeeper(make_settings(), None)
    next_offset, recorded, whole = 0, [], 0
    for _step in range(12):
        size = int(rng.integers(1, 9))
        start = next_offset - int(rng.integers(0, 4)) if rng.random() < 0.2 else next_offset
        gaps = rng.integers(1, 3, size=size) if rng.random() < 0.3 else np.ones(size, np.int64)
        offsets = (max(start, 0) + np.cumsum(gaps) - 1).tolist()
        next_offset = max(next_offset, offsets[-1] + 1)
        scored = sorted(
            rng.choice(size, size=int(rng.integers(1, size + 1)), replace=False).tolist()
            if rng.random() < 0.3
            else range(size)
        )
        scores = rng.random(len(scored))
        if rng.random() < 0.2:
            scores[int(rng.integers(len(scored)))] = rng.choice([np.nan, np.inf])
        dtype = np.float32 if rng.random() < 0.3 else np.float64
        source = records(0, offsets)
        whole += len(scored) == size and offsets[-1] - offsets[0] == size - 1
        columns.record(
            source, np.array(scored), np.asarray(scores, dtype=dtype), ("m", "1"), SCORED_AT
        )
        rows.record(source, scored, np.asarray(scores, dtype).tolist(), ("m", "1"), SCORED_AT)
        assert delivered(columns).changes == delivered(rows).changes
        recorded += [offsets[row] for row in scored]
    named = sorted({int(o) for o in rng.choice(recorded, size=min(6, len(recorded)))})
    found = []
    for keeper in (columns, rows):
        keeper.join(labels(0, list(range(len(named))), [label(0, o, 1) for o in named]))
        found.append(delivered(keeper).report)
    assert found[0] == found[1]
    assert whole  # the common batch's way was taken


@pytest.mark.parametrize("compact", [False, True])
def test_a_label_batch_sends_one_joins_record_per_batch_and_restores_from_it(
    compact: bool,
) -> None:
    """Six labels over two scored batches: two changelog records, not six; restored, they stay."""
    changelog = MemoryChangelog()
    settings = make_settings()
    keeper = LedgerKeeper(settings, lambda: changelog)
    keeper.record(records(0, list(range(10))), list(range(10)), [0.5] * 10, ("m", "1"), SCORED_AT)
    keeper.record(
        records(0, list(range(10, 20))), list(range(10)), [0.25] * 10, ("m", "1"), SCORED_AT
    )
    send(changelog, 0, delivered(keeper).changes)
    named = [1, 12, 3, 15, 5, 18]
    keeper.join(labels(0, list(range(6)), [label(0, offset, 1) for offset in named]))
    # A challenger's score after the label: the entry goes on its own, after the joins record.
    keeper.record_challenger(records(0, [3]), [0], [0.75], ("cand", "2"), SCORED_AT)
    flush = delivered(keeper)
    assert len(flush.report.joined) == 7  # the six joins, then offset 3 with its challenger
    sent = [(key[:2], value is None) for key, value in flush.changes if key[:1] == b"L"]
    assert sent == [
        (b"Lj", False),  # the joins of batch 9's rows (1, 3, 5)
        (b"Lj", False),  # of batch 19's (12, 15, 18)
        (b"Lm", False),  # the counts and marks (at their first place in the flush)
        (b"Lo", False),
        (b"Lp", False),  # offset 3 with the challenger's score
    ]
    assert [key for key, _ in flush.changes if key[:2] == b"Lj"] == [
        joins_key(9, 5),
        joins_key(19, 5),
    ]
    send(changelog, 0, flush.changes)
    local = dict(keeper._partitions[0].deferred.inner.data)  # type: ignore[attr-defined]
    keeper.close()
    if compact:
        changelog.partitions[0] = compacted(changelog.partitions[0])

    restored = LedgerKeeper(settings, lambda: changelog)
    restored.prepare([0])
    (reset,) = restored.take_resets()
    assert sorted(j.identity for j in reset.joined) == sorted(
        coordinates_identity(TOPIC, 0, offset) for offset in named
    )
    rebuilt = restored._partitions[0].deferred.inner.data  # type: ignore[attr-defined]
    assert rebuilt == local
    third = decode_prediction(rebuilt[entry_key(coordinates_identity(TOPIC, 0, 3))])
    assert [c.name for c in third.challengers] == ["cand"]
    # The same records labelled again are duplicates; an unlabelled one joins.
    restored.join(labels(0, [6, 7], [label(0, 12, 0), label(0, 13, 0)]))
    again = delivered(restored)
    assert [j.identity for j in again.report.joined] == [coordinates_identity(TOPIC, 0, 13)]
    assert again.report.counts.labels == {"duplicate": 1}


_KILLED_KEEPER = """
import os, signal, sys
import msgspec
import streamer.topology.labels as labels_module
from streamer.topology.labels import LedgerKeeper
from tests.unit.topology.test_ledger_keeper import SCORED_AT, label, labels, make_settings, records

if sys.argv[3] == "wal":  # the contrast: the write-ahead log on
    opened = labels_module.open_rocks_store
    labels_module.open_rocks_store = lambda *a, **kw: opened(*a, **{**kw, "wal": True})
keeper = LedgerKeeper(make_settings(sys.argv[1]), None)
sent = []

def flush():
    (f,) = keeper.flushes(0)
    assert keeper.flushed(0, f.flush_id)
    sent.extend(f.changes)

keeper.record(records(0, [1, 2, 3]), [0, 1, 2], [0.5, 0.25, 0.75], ("m", "1"), SCORED_AT)
flush()
keeper._partitions[0].deferred.inner._db.flush()  # on disk up to here; the join stays in memory
keeper.join(labels(0, [0], [label(0, 2, 1)]))
flush()
with open(sys.argv[2], "wb") as out:
    out.write(msgspec.msgpack.encode(sent))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("wal", [False, True])
def test_a_kill_9_loses_the_stores_unflushed_writes_and_the_changelog_rebuilds_them(
    tmp_path: Path, wal: bool
) -> None:
    """Without the write-ahead log, a kill -9 leaves the store behind: it is rebuilt."""
    state_dir, sent_file = tmp_path / "state", tmp_path / "sent.msgpack"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_KEEPER, str(state_dir), str(sent_file), str(wal and "wal")],
        check=False,
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    changelog = MemoryChangelog()
    sent = msgspec.msgpack.decode(sent_file.read_bytes(), type=list[tuple[bytes, bytes | None]])
    send(changelog, 0, tuple(sent))  # both flushes were acknowledged
    store = RocksStore(state_dir / "g_1" / "ledger-tx-0")
    meta = local_meta(store)
    store.close()
    assert isinstance(meta, Meta)
    # The record's write (1) was on disk; the join's (2) only in the write-ahead log.
    assert meta.last_offset == (2 if wal else 1)

    restarted = LedgerKeeper(make_settings(str(state_dir)), lambda: changelog)
    restarted.prepare([0])
    (reset,) = restarted.take_resets()
    assert [j.identity for j in reset.joined] == [coordinates_identity(TOPIC, 0, 2)]
    restarted.join(labels(0, [1, 2], [label(0, 2, 0), label(0, 3, 0)]))
    delivery = delivered(restarted)
    assert [j.identity for j in delivery.report.joined] == [coordinates_identity(TOPIC, 0, 3)]
    assert delivery.report.counts.labels == {"duplicate": 1}
    assert delivery.report.held == 3
    restarted.close()


def test_a_changelog_of_format_2_restores_and_goes_on_in_the_current_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Format 2 sent an ``Lp`` record per label and no joins records: this version reads it."""
    changelog = MemoryChangelog()
    settings = make_settings()
    with monkeypatch.context() as old:
        old.setattr("streamer.core.labels.live.LEDGER_FINGERPRINT", "prediction-ledger-2")
        join = PredictionLedger.join

        def join_of_format_2(
            self: PredictionLedger, labels: object, offsets: object, _tag: int
        ) -> object:
            """Each labelled entry sent on its own, as format 2 sent it."""
            result = join(self, labels, offsets)  # type: ignore[arg-type]
            self.sent = result[2]
            return result

        join_columns = PredictionLedger.join_columns

        def join_columns_of_format_2(
            self: PredictionLedger, records: object, values: object, times: object, _tag: int
        ) -> object:
            """The same for a batch read in columns."""
            result = join_columns(self, records, values, times)  # type: ignore[arg-type]
            self.sent = result[2]
            return result

        old.setattr(PredictionLedger, "join", join_of_format_2)
        old.setattr(PredictionLedger, "join_columns", join_columns_of_format_2)
        writer = LedgerKeeper(settings, lambda: changelog)
        writer.record(records(0, [1, 2, 3]), [0, 1, 2], [0.5, 0.25, 0.75], ("m", "1"), SCORED_AT)
        writer.join(labels(0, [0, 1], [label(0, 1, 1), label(0, 3, 0)]))
        flush = delivered(writer)
        writer.close()
    assert [key[:2] for key, _ in flush.changes if key[:2] in (b"Lj", b"Lp")] == [b"Lp", b"Lp"]
    send(changelog, 0, flush.changes)
    meta = last_meta([[(0, k, v) for k, v in changelog.partitions[0]]])
    assert meta is not None
    assert meta.fingerprint == "prediction-ledger-2"

    restored = LedgerKeeper(settings, lambda: changelog)
    restored.join(labels(0, [2, 3], [label(0, 1, 0), label(0, 2, 1)]))
    flush = delivered(restored)
    assert [j.identity for j in flush.report.joined] == [coordinates_identity(TOPIC, 0, 2)]
    assert flush.report.counts.labels == {"duplicate": 1}
    send(changelog, 0, flush.changes)
    meta = last_meta([[(0, k, v) for k, v in changelog.partitions[0]]])
    assert meta is not None
    assert meta.fingerprint == LEDGER_FINGERPRINT
    restored.close()

    again = LedgerKeeper(settings, lambda: changelog)
    again.prepare([0])
    (reset,) = again.take_resets()
    assert sorted(j.identity for j in reset.joined) == [
        coordinates_identity(TOPIC, 0, offset) for offset in (1, 2, 3)
    ]


def test_a_changelog_of_format_3_restores_and_goes_on_in_format_4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Format 3 wrote every batch's offsets; format 4 leaves out consecutive ones: both read."""
    changelog = MemoryChangelog()
    settings = make_settings()
    with monkeypatch.context() as old:
        old.setattr("streamer.core.labels.live.LEDGER_FINGERPRINT", "prediction-ledger-3")
        encode = ledger_module.encode_batch

        def encode_of_format_3(batch: PredictionBatch) -> bytes:
            offsets = batch.offsets_array().astype(">i8").tobytes()
            return encode(msgspec.structs.replace(batch, offsets=offsets))

        old.setattr(ledger_module, "encode_batch", encode_of_format_3)
        writer = LedgerKeeper(settings, lambda: changelog)
        writer.record(records(0, [1, 2, 3]), [0, 1, 2], [0.5, 0.25, 0.75], ("m", "1"), SCORED_AT)
        flush = delivered(writer)
        writer.close()
    assert decode_batch(dict(flush.changes)[batch_key(3)]).offsets_array().tolist() == [1, 2, 3]
    assert decode_batch(dict(flush.changes)[batch_key(3)]).offsets != b""
    send(changelog, 0, flush.changes)

    restored = LedgerKeeper(settings, lambda: changelog)
    restored.record(records(0, [4, 5]), [0, 1], [0.125, 0.375], ("m", "1"), SCORED_AT)
    restored.join(labels(0, [0, 1], [label(0, 2, 1), label(0, 5, 0)]))
    flush = delivered(restored)
    assert [(j.identity, j.prediction.champion.score) for j in flush.report.joined] == [
        (coordinates_identity(TOPIC, 0, 2), 0.25),
        (coordinates_identity(TOPIC, 0, 5), 0.375),
    ]
    assert decode_batch(dict(flush.changes)[batch_key(5)]).offsets == b""
    meta = last_meta([[(0, k, v) for k, v in flush.changes]])
    assert meta is not None
    assert meta.fingerprint == LEDGER_FINGERPRINT == "prediction-ledger-4"
    restored.close()

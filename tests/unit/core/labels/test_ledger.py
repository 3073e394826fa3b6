"""The prediction ledger over both stores: joins, duplicates, the horizon, expiry, restarts."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamer.core.labels import ledger as ledger_module
from streamer.core.labels.join import (
    DUPLICATE,
    PAST_HORIZON,
    UNMATCHED,
    Label,
    Output,
    coordinates_identity,
)
from streamer.core.labels.ledger import (
    PREFIX,
    LedgerCounts,
    LedgerLabel,
    ModelScore,
    Prediction,
    PredictionLedger,
    decode_batch,
)
from streamer.core.state.store import MemoryStore, RocksStore, Store

SECOND = 1_000_000
HORIZON = 60 * SECOND


def ident(offset: int) -> bytes:
    return coordinates_identity("events", 0, offset)


def champion(offset: int, score: float, at_s: float, version: str = "1") -> Output:
    return Output(ident(offset), False, "demo", version, score, round(at_s * SECOND))


def challenger(offset: int, score: float, at_s: float, name: str = "candidate") -> Output:
    return Output(ident(offset), True, name, "2", score, round(at_s * SECOND))


def label(offset: int, value: float, at_s: float | None) -> Label:
    return Label(ident(offset), value, None if at_s is None else round(at_s * SECOND))


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened: Store = MemoryStore() if request.param == "memory" else RocksStore(tmp_path / "p0")
    yield opened
    opened.close()


class TestRecord:
    @pytest.mark.parametrize(
        ("new", "by_coordinates"), [(False, False), (True, True), (False, True)]
    )
    def test_a_champion_batch_holds_what_record_holds(
        self, store: Store, new: bool, by_coordinates: bool
    ) -> None:
        where = ("events", 0) if by_coordinates else None
        fast = PredictionLedger(store, HORIZON, where)
        plain = PredictionLedger(MemoryStore(), HORIZON)
        identities = [ident(offset) for offset in (1, 2, 3)]
        scores = [0.25, 0.5, 0.75]
        outputs = [
            champion(offset, score, 10.0) for offset, score in zip((1, 2, 3), scores, strict=True)
        ]
        at = 10 * SECOND
        assert fast.record_batch(identities, [1, 2, 3], scores, ("demo", "1"), at, new=new)[0] == []
        plain.record(outputs)
        assert fast.counts == plain.counts
        assert [fast.get(i) for i in identities] == [plain.get(i) for i in identities]
        assert fast.held == plain.held == 3

    def test_a_champion_batch_with_a_record_scored_already_merges_like_record(
        self, store: Store
    ) -> None:
        fast = PredictionLedger(store, HORIZON, ("events", 0))
        plain = PredictionLedger(MemoryStore(), HORIZON)
        for ledger in (fast, plain):  # a challenger came first, and the champion twice
            ledger.record([challenger(2, 0.4, 9.0)])
        identities = [ident(1), ident(2), ident(2)]
        outputs = [champion(1, 0.5, 10.0), champion(2, 0.9, 10.0), champion(2, 0.1, 10.0)]
        fast.record_batch(identities, [1, 2, 2], [0.5, 0.9, 0.1], ("demo", "1"), 10 * SECOND)
        plain.record(outputs)
        assert [fast.get(ident(o)) for o in (1, 2)] == [plain.get(ident(o)) for o in (1, 2)]
        assert (fast.counts.outputs, fast.counts.duplicate_outputs) == (3, 1)
        assert fast.held == plain.held == 2

    def test_the_champion_and_each_challenger_land_in_one_prediction(self, store: Store) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([challenger(1, 0.4, 10.5), champion(1, 0.9, 10.0)])
        ledger.record([challenger(1, 0.3, 10.7, name="another")])
        assert ledger.get(ident(1)) == Prediction(
            10 * SECOND,
            ModelScore("demo", "1", 0.9, 10 * SECOND),
            (
                ModelScore("another", "2", 0.3, 10_700_000),
                ModelScore("candidate", "2", 0.4, 10_500_000),
            ),
        )
        assert (ledger.counts.outputs, ledger.counts.duplicate_outputs) == (3, 0)

    def test_a_models_second_output_for_a_record_is_a_duplicate_and_the_first_stays(
        self, store: Store
    ) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([champion(1, 0.9, 10.0), champion(1, 0.1, 11.0, version="2")])
        ledger.record([champion(1, 0.5, 12.0), challenger(1, 0.4, 10.5), challenger(1, 0.6, 13.0)])
        prediction = ledger.get(ident(1))
        assert prediction is not None
        assert prediction.champion == ModelScore("demo", "1", 0.9, 10 * SECOND)
        assert [c.score for c in prediction.challengers] == [0.4]
        assert (ledger.counts.outputs, ledger.counts.duplicate_outputs) == (2, 3)


class TestJoin:
    def test_the_first_label_joins_once_and_the_rest_are_counted(self, store: Store) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([champion(1, 0.9, 10.0), champion(2, 0.2, 11.0)])
        joined, reasons, _ = ledger.join(
            [label(1, 1.0, 20.0), label(1, 0.0, 21.0), label(3, 1.0, 22.0), label(2, 0.0, 71.5)]
        )
        assert [(j.identity, j.label) for j in joined] == [
            (ident(1), LedgerLabel(1.0, 20 * SECOND))
        ]
        assert reasons == [DUPLICATE, UNMATCHED, PAST_HORIZON]
        again, reasons, _ = ledger.join([label(1, 1.0, 30.0), label(2, 0.0, 71.0)])
        assert [j.identity for j in again] == [ident(2)]  # 60 s after the prediction: in time
        assert reasons == [DUPLICATE]
        assert ledger.counts == LedgerCounts(
            outputs=2,
            joined=2,
            labels={DUPLICATE: 2, UNMATCHED: 1, PAST_HORIZON: 1},
        )

    def test_a_label_without_a_time_is_never_past_the_horizon(self, store: Store) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([champion(1, 0.9, 10.0)])
        joined, reasons, _ = ledger.join([label(1, 1.0, None)])
        assert [j.label for j in joined] == [LedgerLabel(1.0, None)]
        assert reasons == []

    def test_a_challenger_score_after_the_label_comes_back_joined(self, store: Store) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([champion(1, 0.9, 10.0)])
        ledger.join([label(1, 1.0, 20.0)])
        relabelled, _ = ledger.record([challenger(1, 0.4, 10.5), champion(2, 0.1, 11.0)])
        assert [(j.identity, [c.score for c in j.prediction.challengers]) for j in relabelled] == [
            (ident(1), [0.4])
        ]
        again, _ = ledger.record([challenger(1, 0.9, 10.6)])  # a duplicate changes nothing
        assert again == []


class TestBatchesBySourceCoordinates:
    """A batch recorded in columns, and labels that find its rows without a store read."""

    def test_a_batch_in_columns_writes_what_record_batch_writes(self, store: Store) -> None:
        columns = PredictionLedger(store, HORIZON, ("events", 0))
        listed = PredictionLedger(MemoryStore(), HORIZON, ("events", 0))
        offsets, scores = [4, 7, 9], [0.1, 1 / 3, 0.75]
        written = columns.record_columns(
            np.array(offsets, dtype=np.int64), np.array(scores), ("m", "1"), 10 * SECOND
        )
        assert (
            written
            == listed.record_batch([], offsets, scores, ("m", "1"), 10 * SECOND, new=True)[1]
        )
        assert columns.record_columns(np.empty(0, np.int64), np.empty(0), ("m", "1"), 0) == []
        assert (columns.held, columns.counts) == (listed.held, listed.counts)

    def test_consecutive_offsets_are_not_written_and_read_back_as_a_range(
        self, store: Store
    ) -> None:
        """A batch without gaps stores no offsets (half its bytes); one with a gap, each."""
        ledger = PredictionLedger(store, HORIZON, ("events", 0))
        for offsets in ([4, 5, 6, 7], [9, 11, 12]):
            written = ledger.record_columns(
                np.array(offsets, dtype=np.int64), np.array([0.5] * len(offsets)), ("m", "1"), 0
            )
            batch = decode_batch(written[0][1])  # type: ignore[arg-type]
            assert batch.offsets == (b"" if offsets[0] == 4 else struct.pack(">3q", *offsets))
            assert batch.offsets_array().tolist() == offsets
            assert len(batch) == len(offsets)
        assert [j.identity for j in ledger.join([label(5, 1.0, 1.0), label(11, 0.0, 1.0)])[0]] == [
            ident(5),
            ident(11),
        ]
        listed = PredictionLedger(MemoryStore(), HORIZON, ("events", 0))
        _, written = listed.record_batch([], [20, 21], [0.5, 0.5], ("m", "1"), 0, new=True)
        assert decode_batch(written[0][1]).offsets == b""  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("tracked", "reopened"), [(4096, False), (1, False), (4096, True), (1, True)]
    )
    def test_labels_join_once_whether_a_batchs_rows_are_tracked_or_not(
        self, store: Store, tracked: int, reopened: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """tracked=1: only the newest batch is; reopened: tracked from the store's entries."""
        monkeypatch.setattr(ledger_module, "_TRACKED_BATCHES", tracked)
        ledger = PredictionLedger(store, HORIZON, ("events", 0))
        reference = PredictionLedger(MemoryStore(), HORIZON)
        for offsets, at_s in (([1, 2, 3], 10.0), ([4, 5, 6], 11.0)):
            scores = [offset / 10 for offset in offsets]
            ledger.record_columns(
                np.array(offsets, dtype=np.int64),
                np.array(scores),
                ("demo", "1"),
                round(at_s * SECOND),
            )
            reference.record([champion(o, s, at_s) for o, s in zip(offsets, scores, strict=True)])
        for each in (ledger, reference):  # a challenger's entry for a row of a batch
            each.record([challenger(5, 0.4, 11.5)])
        if reopened:  # with a labelled row in each batch
            for each in (ledger, reference):
                each.join([label(3, 1.0, 12.0), label(6, 0.0, 12.0)])
            ledger = PredictionLedger(store, HORIZON, ("events", 0))
            # Rows 3 and 6 labelled, 5 scored by the challenger: marked (the newest `tracked`).
            marks = [bytearray([0, 0, 1]), bytearray([0, 1, 1])]
            assert list(ledger._entries.values()) == marks[-tracked:]
        labels = [
            label(1, 1.0, 20.0),
            label(1, 0.0, 20.0),
            label(5, 0.0, 21.0),
            label(7, 1.0, 22.0),
        ]
        joined, reasons, _ = ledger.join(labels)
        expected, expected_reasons, _ = reference.join(labels)
        assert joined == expected
        assert [j.identity for j in joined] == [ident(1), ident(5)]
        assert [c.score for c in joined[1].prediction.challengers] == [0.4]
        assert reasons == expected_reasons == [DUPLICATE, UNMATCHED]
        later = [label(1, 1.0, 30.0), label(5, 1.0, 30.0), label(2, 1.0, 30.0)]
        again, reasons, _ = ledger.join(later)
        assert again == reference.join(later)[0]
        assert [j.identity for j in again] == [ident(2)]
        assert reasons == [DUPLICATE, DUPLICATE]
        assert [ledger.get(ident(o)) for o in range(1, 8)] == [
            reference.get(ident(o)) for o in range(1, 7)
        ] + [None]
        assert reference.get(ident(2)) is not None
        assert ledger.counts.joined == (5 if reopened else 3)

    @pytest.mark.parametrize("seed", range(40))
    def test_a_label_batch_joined_in_columns_joins_as_label_by_label(
        self, store: Store, seed: int
    ) -> None:
        """join(labels, offsets) == join(labels): joins, reasons, changes, counts, and after.

        Random batches with gaps or consecutive, a challenger's entries, labels joined
        before, labels past the horizon, without a time, twice in a batch, of another
        topic, of no batch, in offset order or not: the columns take the batches they
        can, the rest go label by label.
        """
        rng = np.random.default_rng(seed)
        columns = PredictionLedger(store, HORIZON, ("events", 0))
        listed = PredictionLedger(MemoryStore(), HORIZON, ("events", 0))
        # Labels given as columns (join_columns): a batch of labels of the topic, all with
        # a time or none; others go as labels, so that the three ledgers stay the same.
        given = PredictionLedger(MemoryStore(), HORIZON, ("events", 0))
        tagged = PredictionLedger(MemoryStore(), HORIZON, ("events", 0))  # label by label, tagged
        offset = 0
        recorded: list[int] = []
        for batch in range(6):
            size = int(rng.integers(1, 9))
            # With gaps (found by a search) or consecutive (a row is its distance from the first).
            steps = rng.integers(1, 3, size=size) if rng.random() < 0.5 else np.ones(size, np.int64)
            offsets = offset + int(rng.integers(0, 3)) + np.cumsum(steps)  # a gap before, or not
            offset = int(offsets[-1])
            recorded += offsets.tolist()
            scores = rng.random(len(offsets))
            for each in (columns, listed, given, tagged):
                each.record_columns(offsets, scores, ("demo", "1"), (10 + batch) * SECOND)
        for scored in rng.integers(1, offset + 1, size=int(rng.integers(0, 3))).tolist():
            for each in (columns, listed, given, tagged):  # a challenger's entry, in a row or a gap
                each.record([challenger(scored, 0.5, 11.0)])

        def named(record: int) -> tuple[Label, int]:
            at = None if rng.random() < 0.2 else round(float(rng.uniform(12, 80)) * SECOND)
            value = float(rng.integers(2))
            if rng.random() < 0.05:  # another topic's record
                return Label(coordinates_identity("other", 0, record), value, at), -1
            return Label(ident(record), value, at), record

        for _round in range(6):
            if rng.random() < 0.5:  # distinct records of the batches: mostly the columns' way
                picked = rng.choice(recorded, size=int(rng.integers(1, 6)), replace=False)
            else:
                picked = rng.integers(0, offset + 3, size=int(rng.integers(1, 4)))
            if rng.random() < 0.5:  # in offset order, as a label batch mostly comes
                picked = np.sort(picked)
            pairs = [named(int(record)) for record in picked]
            labels = [pair[0] for pair in pairs]
            records = [pair[1] for pair in pairs]
            got = columns.join(labels, records)
            expected = listed.join(labels)
            assert got == expected
            assert (columns.counts, columns.held) == (listed.counts, listed.held)
            times = [label.time_us for label in labels]
            if -1 in records or len({at is None for at in times}) > 1:
                given.join(labels, records, 7)
                tagged.join(labels, None, 7)
                continue
            timed = None if times[0] is None else [at for at in times if at is not None]
            values = [label.value for label in labels]
            assert given.join_columns(records, values, timed, 7) == tagged.join(labels, None, 7)
            assert given.sent == tagged.sent
            assert given.join_columns([], [], timed) == listed.join([])
            assert (given.counts, given.held) == (listed.counts, listed.held)
        for each in (columns, given):
            assert [each.get(ident(o)) for o in range(offset + 2)] == [
                listed.get(ident(o)) for o in range(offset + 2)
            ]

    def test_a_label_batch_of_plain_rows_is_joined_in_columns(self, store: Store) -> None:
        """The columns' way is taken (no lookup per label) when every row waits plain."""
        ledger = PredictionLedger(store, HORIZON, ("events", 0))
        ledger.record_columns(
            np.array([1, 2, 3, 5], dtype=np.int64),
            np.array([0.1, 0.2, 0.3, 0.5]),
            ("demo", "1"),
            10 * SECOND,
        )
        labels = [label(5, 1.0, 20.0), label(2, 0.0, 90.0), label(1, 0.0, None)]
        plain = ledger._join_plain(labels, [5, 2, 1])
        assert plain is not None
        joined, reasons, _changes = plain
        assert [(j.identity, j.label, j.prediction.champion) for j in joined] == [
            (ident(5), LedgerLabel(1.0, 20 * SECOND), ModelScore("demo", "1", 0.5, 10 * SECOND)),
            (ident(1), LedgerLabel(0.0, None), ModelScore("demo", "1", 0.1, 10 * SECOND)),
        ]
        assert reasons == [PAST_HORIZON]
        assert ledger.counts.joined == 2
        assert ledger.counts.labels == {PAST_HORIZON: 1}
        # Joined now (an entry each), twice in a batch, or in no batch: label by label.
        assert ledger._join_plain([label(5, 1.0, 20.0)], [5]) is None
        assert ledger._join_plain([label(3, 1.0, 20.0), label(3, 0.0, 20.0)], [3, 3]) is None
        assert ledger._join_plain([label(4, 1.0, 20.0)], [4]) is None
        assert ledger._join_plain([label(9, 1.0, 20.0)], [9]) is None


class TestExpiry:
    def test_predictions_past_the_horizon_go_and_the_unlabelled_are_counted(
        self, store: Store
    ) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([champion(i, 0.5, 10.0 * i) for i in range(1, 6)])  # at 10, 20, ... 50 s
        ledger.join([label(2, 1.0, 25.0)])
        assert ledger.expire(70 * SECOND)[0] == 0  # 10 s + 60 s is not past yet
        unlabelled, changes = ledger.expire(91 * SECOND)  # 10, 20 and 30 s are
        assert unlabelled == 2
        assert len(changes) == 7  # an entry and its time key each, and the counts
        assert [ledger.get(ident(i)) is None for i in range(1, 6)] == [True] * 3 + [False] * 2
        assert ledger.held_by_label() == (2, 0)
        assert (ledger.counts.expired_unlabelled, ledger.counts.expired_labelled) == (2, 1)
        _, reasons, _ = ledger.join([label(1, 1.0, 65.0)])
        assert reasons == [UNMATCHED]  # it expired: its record is unknown now

    def test_a_challenger_that_moves_the_prediction_time_moves_its_expiry(
        self, store: Store
    ) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([champion(1, 0.5, 30.0)])
        ledger.record([challenger(1, 0.5, 5.0)])  # the prediction time is now 5 s
        assert ledger.expire(66 * SECOND)[0] == 1  # 5 s + 60 s is past; 30 s + 60 s would not be
        assert ledger.get(ident(1)) is None
        assert list(store.items_from(PREFIX + b"t")) == []


class TestDurability:
    def test_the_changes_returned_rebuild_the_same_ledger_elsewhere(self, store: Store) -> None:
        """What a changelog would replay: every write, in order, gives the same store."""
        ledger = PredictionLedger(store, HORIZON)
        replica = MemoryStore()
        steps = [
            lambda: ledger.record([champion(1, 0.9, 10.0), champion(2, 0.1, 20.0)])[1],
            lambda: ledger.join([label(1, 1.0, 15.0), label(9, 0.0, 15.0)])[2],
            lambda: ledger.record([challenger(2, 0.3, 21.0)])[1],
            lambda: ledger.expire(75 * SECOND)[1],
        ]
        for step in steps:
            replica.write(step())
        assert dict(replica.items_from(b"")) == dict(store.items_from(b""))
        assert PredictionLedger(replica, HORIZON).counts == ledger.counts

    def test_a_reopened_rocksdb_ledger_keeps_its_predictions_and_counts(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "ledger"
        first = RocksStore(path)
        ledger = PredictionLedger(first, HORIZON)
        ledger.record([champion(1, 0.9, 10.0), champion(2, 0.2, 11.0)])
        ledger.join([label(1, 1.0, 20.0), label(7, 0.0, 20.0)])
        first.close()
        reopened = PredictionLedger(RocksStore(path), HORIZON)
        try:
            assert reopened.counts == LedgerCounts(outputs=2, joined=1, labels={UNMATCHED: 1})
            _, reasons, _ = reopened.join([label(1, 0.0, 21.0), label(2, 0.0, 21.0)])
            assert reasons == [DUPLICATE]  # joined before the restart: never twice
        finally:
            reopened.store.close()

    def test_only_the_ledgers_own_keys_are_written(self, store: Store) -> None:
        ledger = PredictionLedger(store, HORIZON)
        ledger.record([champion(1, 0.9, 10.0)])
        ledger.join([label(1, 1.0, 20.0)])
        assert all(key.startswith(PREFIX) for key, _ in store.items_from(b""))

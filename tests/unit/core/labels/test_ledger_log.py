"""The ledger's changelog: one record per scored batch, the indexes rebuilt from it."""

from __future__ import annotations

import msgspec

from streamer.core.labels.join import Label, coordinates_identity
from streamer.core.labels.ledger import (
    LedgerLabel,
    ModelScore,
    Prediction,
    PredictionBatch,
    PredictionLedger,
    batch_key,
    batch_size,
    batch_time_key,
    decode_batch,
    entry_key,
    time_key,
)
from streamer.core.labels.ledger_log import (
    expiry_sent,
    pack_offsets,
    pack_scores,
    rebuild,
    sent_changes,
)
from streamer.core.state.store import MemoryStore

T = 1_796_536_800_000_000
HORIZON = 60_000_000
WHERE = ("tx", 3)
encode = msgspec.msgpack.Encoder().encode


def plain(time_us: int, score: float) -> bytes:
    return encode(Prediction(time_us, ModelScore("m", "1", score, time_us), ()))


def labelled(time_us: int, score: float) -> bytes:
    label = LedgerLabel(1.0, time_us + 5)
    return encode(Prediction(time_us, ModelScore("m", "1", score, time_us), (), label))


def batch(
    offsets: list[int], scores: list[float], ids: list[bytes] | None = None, time_us: int = T
) -> bytes:
    return encode(
        PredictionBatch(
            offsets[0], time_us, "m", "1", pack_offsets(offsets), pack_scores(scores), ids or []
        )
    )


def coords(offset: int) -> bytes:
    return coordinates_identity(*WHERE, offset)


def test_a_batch_holds_its_offsets_and_scores_in_columns() -> None:
    value = batch([10, 12], [0.25, -1.5])
    assert value == (
        b"\x97\x0a\xcf"
        + T.to_bytes(8, "big")
        + b"\xa1m\xa11"
        + b"\xc4\x10"
        + (10).to_bytes(8, "big")
        + (12).to_bytes(8, "big")
        + b"\xc4\x10"
        + bytes.fromhex("3fd0000000000000bff8000000000000")
        + b"\x90"
    )
    read = decode_batch(value)
    assert (read.first_offset, read.offsets_array().tolist(), read.scores_list()) == (
        10,
        [10, 12],
        [0.25, -1.5],
    )
    assert read.identities(WHERE) == [coords(10), coords(12)]
    assert len(read) == 2
    assert batch_key(12) == b"Lb" + bytes([0, 0, 0, 0, 0, 0, 0, 12])


def test_by_coordinates_a_batch_writes_no_entry_and_the_ledger_reads_it_by_offset() -> None:
    store = MemoryStore()
    ledger = PredictionLedger(store, HORIZON, WHERE)
    identities = [coords(4), coords(7)]
    _, changes = ledger.record_batch(identities, [4, 7], [0.1, 1 / 3], ("m", "1"), T, new=True)
    assert [key for key, _ in changes] == [
        batch_key(7),
        batch_time_key(T, batch_key(7)),
        b"Lm",
    ]
    assert changes[0][1] == batch([4, 7], [0.1, 1 / 3])
    assert ledger.get(coords(7)) == Prediction(T, ModelScore("m", "1", 1 / 3, T), ())
    assert [ledger.get(coords(o)) for o in (3, 5, 8)] == [None, None, None]
    assert ledger.get(coordinates_identity("tx", 2, 4)) is None  # another partition's
    assert ledger.held == 2
    # A second ledger over the same store finds the batch again.
    assert PredictionLedger(store, HORIZON, WHERE).get(coords(4)) == ledger.get(coords(4))


def test_with_record_ids_a_batch_writes_each_plain_entry_without_a_time_key() -> None:
    store = MemoryStore()
    ledger = PredictionLedger(store, HORIZON)
    ids = [b"ia", b"ib"]
    _, changes = ledger.record_batch(ids, [4, 7], [0.5, 0.75], ("m", "1"), T)
    assert changes == [
        (batch_key(7), batch([4, 7], [0.5, 0.75], ids)),
        (batch_time_key(T, batch_key(7)), batch_size(2)),
        (entry_key(b"ia"), plain(T, 0.5)),
        (entry_key(b"ib"), plain(T, 0.75)),
        (b"Lm", encode(ledger.counts)),
    ]
    # Only the batch goes to the changelog, and the counts.
    assert [key for key, _ in sent_changes(changes)] == [batch_key(7), b"Lm"]
    # The same id in a later batch is a duplicate, not recorded again.
    _, again = ledger.record_batch([b"ib", b"ic"], [8, 9], [0.0, 0.25], ("m", "1"), T + 1)
    assert decode_batch(dict(again)[batch_key(9)]).ids == [b"ic"]
    assert (ledger.counts.outputs, ledger.counts.duplicate_outputs, ledger.held) == (3, 1, 3)


def test_only_what_a_batch_does_not_give_is_sent() -> None:
    changes = [
        (batch_time_key(T, batch_key(1)), b""),
        (entry_key(b"a"), plain(T, 0.5)),
        (entry_key(b"b"), labelled(T, 0.5)),
        (time_key(T, b"b"), b""),
        (b"Lm", b"counts"),
    ]
    assert sent_changes(changes) == [
        (entry_key(b"b"), labelled(T, 0.5)),
        (time_key(T, b"b"), b""),
        (b"Lm", b"counts"),
    ]


def test_expiry_counts_a_batch_s_predictions_and_sends_its_tombstone() -> None:
    store = MemoryStore()
    ledger = PredictionLedger(store, HORIZON, WHERE)
    ledger.record_batch([coords(1), coords(2), coords(3)], [1, 2, 3], [0.5] * 3, ("m", "1"), T)
    ledger.join([Label(coords(2), 1.0, T)])
    ledger.record_batch([coords(9)], [9], [0.5], ("m", "1"), T + HORIZON)
    before = dict(store.data)
    unlabelled, changes = ledger.expire(T + HORIZON + 1)
    assert unlabelled == 2
    assert (ledger.counts.expired_unlabelled, ledger.counts.expired_labelled, ledger.held) == (
        2,
        1,
        1,
    )
    assert [key for key, _ in changes] == [
        entry_key(coords(2)),
        batch_time_key(T, batch_key(3)),
        batch_key(3),
        b"Lm",
    ]
    checked = MemoryStore()
    checked.data = before
    # The labelled entry went as a record of its own: its tombstone; the batch's.
    assert [key for key, _ in expiry_sent(checked, changes)] == [
        entry_key(coords(2)),
        batch_key(3),
        b"Lm",
    ]
    assert [ledger.get(coords(o)) for o in (1, 2, 3)] == [None, None, None]
    assert ledger.get(coords(9)) is not None


def test_rebuild_keeps_a_labelled_entry_over_a_batch_sent_again_after_it() -> None:
    store = MemoryStore()
    done = list(
        rebuild(
            store,
            [
                (entry_key(b"a"), labelled(T, 0.5)),
                (batch_key(3), batch([2, 3], [0.5, 0.75], [b"a", b"b"])),
            ],
            WHERE,
            chunk=2,
        )
    )
    assert done == [2, 2]
    assert store.data == {
        entry_key(b"a"): labelled(T, 0.5),
        entry_key(b"b"): plain(T, 0.75),
        batch_key(3): batch([2, 3], [0.5, 0.75], [b"a", b"b"]),
        batch_time_key(T, batch_key(3)): batch_size(2),
    }


def test_a_batch_tombstone_deletes_its_entries_but_not_a_newer_one() -> None:
    later = T + 60_000_000
    store = MemoryStore()
    list(
        rebuild(
            store,
            [
                (batch_key(1), batch([0, 1], [0.5, 0.75], [b"a", b"b"])),
                (entry_key(b"b"), None),  # expired by its own time, recorded again later
                (batch_key(2), batch([2], [0.25], [b"b"], later)),
                (entry_key(b"a"), labelled(T, 0.5)),
                (batch_key(1), None),
            ],
            WHERE,
        )
    )
    assert store.data == {
        batch_key(2): batch([2], [0.25], [b"b"], later),
        batch_time_key(later, batch_key(2)): batch_size(1),
        entry_key(b"b"): plain(later, 0.25),
    }

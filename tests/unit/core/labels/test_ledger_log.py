"""The ledger's changelog: one record per scored batch, the entries and indexes rebuilt from it."""

from __future__ import annotations

import msgspec

from streamer.core.labels.ledger import (
    LedgerLabel,
    ModelScore,
    Prediction,
    PredictionLedger,
    entry_key,
    time_key,
)
from streamer.core.labels.ledger_log import (
    PredictionBatch,
    batch_changes,
    batch_key,
    decode_batch,
    expired_batches,
    pack_scores,
    rebuild,
    sent_changes,
)
from streamer.core.state.store import MemoryStore

T = 1_796_536_800_000_000
encode = msgspec.msgpack.Encoder().encode


def plain(time_us: int, score: float) -> bytes:
    return encode(Prediction(time_us, ModelScore("m", "1", score, time_us), ()))


def batch(first: int, identities: list[bytes], scores: list[float], time_us: int = T) -> bytes:
    return encode(PredictionBatch(first, time_us, "m", "1", identities, pack_scores(scores)))


def test_a_batch_record_holds_its_identities_and_scores_in_columns() -> None:
    value = batch(10, [b"a", b"bb"], [0.25, -1.5])
    assert value == (
        b"\x96\x0a\xcf" + T.to_bytes(8, "big") + b"\xa1m\xa11\x92\xc4\x01a\xc4\x02bb"
        b"\xc4\x10" + bytes.fromhex("3fd0000000000000") + bytes.fromhex("bff8000000000000")
    )
    read = decode_batch(value)
    assert (read.first_offset, read.identities, read.scores_list()) == (10, [b"a", b"bb"], [0.25, -1.5])
    assert batch_key(12) == b"Lb" + bytes([0, 0, 0, 0, 0, 0, 0, 12])


def test_the_ledger_writes_the_entries_a_batch_record_gives_byte_for_byte() -> None:
    store = MemoryStore()
    PredictionLedger(store, 10**9).record_champion([b"a", b"b"], [0.1, 1 / 3], ("m", "1"), T, new=True)
    assert store.data[entry_key(b"a")] == plain(T, 0.1)
    assert store.data[entry_key(b"b")] == plain(T, 1 / 3)
    rebuilt = MemoryStore()
    list(rebuild(rebuilt, [(batch_key(1), batch(0, [b"a", b"b"], [0.1, 1 / 3]))]))
    assert {k: v for k, v in rebuilt.data.items() if k[:2] in (b"Lp", b"Lt")} == {
        k: v for k, v in store.data.items() if k[:2] in (b"Lp", b"Lt")
    }


def test_only_what_a_batch_record_does_not_give_is_sent() -> None:
    labelled = encode(Prediction(T, ModelScore("m", "1", 0.5, T), (), LedgerLabel(1.0, T + 5)))
    changes = [
        (time_key(T, b"a"), b""),
        (entry_key(b"a"), plain(T, 0.5)),
        (entry_key(b"b"), labelled),
        (entry_key(b"c"), None),
        (b"Lm", b"counts"),
    ]
    assert sent_changes(changes) == [(entry_key(b"b"), labelled), (entry_key(b"c"), None), (b"Lm", b"counts")]


def test_rebuild_keeps_a_labelled_entry_over_a_batch_record_sent_again_after_it() -> None:
    labelled = encode(Prediction(T, ModelScore("m", "1", 0.5, T), (), LedgerLabel(1.0, T + 5)))
    store = MemoryStore()
    done = list(
        rebuild(
            store,
            [(entry_key(b"a"), labelled), (batch_key(3), batch(2, [b"a", b"b"], [0.5, 0.75]))],
            chunk=2,
        )
    )
    assert done == [1, 2, 2]  # the first record wrote two keys: a chunk
    assert store.data[entry_key(b"a")] == labelled
    assert store.data[entry_key(b"b")] == plain(T, 0.75)
    assert sorted(k for k in store.data if k[:2] == b"Lt") == [time_key(T, b"a"), time_key(T, b"b")]


def test_a_batch_tombstone_deletes_its_entries_but_not_a_newer_one() -> None:
    later = T + 60_000_000
    store = MemoryStore()
    list(
        rebuild(
            store,
            [
                (batch_key(1), batch(0, [b"a", b"b"], [0.5, 0.75])),
                (entry_key(b"b"), None),  # expired and recorded again, later, by another batch
                (batch_key(2), batch(2, [b"b"], [0.25], later)),
                (entry_key(b"a"), encode(Prediction(T, ModelScore("m", "1", 0.5, T), (), LedgerLabel(0.0, None)))),
                (batch_key(1), None),
            ],
        )
    )
    assert sorted(store.data) == sorted(
        [
            batch_key(2),
            b"Lx" + (later + (1 << 63)).to_bytes(8, "big") + (2).to_bytes(8, "big"),
            entry_key(b"b"),
            time_key(later, b"b"),
        ]
    )
    assert store.data[entry_key(b"b")] == plain(later, 0.25)


def test_expired_batches_are_those_made_before_the_cutoff() -> None:
    store = MemoryStore()
    for last, time_us in ((5, T), (9, T + 10)):
        record, by_time = batch_changes(last, PredictionBatch(0, time_us, "m", "1", [], b""))
        store.write([record, by_time])
    assert [k[:2] + k[-1:] for k, _ in expired_batches(store, T + 10)] == [b"Lx\x05", b"Lb\x05"]
    assert expired_batches(store, T) == []
    assert all(value is None for _, value in expired_batches(store, T + 11))

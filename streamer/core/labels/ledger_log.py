r"""The prediction ledger's changelog: one record per scored batch, the indexes rebuilt locally.

The local store of a partition's ledger holds one entry per prediction
(``Lp`` + identity, :mod:`streamer.core.labels.ledger`) and its time key
(``Lt``), so that a label finds its prediction with one read and expiry is a
range scan. Its changelog need not carry them one by one: a scored batch's
champion predictions share a model, a version and a time, so they go as **one
batch record**, columnar:

- ``Lb`` + the batch's last input offset (8 bytes, big-endian): a
  :class:`PredictionBatch` (the first offset, the time, the model's name and
  version, each recorded identity and its score). Written to the local store
  too (a replayed batch sends it again; its tombstone names what it held);
- ``Lp`` + identity: an entry that is no longer *plain* (a champion's score
  alone, as the batch record gives it): a joined label, a challenger's score.
  A label's join sends one such small record;
- ``Lm`` (the counts), ``Lo`` (the marks) and the meta record, as before.

Local only, rebuilt from those on restore (:func:`rebuild`): the entries of
each batch record (an entry already there stays: the first prediction of a
record is the one kept), the ``Lt`` time key of every entry, and ``Lx`` + time
+ last offset for each batch record, so that expiry finds the batch records
whose time passed the horizon and sends their tombstones. Expiry sends an
``Lp`` tombstone only for an entry that was sent as an ``Lp`` record.

Records are applied in changelog order, which a compacted topic keeps for
the records it retains: a batch record sent again after a label's join (a
replay) finds the labelled entry there and leaves it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

import msgspec

from streamer.core.labels.ledger import (
    ENTRY_PREFIX,
    TIME_BIAS,
    TIME_PREFIX,
    Prediction,
    decode_prediction,
    plain_values,
    time_key,
)
from streamer.core.state.store import Change, Store

BATCH_PREFIX = b"Lb"
"""A scored batch's champion predictions (+ its last input offset): changelog and local store."""
BATCH_BY_TIME = b"Lx"
"""+ time (8 bytes, biased) + last offset: the local index of the batch records by time."""

_SCORE = struct.Struct(">d")


class PredictionBatch(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A scored batch's champion predictions, columnar: one changelog record for the batch."""

    first_offset: int
    time_us: int
    name: str
    version: str
    identities: list[bytes]
    scores: bytes
    """Each identity's score: float64, big-endian, 8 bytes each."""

    def scores_list(self) -> list[float]:
        """The scores as floats."""
        return [value for (value,) in _SCORE.iter_unpack(self.scores)]


_encoder = msgspec.msgpack.Encoder()
_batch = msgspec.msgpack.Decoder(PredictionBatch)


def batch_key(last_offset: int) -> bytes:
    """The key of the batch record whose last input offset is ``last_offset``."""
    return BATCH_PREFIX + last_offset.to_bytes(8, "big")


def _batch_time_key(time_us: int, key: bytes) -> bytes:
    return BATCH_BY_TIME + (time_us + TIME_BIAS).to_bytes(8, "big") + key[len(BATCH_PREFIX) :]


def encode_batch(batch: PredictionBatch) -> bytes:
    """The batch record's value."""
    return _encoder.encode(batch)


def decode_batch(raw: bytes) -> PredictionBatch:
    """A batch record's value, read."""
    return _batch.decode(raw)


def pack_scores(scores: Sequence[float]) -> bytes:
    """Scores as a :class:`PredictionBatch` holds them."""
    return struct.pack(f">{len(scores)}d", *scores)


def batch_changes(
    last_offset: int, batch: PredictionBatch, value: bytes | None = None
) -> tuple[Change, Change]:
    """The batch record (for the changelog and the store) and its local time key."""
    key = batch_key(last_offset)
    return (key, value if value is not None else encode_batch(batch)), (
        _batch_time_key(batch.time_us, key),
        b"",
    )


def is_plain(prediction: Prediction) -> bool:
    """True for an entry that a batch record gives: the champion's score, nothing else."""
    return prediction.label is None and not prediction.challengers and prediction.champion is not None


def sent_changes(changes: Iterable[Change]) -> list[Change]:
    """What of a ledger write goes to the changelog: no time keys, no plain entries.

    A plain entry is written only when the champion's score is recorded, and the
    batch record that goes with it carries it.
    """
    sent: list[Change] = []
    for key, value in changes:
        prefix = key[:2]
        if prefix == TIME_PREFIX or prefix == BATCH_BY_TIME:
            continue
        if prefix == ENTRY_PREFIX and value is not None and is_plain(decode_prediction(value)):
            continue
        sent.append((key, value))
    return sent


def expired_batches(store: Store, cutoff_us: int) -> list[Change]:
    """The tombstones of the batch records made before ``cutoff_us``, and of their time keys."""
    if cutoff_us <= -TIME_BIAS:
        return []
    high = BATCH_BY_TIME + (min(cutoff_us, TIME_BIAS - 1) + TIME_BIAS).to_bytes(8, "big")
    changes: list[Change] = []
    for key in store.keys_between(BATCH_BY_TIME, high):
        changes += [(key, None), (BATCH_PREFIX + key[len(BATCH_BY_TIME) + 8 :], None)]
    return changes


def batches_from(store: Store, first_offset: int, last_offset: int) -> list[Change]:
    """The batch records holding offsets in ``[first_offset, last_offset]`` (a replay's)."""
    changes: list[Change] = []
    high = batch_key(1 << 63)
    for key in store.keys_between(batch_key(max(first_offset, 0)), high):
        raw = store.get(key)
        if raw is not None and decode_batch(raw).first_offset <= last_offset:
            changes.append((key, raw))
    return changes


class _Overlay:
    """A store's values with the writes not written yet (a restore writes in chunks)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.store.get(key)

    def put(self, key: bytes, value: bytes | None) -> None:
        self.pending[key] = value

    def flush(self) -> int:
        written = len(self.pending)
        if self.pending:
            self.store.write(list(self.pending.items()))
            self.pending = {}
        return written


def rebuild(store: Store, changelog: Iterable[Change], chunk: int = 10_000) -> Iterator[int]:
    """Apply a ledger changelog's records to an empty store, in order; yields the changes applied.

    Each batch record becomes the entries it holds (an identity with an entry
    already keeps it) with their time keys; each ``Lp`` record replaces its
    entry and moves its time key; a batch record's tombstone deletes the entries
    it holds that are not newer than it; every other record is written as it is.
    """
    overlay = _Overlay(store)
    done = 0
    for key, value in changelog:
        prefix = key[:2]
        if prefix == BATCH_PREFIX:
            _apply_batch(overlay, key, value)
        elif prefix == ENTRY_PREFIX:
            _apply_entry(overlay, key, value)
        else:
            overlay.put(key, value)
        done += 1
        if len(overlay.pending) >= chunk:
            overlay.flush()
            yield done
    overlay.flush()
    yield done


def _apply_batch(overlay: _Overlay, key: bytes, value: bytes | None) -> None:
    if value is None:
        raw = overlay.get(key)
        if raw is None:
            return
        batch = decode_batch(raw)
        for identity in batch.identities:
            entry_key = ENTRY_PREFIX + identity
            entry = overlay.get(entry_key)
            if entry is not None:
                prediction = decode_prediction(entry)
                if prediction.time_us <= batch.time_us:
                    overlay.put(entry_key, None)
                    overlay.put(time_key(prediction.time_us, identity), None)
        overlay.put(key, None)
        overlay.put(_batch_time_key(batch.time_us, key), None)
        return
    batch = decode_batch(value)
    overlay.put(key, value)
    overlay.put(_batch_time_key(batch.time_us, key), b"")
    values = plain_values(batch.time_us, batch.name, batch.version, batch.scores_list())
    by_time = time_key(batch.time_us, b"")
    for identity, entry in zip(batch.identities, values, strict=True):
        entry_key = ENTRY_PREFIX + identity
        if overlay.get(entry_key) is None:
            overlay.put(entry_key, entry)
            overlay.put(by_time + identity, b"")


def _apply_entry(overlay: _Overlay, key: bytes, value: bytes | None) -> None:
    identity = key[len(ENTRY_PREFIX) :]
    old = overlay.get(key)
    if old is not None:
        overlay.put(time_key(decode_prediction(old).time_us, identity), None)
    overlay.put(key, value)
    if value is not None:
        overlay.put(time_key(decode_prediction(value).time_us, identity), b"")

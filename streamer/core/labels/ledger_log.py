r"""The prediction ledger's changelog: one record per scored batch, the indexes rebuilt locally.

A scored batch's champion predictions share a model, a version and a time:
they go to the changelog as **one record**, the ledger's own
:class:`~streamer.core.labels.ledger.PredictionBatch` (``Lb`` + the batch's
last input offset: the offsets, left out when consecutive, the scores and, with
record ids, the ids, in columns). The other records are few:

- ``Lj`` + a batch's last offset + a label batch's last offset: the entries
  that label batch joined in that batch (labelled, no challenger's score), in
  one record: a label batch of 600 labels over six scored batches sends six
  records, where one per label went before (``PredictionLedger.sent``). Restored, each
  entry is written as its ``Lp`` record would be; the record itself is kept in
  the store, so that the batch's expiry finds it and sends its tombstone;
- ``Lp`` + identity: any other entry that is no longer *plain* (the champion's
  score alone, as its batch gives it): a challenger's score, a label joined to
  an entry no batch holds or that has a challenger's score, a label joined by
  record id;
- ``Lt`` time keys, only for the rare entries no batch holds (a challenger's
  score for a record the champion's batch has not recorded);
- ``Lm`` (the counts), ``Lo`` (the marks) and the meta record, as before.

Local only, rebuilt from those on restore (:func:`rebuild`): the batches' time
keys (``Lx``) and, with record ids, each batch's plain entries (an identity
with an entry already keeps it: the first prediction of a record stays).
Expiry sends a batch's tombstone, and an entry's tombstone only for an entry
sent as a record of its own.

Records are applied in changelog order, which a compacted topic keeps for the
records it retains: a batch sent again after a label's join (a replay) finds
the labelled entry there and leaves it. An entry in a joins record never has a
challenger's score, so no ``Lp`` record of the same identity with an older value
can follow it in a flush (a flush sends a key at its first place with its newest
value): the ``Lp`` records of a batch-held identity before its join are a
challenger's, whose entries a joins record never carries.

Expiry sends a tombstone for every entry that is not plain (whether an ``Lp``
record or a joins record carried it: a changelog of the format before the joins
records has an ``Lp`` record per label) and one per joins record of the batch.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

from streamer.core.labels.ledger import (
    BATCH_BY_TIME,
    BATCH_PREFIX,
    ENTRY_PREFIX,
    JOIN_PREFIX,
    Prediction,
    batch_key,
    batch_size,
    batch_time_key,
    decode_batch,
    decode_joins,
    decode_prediction,
    plain_values,
    time_key,
)
from streamer.core.state.store import Change, Store


def pack_scores(scores: Sequence[float]) -> bytes:
    """Scores as a :class:`~streamer.core.labels.ledger.PredictionBatch` holds them."""
    return struct.pack(f">{len(scores)}d", *scores)


def pack_offsets(offsets: Sequence[int]) -> bytes:
    """Offsets as a :class:`~streamer.core.labels.ledger.PredictionBatch` holds them."""
    return struct.pack(f">{len(offsets)}q", *offsets)


def is_plain(prediction: Prediction) -> bool:
    """True for an entry that its batch gives: the champion's score, nothing else."""
    return (
        prediction.label is None and not prediction.challengers and prediction.champion is not None
    )


def sent_changes(changes: Iterable[Change]) -> list[Change]:
    """What of a ledger write goes to the changelog: no batch time keys, no plain entries.

    A plain entry is written only with its batch, which carries it.
    """
    sent: list[Change] = []
    for key, value in changes:
        prefix = key[:2]
        if prefix == BATCH_BY_TIME:
            continue
        if prefix == ENTRY_PREFIX and value is not None and is_plain(decode_prediction(value)):
            continue
        sent.append((key, value))
    return sent


def expiry_sent(store: Store, changes: Iterable[Change]) -> list[Change]:
    """What of an expiry's changes goes to the changelog (``store`` not written yet).

    An entry's tombstone only for an entry sent as a record of its own (not
    plain); a batch's tombstone; the time keys of entries no batch holds.
    """
    sent: list[Change] = []
    for key, value in changes:
        prefix = key[:2]
        if prefix == BATCH_BY_TIME:
            continue
        if prefix == ENTRY_PREFIX and value is None:
            raw = store.get(key)
            if raw is None or is_plain(decode_prediction(raw)):
                continue
        sent.append((key, value))
    return sent


def batches_from(store: Store, first_offset: int, last_offset: int) -> list[Change]:
    """The batches holding offsets in ``[first_offset, last_offset]`` (a replay's), as stored."""
    changes: list[Change] = []
    for key in store.keys_between(batch_key(max(first_offset, 0)), BATCH_PREFIX + b"\xff" * 9):
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

    def flush(self) -> None:
        if self.pending:
            self.store.write(list(self.pending.items()))
            self.pending = {}


def rebuild(
    store: Store,
    changelog: Iterable[Change],
    coordinates: tuple[str, int],
    chunk: int = 10_000,
) -> Iterator[int]:
    """Apply a ledger changelog's records to an empty store, in order; yields the records applied.

    A batch gets its time key and, with record ids, its plain entries (an
    identity with an entry already keeps it); a batch's tombstone deletes the
    entries it holds that are not newer than it; a joins record writes its
    entries (and itself); every other record is written as it is.
    ``coordinates``: the input topic and partition.
    """
    overlay = _Overlay(store)
    done = 0
    for key, value in changelog:
        prefix = key[:2]
        if prefix == BATCH_PREFIX:
            _apply_batch(overlay, key, value, coordinates)
        elif prefix == JOIN_PREFIX and value is not None:
            overlay.put(key, value)
            for identity, entry in decode_joins(value):
                overlay.put(ENTRY_PREFIX + identity, entry)
        else:
            overlay.put(key, value)
        done += 1
        if len(overlay.pending) >= chunk:
            overlay.flush()
            yield done
    overlay.flush()
    yield done


def _apply_batch(
    overlay: _Overlay, key: bytes, value: bytes | None, coordinates: tuple[str, int]
) -> None:
    if value is None:
        raw = overlay.get(key)
        if raw is None:
            return
        batch = decode_batch(raw)
        for identity in batch.identities(coordinates):
            entry_key = ENTRY_PREFIX + identity
            entry = overlay.get(entry_key)
            if entry is not None:
                prediction = decode_prediction(entry)
                if prediction.time_us <= batch.time_us:
                    overlay.put(entry_key, None)
                    overlay.put(time_key(prediction.time_us, identity), None)
        overlay.put(key, None)
        overlay.put(batch_time_key(batch.time_us, key), None)
        return
    batch = decode_batch(value)
    overlay.put(key, value)
    overlay.put(batch_time_key(batch.time_us, key), batch_size(len(batch)))
    if batch.ids:
        values = plain_values(batch.time_us, batch.name, batch.version, batch.scores_list())
        for identity, entry in zip(batch.ids, values, strict=True):
            entry_key = ENTRY_PREFIX + identity
            if overlay.get(entry_key) is None:
                overlay.put(entry_key, entry)

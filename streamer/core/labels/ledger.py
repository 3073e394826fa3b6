r"""The prediction ledger: what each model scored for a record, until its label comes or expires.

The ledger lives in a :class:`~streamer.core.state.store.Store` (in memory or
RocksDB), under keys of its own, so that it can share a partition's state
store and its changelog:

- ``L`` ``p`` + identity: the record's :class:`Prediction` (the champion's
  score and version, each challenger's, the prediction time, and its label
  once joined);
- ``L`` ``t`` + prediction time (8 bytes, big-endian, offset by 2^63) +
  identity: an empty value, so that expiring is a range scan in time order;
- ``L`` ``b`` + last input offset: a :class:`PredictionBatch`, the champion's
  predictions of one scored batch in columns (:meth:`PredictionLedger.record_batch`),
  and ``L`` ``x`` + time + last offset, its place in time order. A prediction
  a batch holds has no ``p`` entry of its own while it is *plain* (the
  champion's score alone) when the identities are the batch's source
  coordinates (found by offset); with record ids, its ``p`` entry is written
  without a time key. It expires with its batch;
- ``L`` ``j`` + a batch's last offset + a label batch's last offset: with a
  ``tag`` (:meth:`PredictionLedger.join`), the entries that label batch joined
  in that batch, together (the changelog's record of them; the ``p`` entries
  are written too). They expire with their batch;
- ``L`` ``m``: the :class:`LedgerCounts`.

Every call writes its changes in one :meth:`Store.write` (all or none) and
returns them, so that the caller can send the same changes to a changelog.
Values are MessagePack (msgspec), a float written as its 8 bytes.

A prediction is held for the label horizon after its time, labelled or not:
a labelled one stays so that a second label for it is a duplicate, not an
unknown record. :meth:`PredictionLedger.expire` deletes those past the
horizon and counts the ones that never got a label.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import struct
from collections.abc import Iterable, Iterator, Sequence

import msgspec
import numpy as np

from streamer.core.labels.join import (
    DUPLICATE,
    PAST_HORIZON,
    UNMATCHED,
    Label,
    Output,
    coordinates_identities,
    coordinates_labels,
)
from streamer.core.state.store import Change, Store

PREFIX = b"L"
ENTRY_PREFIX = _ENTRY = PREFIX + b"p"
TIME_PREFIX = _BY_TIME = PREFIX + b"t"
COUNTS_KEY = _COUNTS = PREFIX + b"m"
BATCH_PREFIX = PREFIX + b"b"
"""+ a batch's last input offset (8 bytes): a :class:`PredictionBatch`."""
JOIN_PREFIX = PREFIX + b"j"
"""+ a batch's last input offset (8 bytes) + a label batch's last offset (8 bytes): the
entries that label batch joined in that batch, in one changelog record (:func:`encode_joins`)."""
BATCH_BY_TIME = PREFIX + b"x"
"""+ time (8 bytes, biased) + last offset: the batches in time order, valued by their sizes
(local only)."""
TIME_BIAS = _TIME_BIAS = 1 << 63
_SCORE = struct.Struct(">d")
_UNKNOWN = object()


class ModelScore(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One model's score for a record: the model's name and version, when it scored it."""

    name: str
    version: str
    score: float
    time_us: int


class LedgerLabel(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The label joined to a prediction: its value and time (None: the label had none)."""

    value: float
    time_us: int | None


class Prediction(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What the ledger holds for one record."""

    time_us: int
    """The prediction time: the earliest ``scored_at`` of the models that scored it."""
    champion: ModelScore | None
    challengers: tuple[ModelScore, ...]
    label: LedgerLabel | None = None


class LedgerCounts(msgspec.Struct, frozen=True, gc=False):
    """What the ledger has seen, kept in the store with the predictions (exact through restarts)."""

    outputs: int = 0
    """Predictions recorded (one per model per record)."""
    duplicate_outputs: int = 0
    """A model's second output for a record (a replay): the first one recorded stays."""
    joined: int = 0
    labels: dict[str, int] = {}
    """Labels that joined nothing, by reason (``unmatched``, ``duplicate``, ``past_horizon``)."""
    expired_unlabelled: int = 0
    expired_labelled: int = 0


class Joined(msgspec.Struct, frozen=True, gc=False):
    """A prediction with its label: what the metrics window holds.

    A struct, not a dataclass: a frozen dataclass's ``__init__`` cost 20x a struct's (1.3 µs).
    """

    identity: bytes
    prediction: Prediction

    @property
    def label(self) -> LedgerLabel:
        """The label (a joined prediction has one)."""
        assert self.prediction.label is not None
        return self.prediction.label


class PredictionBatch(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A scored batch's champion predictions, in columns: one changelog record for the batch."""

    first_offset: int
    time_us: int
    name: str
    version: str
    offsets: bytes
    """Each prediction's input offset: int64, big-endian, 8 bytes each, ascending; empty when
    they are consecutive from ``first_offset`` (a batch without gaps: half the record's bytes,
    in the store and in the changelog, format 4)."""
    scores: bytes
    """Each prediction's score: float64, big-endian, 8 bytes each."""
    ids: list[bytes] = []
    """Each prediction's identity, when it is not the record's source coordinates."""

    def offsets_array(self) -> np.ndarray:
        """The offsets, as int64 (a view of the bytes, or ``arange`` when consecutive)."""
        if not self.offsets:
            return np.arange(self.first_offset, self.first_offset + len(self), dtype=np.int64)
        return np.frombuffer(self.offsets, dtype=">i8")

    def scores_list(self) -> list[float]:
        """The scores as floats."""
        return [value for (value,) in _SCORE.iter_unpack(self.scores)]

    def identities(self, coordinates: tuple[str, int] | None) -> list[bytes]:
        """Each prediction's identity (``coordinates``: the input topic and partition)."""
        if self.ids or coordinates is None:
            return list(self.ids)
        return coordinates_identities(*coordinates, self.offsets_array().tolist())

    def __len__(self) -> int:
        return len(self.scores) // 8


_encoder = msgspec.msgpack.Encoder()
_prediction = msgspec.msgpack.Decoder(Prediction)
_counts = msgspec.msgpack.Decoder(LedgerCounts)
_batch = msgspec.msgpack.Decoder(PredictionBatch)
_joins = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])


def batch_key(last_offset: int) -> bytes:
    """The store key of the batch whose last input offset is ``last_offset``."""
    return BATCH_PREFIX + last_offset.to_bytes(8, "big")


def batch_time_key(time_us: int, key: bytes) -> bytes:
    """The time key of the batch stored under ``key``."""
    return BATCH_BY_TIME + (time_us + TIME_BIAS).to_bytes(8, "big") + key[len(BATCH_PREFIX) :]


def batch_size(predictions: int) -> bytes:
    """A batch's time key's value: how many predictions it holds (4 bytes)."""
    return predictions.to_bytes(4, "big")


def encode_batch(batch: PredictionBatch) -> bytes:
    """A batch's value."""
    return _encoder.encode(batch)


def decode_batch(raw: bytes) -> PredictionBatch:
    """A batch's value, read."""
    return _batch.decode(raw)


def joins_key(last_offset: int, tag: int) -> bytes:
    """The key of the entries label batch ``tag`` joined in the batch ending at ``last_offset``."""
    return JOIN_PREFIX + last_offset.to_bytes(8, "big") + tag.to_bytes(8, "big", signed=True)


def encode_joins(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A joins record's value: ``(identity, entry)`` pairs, each entry as its ``Lp`` value."""
    return _encoder.encode(entries)


def decode_joins(raw: bytes) -> list[tuple[bytes, bytes]]:
    """A joins record's ``(identity, entry)`` pairs."""
    return _joins.decode(raw)


def entry_key(identity: bytes) -> bytes:
    """The store key of a record's prediction."""
    return _ENTRY + identity


def time_key(time_us: int, identity: bytes) -> bytes:
    """The store key of a prediction's place in time order (local only: see ledger_log)."""
    return _BY_TIME + (time_us + _TIME_BIAS).to_bytes(8, "big") + identity


_time_key = time_key


def decode_prediction(raw: bytes) -> Prediction:
    """An entry's value, read."""
    return _prediction.decode(raw)


def plain_values(time_us: int, name: str, version: str, scores: Iterable[float]) -> Iterator[bytes]:
    """The entry of each score made at ``time_us`` by the champion alone, encoded.

    The same bytes as encoding ``Prediction(time_us, ModelScore(name, version, score,
    time_us), ())``, made from one template: MessagePack writes every float as
    ``0xcb`` and its 8 bytes.
    """
    template = _encoder.encode(Prediction(time_us, ModelScore(name, version, 0.0, time_us), ()))
    at = template.index(b"\xcb" + bytes(8))
    head, tail = template[: at + 1], template[at + 9 :]
    pack = _SCORE.pack
    for score in scores:
        yield head + pack(score) + tail


def labelled(store: Store) -> list[Joined]:
    """Every labelled prediction a ledger's store holds (a scan of its entries)."""
    joined: list[Joined] = []
    for key, raw in store.items_from(_ENTRY):
        prediction = _prediction.decode(raw)
        if prediction.label is not None:
            joined.append(Joined(key[len(_ENTRY) :], prediction))
    return joined


class PredictionLedger:
    """Predictions by identity, joined to labels, expired after ``horizon_us``.

    Args:
        store: Where the ledger lives (its keys start with ``L``).
        horizon_us: How long a prediction waits for its label.
        coordinates: The input topic and partition whose records' source
            coordinates are the identities of the batches' predictions
            (:meth:`record_batch` without ids); None when no batch holds them.
    """

    def __init__(
        self, store: Store, horizon_us: int, coordinates: tuple[str, int] | None = None
    ) -> None:
        self.store = store
        self.horizon_us = horizon_us
        self.coordinates = coordinates
        raw = store.get(_COUNTS)
        self.counts = _counts.decode(raw) if raw is not None else LedgerCounts()
        self._coordinates_prefix = (
            b"" if coordinates is None else b"c%d/" % coordinates[1],
            b"" if coordinates is None else b"/" + coordinates[0].encode(),
        )
        self._lasts: list[int] = []
        """The last offsets of the batches held, ascending (a batch is found by offset)."""
        self._decoded: dict[int, PredictionBatch] = {}
        """Batches read lately, by last offset (a label batch's labels name few of them)."""
        self._listed: dict[int, list[int]] = {}
        """The offsets of batches kept decoded, as a list, once a label was found in one by
        ``bisect`` (:meth:`_find`), where a call of ``np.searchsorted`` per label cost more
        than the rest of its join (docs/labels.md); a batch joined in columns needs none."""
        self._entries: dict[int, bytearray] = {}
        """Per batch held (by last offset, the newest :data:`_TRACKED_BATCHES`; by source
        coordinates), a byte per row: 1 when an entry (``Lp``) may exist for its record. A
        row at 0 has none, so :meth:`get` answers from the batch without a store read: a
        RocksDB miss cost 3-4 µs per label, most of a label's join (docs/labels.md)."""
        self.held = 0
        """How many predictions the ledger holds."""
        self.sent: list[Change] = []
        """After a :meth:`join` with a ``tag``: its changes as the changelog gets them (the
        joins records, what they do not carry, the counts), in their order."""
        # The batches' time keys hold their sizes: no batch is read to open the ledger.
        sizes: dict[int, int] = {}
        for key, size in store.items_from(BATCH_BY_TIME):
            last = int.from_bytes(key[len(BATCH_BY_TIME) + 8 :], "big")
            self._lasts.append(last)
            sizes[last] = int.from_bytes(size, "big")
            self.held += sizes[last]
        self._lasts.sort()
        self.held += len(store.keys_between(_BY_TIME, _BY_TIME + b"\xff" * 9))
        if coordinates is not None and sizes:
            self._track_held(sizes)

    def _track_held(self, sizes: dict[int, int]) -> None:
        """Track the rows of the newest batches held, their entries marked (an opened ledger).

        ``sizes``: each batch's size by last offset. The entries are read once,
        and only the batches holding one of them.
        """
        head, tail = self._coordinates_prefix
        entry_offsets = []
        for key, _value in self.store.items_from(_ENTRY + head):
            identity = key[len(_ENTRY) :]
            if not identity.endswith(tail):
                continue
            with contextlib.suppress(ValueError):
                entry_offsets.append(int(identity[len(head) : len(identity) - len(tail)]))
        lasts = np.array(self._lasts[-_TRACKED_BATCHES:], dtype=np.int64)
        marked = np.sort(np.array(entry_offsets, dtype=np.int64))
        marked = marked[
            marked > (self._lasts[-len(lasts) - 1] if len(lasts) < len(self._lasts) else -1)
        ]
        which = np.searchsorted(lasts, marked)
        for at, last in enumerate(lasts.tolist()):
            self._entries[last] = entries = bytearray(sizes[last])
            low, high = np.searchsorted(which, [at, at + 1])
            if low == high:
                continue
            raw = self.store.get(batch_key(last))
            if raw is None:  # no batch to read: its rows are not known clean
                del self._entries[last]
                continue
            offsets = decode_batch(raw).offsets_array()
            rows = np.searchsorted(offsets, marked[low:high])
            rows = rows[rows < len(offsets)]
            for row in rows.tolist():
                entries[row] = 1

    def get(self, identity: bytes) -> Prediction | None:
        """The prediction held for ``identity``, or None."""
        return self._lookup(identity)[0]

    def _lookup(
        self, identity: bytes
    ) -> tuple[Prediction | None, tuple[int, int, PredictionBatch] | None]:
        """:meth:`get`, and the batch that holds the identity's offset (:meth:`_find`)."""
        found = self._find(identity) if self._lasts else None
        if found is not None:
            last, row, batch = found
            entries = self._entries.get(last)
            if entries is not None and not entries[row]:  # no entry: the batch's prediction
                return _plain(batch, row), found
        raw = self.store.get(entry_key(identity))
        if raw is not None:
            return _prediction.decode(raw), found
        return (None if found is None else _plain(found[2], found[1])), found

    def _find(self, identity: bytes) -> tuple[int, int, PredictionBatch] | None:
        """The batch holding the offset in ``identity`` (by source coordinates), or None.

        Its last offset, the offset's row in it, and the batch.
        """
        head, tail = self._coordinates_prefix
        if not head or not identity.startswith(head) or not identity.endswith(tail):
            return None
        try:
            offset = int(identity[len(head) : len(identity) - len(tail)])
        except ValueError:
            return None
        at = bisect.bisect_left(self._lasts, offset)
        if at == len(self._lasts):
            return None
        last = self._lasts[at]
        batch = self._decoded_batch(last)
        if batch is None:
            return None
        offsets = self._listed.get(last)
        if offsets is None:
            offsets = self._listed[last] = batch.offsets_array().tolist()
        row = bisect.bisect_left(offsets, offset)
        if row == len(offsets) or offsets[row] != offset:
            return None
        return last, row, batch

    def _decoded_batch(self, last: int) -> PredictionBatch | None:
        """The batch ending at offset ``last``, kept decoded (None: not held)."""
        batch = self._decoded.get(last)
        if batch is None:
            raw = self.store.get(batch_key(last))
            if raw is None:
                return None
            batch = decode_batch(raw)
            if len(self._decoded) >= _DECODED_BATCHES:
                oldest = next(iter(self._decoded))
                del self._decoded[oldest]
                self._listed.pop(oldest, None)
            self._decoded[last] = batch
        return batch

    def _track(self, last: int, rows: int) -> None:
        """Track the entries of a batch just recorded (none yet), the oldest tracked dropped.

        By source coordinates only: with record ids, each prediction has its entry.
        """
        if self.coordinates is None:
            return
        if len(self._entries) >= _TRACKED_BATCHES:
            self._entries.pop(next(iter(self._entries)))
        self._entries[last] = bytearray(rows)

    def _entry_written(self, identity: bytes, found: object = _UNKNOWN) -> None:
        """An entry for ``identity`` is written: its batch's row is no longer known clean.

        ``found``: :meth:`_find`'s answer for it, when known.
        """
        if not self._entries:
            return
        if found is _UNKNOWN:
            found = self._find(identity)
        if isinstance(found, tuple):
            entries = self._entries.get(found[0])
            if entries is not None:
                entries[found[1]] = 1

    def record(self, outputs: Sequence[Output]) -> tuple[list[Joined], list[Change]]:
        """Add each model's prediction; a second one of a model for a record is a duplicate.

        Returns:
            The labelled predictions that changed (a challenger's score that
            came after the label: the window replaces them), and the changes
            written.
        """
        stored: dict[bytes, Prediction | None] = {}  # one read per record of the call
        pending: dict[bytes, Prediction | None] = {}
        added = duplicates = 0
        for output in outputs:
            if output.identity not in pending:
                stored[output.identity] = pending[output.identity] = self.get(output.identity)
            before = pending[output.identity]
            after = _with_output(before, output)
            if after is before:
                duplicates += 1
            else:
                added += 1
                pending[output.identity] = after
        counts = msgspec.structs.replace(
            self.counts,
            outputs=self.counts.outputs + added,
            duplicate_outputs=self.counts.duplicate_outputs + duplicates,
        )
        changes = self._write(stored, pending, counts)
        relabelled = [
            Joined(identity, prediction)
            for identity, prediction in pending.items()
            if prediction is not None
            and prediction.label is not None
            and prediction is not stored[identity]
        ]
        return relabelled, changes

    def record_batch(
        self,
        identities: Sequence[bytes],
        offsets: Sequence[int],
        scores: Sequence[float],
        model: tuple[str, str],
        time_us: int,
        *,
        new: bool = False,
    ) -> tuple[list[Joined], list[Change]]:
        """Record the champion's scores of a scored batch, all made at ``time_us``.

        ``offsets``: each prediction's input offset (ascending, above every
        batch's held). The predictions new to the ledger go in one
        :class:`PredictionBatch` under the batch's last offset; by source
        coordinates (``coordinates`` set, the identities those of ``offsets``),
        nothing is written per prediction; with record ids, each gets its entry
        without a time key. A record scored already (a challenger came first,
        or an id seen before) is merged like :meth:`record`. ``new``: the caller
        knows that every identity is new and comes once (the store is not read);
        by source coordinates, ``identities`` may then be empty (not needed);
        :meth:`record_columns` does the same without a Python object per prediction.
        """
        name, version = model
        repeated = 0  # a record twice in the batch: its first score stays
        if new:
            fresh = list(range(len(offsets)))
            merged: list[Output] = []
        else:
            fresh, merged, seen = [], [], set()
            for row, identity in enumerate(identities):
                if identity in seen:
                    repeated += 1
                elif self.get(identity) is not None:
                    merged.append(Output(identity, False, name, version, scores[row], time_us))
                else:
                    fresh.append(row)
                seen.add(identity)
        relabelled: list[Joined] = []
        changes: list[Change] = []
        if merged:
            relabelled, changes = self.record(merged)
        if repeated:
            self.counts = msgspec.structs.replace(
                self.counts, duplicate_outputs=self.counts.duplicate_outputs + repeated
            )
        if not fresh:
            if repeated:
                counts = (_COUNTS, _encoder.encode(self.counts))
                self.store.write([counts])
                changes.append(counts)
            return relabelled, changes
        kept_scores = [scores[row] for row in fresh]
        by_offsets = self.coordinates is not None
        batch = PredictionBatch(
            offsets[fresh[0]],
            time_us,
            name,
            version,
            b""
            if offsets[fresh[-1]] - offsets[fresh[0]] == len(fresh) - 1
            else struct.pack(f">{len(fresh)}q", *(offsets[row] for row in fresh)),
            struct.pack(f">{len(fresh)}d", *kept_scores),
            [] if by_offsets else [identities[row] for row in fresh],
        )
        last = offsets[fresh[-1]]
        key = batch_key(last)
        written: list[Change] = [
            (key, encode_batch(batch)),
            (batch_time_key(time_us, key), batch_size(len(fresh))),
        ]
        if not by_offsets:
            values = plain_values(time_us, name, version, kept_scores)
            written += [
                (_ENTRY + identities[row], value) for row, value in zip(fresh, values, strict=True)
            ]
        self.counts = msgspec.structs.replace(self.counts, outputs=self.counts.outputs + len(fresh))
        written.append((_COUNTS, _encoder.encode(self.counts)))
        self.store.write(written)
        bisect.insort(self._lasts, last)
        self._track(last, len(fresh))
        self.held += len(fresh)
        return relabelled, changes + written

    def record_columns(
        self, offsets: np.ndarray, scores: np.ndarray, model: tuple[str, str], time_us: int
    ) -> list[Change]:
        """:meth:`record_batch` with ``new`` by source coordinates, in columns.

        ``offsets`` (int64, ascending, above every batch's held) and ``scores``
        (float64) are written as they are: nothing per prediction in Python.
        Returns the changes written.
        """
        if not len(offsets):
            assert self.coordinates is not None, "by source coordinates only"
            return []
        first, last = int(offsets[0]), int(offsets[-1])
        # Ascending and distinct: the ends tell whether they are consecutive.
        if last - first == len(offsets) - 1:
            return self.record_run(first, scores, model, time_us)
        return self._record_batch(
            first, last, offsets.astype(">i8").tobytes(), scores, model, time_us
        )

    def record_run(
        self, first: int, scores: np.ndarray, model: tuple[str, str], time_us: int
    ) -> list[Change]:
        """:meth:`record_columns` of consecutive offsets from ``first``, one per score."""
        if not len(scores):
            assert self.coordinates is not None, "by source coordinates only"
            return []
        return self._record_batch(first, first + len(scores) - 1, b"", scores, model, time_us)

    def _record_batch(
        self,
        first: int,
        last: int,
        packed_offsets: bytes,
        scores: np.ndarray,
        model: tuple[str, str],
        time_us: int,
    ) -> list[Change]:
        assert self.coordinates is not None, "by source coordinates only"
        name, version = model
        size = len(scores)
        batch = PredictionBatch(
            first, time_us, name, version, packed_offsets, scores.astype(">f8").tobytes()
        )
        key = batch_key(last)
        self.counts = counts = msgspec.structs.replace(
            self.counts, outputs=self.counts.outputs + size
        )
        written: list[Change] = [
            (key, _encoder.encode(batch)),
            (batch_time_key(time_us, key), size.to_bytes(4, "big")),
            (_COUNTS, _encoder.encode(counts)),
        ]
        self.store.write(written)
        lasts = self._lasts
        if not lasts or last > lasts[-1]:  # the usual: above every batch held
            lasts.append(last)
        else:
            bisect.insort(lasts, last)
        self._track(last, size)
        self.held += size
        return written

    def join(
        self,
        labels: Sequence[Label],
        offsets: Sequence[int] | None = None,
        tag: int | None = None,
    ) -> tuple[list[Joined], list[str], list[Change]]:
        """Join each label to its prediction: the first label of a record joins, once.

        ``offsets`` (by source coordinates): each label's record offset in this
        ledger's partition, -1 when the label names another topic or another form.
        Given, a batch of labels whose predictions all wait plain in their batches
        is joined in columns (:meth:`_join_plain`); else, and for any other batch,
        label by label, with the same result. ``tag`` (the label batch's last
        offset): the labelled entries of each batch held that get only a label
        (no challenger's score) are also written together under
        :func:`joins_key` (``Lj``), one changelog record per batch instead of one
        per label: :attr:`sent` is then the changes without the entries those carry.

        Returns:
            The joined predictions, the reason of each label that joined nothing
            (``unmatched``, ``duplicate``, ``past_horizon``), and the changes written.
        """
        if offsets is not None and self._entries:
            plain = self._join_plain(labels, offsets, tag)
            if plain is not None:
                return plain
        return self._join_listed(labels, tag)

    def join_columns(
        self,
        records: Sequence[int],
        values: Sequence[float],
        times: Sequence[int] | None,
        tag: int | None = None,
    ) -> tuple[list[Joined], list[str], list[Change]]:
        """:meth:`join` of labels given in columns, by source coordinates: the same result.

        ``records``: each label's record offset in this ledger's partition (its
        identity is the record's coordinates), ``values`` its value, ``times`` its
        time (None: the labels have none). No :class:`Label` is made unless the
        batch goes label by label (:meth:`join`'s reasons); an identity only for a
        label joined.
        """
        assert self.coordinates is not None, "by source coordinates only"
        found = self._plain_rows(records) if records and self._entries else None
        if found is not None:
            return self._join_rows(found, None, records, values, times, tag)
        return self._join_listed(coordinates_labels(*self.coordinates, records, values, times), tag)

    def _join_listed(
        self, labels: Sequence[Label], tag: int | None
    ) -> tuple[list[Joined], list[str], list[Change]]:
        """:meth:`join`, label by label."""
        stored: dict[bytes, Prediction | None] = {}
        pending: dict[bytes, Prediction | None] = {}
        places: dict[bytes, tuple[int, int, PredictionBatch] | None] = {}
        joined: list[Joined] = []
        reasons: list[str] = []
        for label in labels:
            if label.identity not in pending:
                prediction, places[label.identity] = self._lookup(label.identity)
                stored[label.identity] = pending[label.identity] = prediction
            prediction = pending[label.identity]
            if prediction is None:
                reasons.append(UNMATCHED)
            elif prediction.label is not None:
                reasons.append(DUPLICATE)
            elif label.time_us is not None and label.time_us - prediction.time_us > self.horizon_us:
                reasons.append(PAST_HORIZON)
            else:
                labelled = msgspec.structs.replace(
                    prediction, label=LedgerLabel(label.value, label.time_us)
                )
                pending[label.identity] = labelled
                joined.append(Joined(label.identity, labelled))
        counts = self._counted(len(joined), reasons)
        return joined, reasons, self._write(stored, pending, counts, places, tag)

    def _counted(self, joined: int, reasons: Sequence[str]) -> LedgerCounts:
        """The counts after a label batch: ``joined`` more joins, a label more per reason."""
        by_reason = dict(self.counts.labels)
        for reason in reasons:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        return msgspec.structs.replace(
            self.counts, joined=self.counts.joined + joined, labels=by_reason
        )

    def _join_plain(
        self, labels: Sequence[Label], offsets: Sequence[int], tag: int | None = None
    ) -> tuple[list[Joined], list[str], list[Change]] | None:
        """:meth:`join` of labels that each name a distinct plain row of a tracked batch.

        The rows are found by offset in columns (no identity parsed, no lookup per
        label); None, nothing done: a label named another topic, a row not in a
        tracked batch, a row with an entry (joined, or a challenger's), or a
        record twice, and :meth:`join` takes the labels one by one.
        """
        found = self._plain_rows(offsets) if labels else None
        if found is None:
            return None
        return self._join_rows(
            found,
            [label.identity for label in labels],
            offsets,
            [label.value for label in labels],
            [label.time_us for label in labels],
            tag,
        )

    def _join_rows(
        self,
        found: _PlainRows,
        identities: Sequence[bytes] | None,
        records: Sequence[int],
        values: Sequence[float],
        times: Sequence[int | None] | None,
        tag: int | None,
    ) -> tuple[list[Joined], list[str], list[Change]]:
        """Join labels whose plain rows :meth:`_plain_rows` found, in columns.

        ``identities``: each label's (None: made from ``records``, this ledger's
        coordinates, for the labels joined); ``times`` None: no label has a time.
        """
        rows, scores, runs = found
        joined: list[Joined] = []
        reasons: list[str] = []
        changes: list[Change] = []
        groups: dict[int, list[tuple[bytes, bytes]]] = {}
        horizon_us = self.horizon_us
        if identities is None:  # one per label: a label past the horizon is rare
            assert self.coordinates is not None, "by source coordinates only"
            identities = coordinates_identities(*self.coordinates, records)
        encode = _encoder.encode
        add_joined, add_change = joined.append, changes.append
        # Run by run (labels in a row of one batch; the labels' order): the batch's fields
        # are read once a run, its joins record's list found once.
        for start, end, batch, entries, last in runs:
            made_us, name, version = batch.time_us, batch.name, batch.version
            group: list[tuple[bytes, bytes]] | None = None
            at_times = times[start:end] if times is not None else itertools.repeat(None)
            for identity, row, score, value, time_us in zip(
                identities[start:end],
                rows[start:end],
                scores[start:end],
                values[start:end],
                at_times,
                strict=False,
            ):
                if time_us is not None and time_us - made_us > horizon_us:
                    reasons.append(PAST_HORIZON)
                    continue
                # _plain's prediction with its label, made here: a call per label costs.
                labelled = Prediction(
                    made_us,
                    ModelScore(name, version, score, made_us),
                    (),
                    LedgerLabel(value, time_us),
                )
                add_joined(Joined(identity, labelled))
                encoded = encode(labelled)
                add_change((_ENTRY + identity, encoded))
                if tag is not None:
                    if group is None:
                        group = groups.setdefault(last, [])
                    group.append((identity, encoded))
                entries[row] = 1  # an entry now: the next label of the row reads it
        apart = len(changes)
        changes += _joins_records(groups, tag)
        written = self._written(changes, self._counted(len(joined), reasons))
        if tag is not None:  # every entry is in a joins record
            self.sent = written[apart:]
        return joined, reasons, written

    def _plain_rows(self, offsets: Sequence[int]) -> _PlainRows | None:
        """Each offset's row and score, and its run: labels in a row of one batch.

        The runs, in the offsets' order: ``(start, end, batch, the batch's entries,
        its last offset)``, labels ``start`` to ``end`` (excluded). None: an offset
        below 0, twice, in no batch held and tracked, or of a row that may have an
        entry.
        """
        count = len(offsets)
        wanted = np.fromiter(offsets, dtype=np.int64, count=count)
        # A label batch names its records in offset order, mostly: then no sort and
        # no way back (an argsort and three gathers).
        ascending = bool((wanted[1:] > wanted[:-1]).all())
        if ascending:
            order, ordered = None, wanted
        else:
            order = np.argsort(wanted, kind="stable")
            ordered = wanted[order]
        lasts = self._lasts
        if ordered[0] < 0 or (order is not None and (ordered[1:] == ordered[:-1]).any()):
            return None
        low = bisect.bisect_left(lasts, int(ordered[0]))
        high = bisect.bisect_left(lasts, int(ordered[-1]))
        if high == len(lasts):
            return None
        held = np.array(lasts[low : high + 1], dtype=np.int64)
        which = np.searchsorted(held, ordered)  # each offset's batch, in offset order
        cuts = [0, *(np.flatnonzero(which[1:] != which[:-1]) + 1).tolist(), count]
        rows = np.empty(count, dtype=np.int64)
        scores = np.empty(count, dtype=np.float64)
        batches: list[tuple[PredictionBatch, bytearray, int]] = []
        for start, end in itertools.pairwise(cuts):
            last = int(held[which[start]])
            entries = self._entries.get(last)
            batch = self._decoded_batch(last) if entries is not None else None
            if entries is None or batch is None:
                return None
            at = _plain_at(batch, entries, ordered[start:end])
            if at is None:
                return None
            rows[start:end] = at
            scores[start:end] = np.frombuffer(batch.scores, dtype=">f8")[at]
            batches.append((batch, entries, last))
        if order is None:
            runs = [
                (start, end, *found)
                for (start, end), found in zip(itertools.pairwise(cuts), batches, strict=True)
            ]
            return rows.tolist(), scores.tolist(), runs
        # Back in the offsets' (the labels') order, the runs cut where the batch changes.
        place = np.empty(count, dtype=np.int64)
        place[order] = np.arange(count)
        which_run = np.repeat(np.arange(len(batches)), np.diff(cuts))[place]
        cuts = [0, *(np.flatnonzero(which_run[1:] != which_run[:-1]) + 1).tolist(), count]
        runs = [
            (start, end, *batches[int(which_run[start])]) for start, end in itertools.pairwise(cuts)
        ]
        return rows[place].tolist(), scores[place].tolist(), runs

    def expire(self, now_us: int) -> tuple[int, list[Change]]:
        """Delete the predictions made more than the horizon before ``now_us``.

        The predictions with a time key first, then the batches in time order,
        each with the predictions it holds.

        Returns:
            How many of them never got a label, and the changes written.
        """
        cutoff = now_us - self.horizon_us
        if cutoff <= -_TIME_BIAS:
            return 0, []
        high = (min(cutoff, _TIME_BIAS - 1) + _TIME_BIAS).to_bytes(8, "big")
        changes: list[Change] = []
        unlabelled = labelled = 0
        deleted: set[bytes] = set()
        for time_key in self.store.keys_between(_BY_TIME, _BY_TIME + high):
            identity = time_key[len(_BY_TIME) + 8 :]
            raw = self.store.get(entry_key(identity))
            if raw is not None and _prediction.decode(raw).label is None:
                unlabelled += 1
            else:
                labelled += 1
            deleted.add(identity)
            changes += [(time_key, None), (entry_key(identity), None)]
        for time_key in self.store.keys_between(BATCH_BY_TIME, BATCH_BY_TIME + high):
            expired = self._expire_batch(time_key, deleted)
            unlabelled += expired[0]
            labelled += expired[1]
            changes += expired[2]
        if not changes:
            return 0, []
        self.held -= unlabelled + labelled
        self.counts = msgspec.structs.replace(
            self.counts,
            expired_unlabelled=self.counts.expired_unlabelled + unlabelled,
            expired_labelled=self.counts.expired_labelled + labelled,
        )
        changes.append((_COUNTS, _encoder.encode(self.counts)))
        self.store.write(changes)
        return unlabelled, changes

    def _expire_batch(self, time_key: bytes, deleted: set[bytes]) -> tuple[int, int, list[Change]]:
        """A batch's expiry: its predictions (unlabelled, labelled) and the deletions.

        ``deleted``: the identities whose entries this expiry deleted already.
        """
        key = BATCH_PREFIX + time_key[len(BATCH_BY_TIME) + 8 :]
        last = int.from_bytes(key[len(BATCH_PREFIX) :], "big")
        self._decoded.pop(last, None)
        self._listed.pop(last, None)
        self._entries.pop(last, None)
        at = bisect.bisect_left(self._lasts, last)
        if at < len(self._lasts) and self._lasts[at] == last:
            del self._lasts[at]
        raw = self.store.get(key)
        changes: list[Change] = []
        unlabelled = labelled = 0
        for identity in decode_batch(raw).identities(self.coordinates) if raw is not None else ():
            if identity in deleted:
                continue
            entry = self.store.get(entry_key(identity))
            if entry is None or _prediction.decode(entry).label is None:
                unlabelled += 1
            else:
                labelled += 1
            if entry is not None:
                changes.append((entry_key(identity), None))
        changes += [(joins, None) for joins in self.store.keys_between(*_joins_range(last))]
        changes += [(time_key, None), (key, None)]
        return unlabelled, labelled, changes

    def held_by_label(self) -> tuple[int, int]:
        """How many predictions the ledger holds: (unlabelled, labelled)."""
        labelled = sum(
            _prediction.decode(raw).label is not None for _, raw in self.store.items_from(_ENTRY)
        )
        return self.held - labelled, labelled

    def _write(
        self,
        stored: dict[bytes, Prediction | None],
        pending: dict[bytes, Prediction | None],
        counts: LedgerCounts,
        places: dict[bytes, tuple[int, int, PredictionBatch] | None] | None = None,
        tag: int | None = None,
    ) -> list[Change]:
        """Write what changed from ``stored`` to ``pending``, and the counts, in one batch.

        A new prediction gets a time key; a prediction a batch holds (it has
        none) keeps expiring with its batch. ``places``: where :meth:`_find` found
        the identities, when known. ``tag``: a label batch's (see :meth:`join`).
        """
        changes: list[Change] = []
        apart: list[Change] = []  # with ``tag``, what no joins record carries
        groups: dict[int, list[tuple[bytes, bytes]]] = {}
        for identity, after in pending.items():
            before = stored[identity]
            if after is None or before is after:
                continue
            place = places.get(identity, _UNKNOWN) if places is not None else _UNKNOWN
            step: list[Change] = []
            if before is None:
                step.append((_time_key(after.time_us, identity), b""))
                self.held += 1
            elif before.time_us != after.time_us:
                old = _time_key(before.time_us, identity)
                if self.store.get(old) is not None:
                    step += [(old, None), (_time_key(after.time_us, identity), b"")]
            value = _encoder.encode(after)
            step.append((entry_key(identity), value))
            changes += step
            if (
                tag is not None
                and isinstance(place, tuple)
                and before is not None
                and before.time_us == after.time_us
                and not after.challengers
            ):
                groups.setdefault(place[0], []).append((identity, value))
                apart += step[:-1]
            else:
                apart += step
            self._entry_written(identity, place)
        joins = len(changes)
        changes += _joins_records(groups, tag)
        written = self._written(changes, counts)
        if tag is not None:
            self.sent = apart + written[joins:]
        return written

    def _written(self, changes: list[Change], counts: LedgerCounts) -> list[Change]:
        """Write ``changes`` and the counts (when they moved) in one batch; the changes."""
        if counts != self.counts:
            changes.append((_COUNTS, _encoder.encode(counts)))
        if changes:
            self.store.write(changes)
        self.counts = counts
        return changes


def _plain_at(batch: PredictionBatch, entries: bytearray, named: np.ndarray) -> np.ndarray | None:
    """The rows of ``named`` (offsets ascending, none above the batch's last) in ``batch``.

    None: an offset not in the batch, or a row that may have an entry.
    """
    if batch.offsets:
        batch_offsets = batch.offsets_array()
        at = np.searchsorted(batch_offsets, named)
        if at[-1] >= len(batch_offsets) or (batch_offsets[at] != named).any():
            return None
    else:  # consecutive from its first offset: a row is the offset's distance from it
        at = named - batch.first_offset
        if at[0] < 0:
            return None
    if np.frombuffer(entries, dtype=np.uint8)[at].any():
        return None
    return at


_PlainRows = tuple[list[int], list[float], list[tuple[int, int, "PredictionBatch", bytearray, int]]]
"""What :meth:`PredictionLedger._plain_rows` finds: rows, scores, and the runs."""

_DECODED_BATCHES = 64
"""Batches :meth:`PredictionLedger.get` keeps decoded (a label batch names a few recent ones)."""

_TRACKED_BATCHES = 4096
"""Batches whose rows' entries the ledger tracks (a byte per prediction: at most about 4 MB
a partition with batches of 1,000); a label for an older batch reads the store."""


def _joins_range(last: int) -> tuple[bytes, bytes]:
    """The keys of the joins records of the batch ending at ``last``: ``[low, high)``."""
    low = JOIN_PREFIX + last.to_bytes(8, "big")
    return low, low + b"\xff" * 9


def _joins_records(groups: dict[int, list[tuple[bytes, bytes]]], tag: int | None) -> list[Change]:
    """One joins record per batch of ``groups`` (by last offset): its labelled entries."""
    if tag is None:
        return []
    return [(joins_key(last, tag), encode_joins(entries)) for last, entries in groups.items()]


def _plain(batch: PredictionBatch, row: int) -> Prediction:
    """The champion's unlabelled prediction of a batch's row, as its entry would hold it.

    :meth:`PredictionLedger._join_rows` makes the same, with its label, inline.
    """
    (score,) = _SCORE.unpack_from(batch.scores, 8 * row)
    time_us = batch.time_us
    return Prediction(time_us, ModelScore(batch.name, batch.version, score, time_us), (), None)


def _with_output(prediction: Prediction | None, output: Output) -> Prediction | None:
    """``prediction`` with the output's score, or ``prediction`` itself when the model had one."""
    score = ModelScore(output.name, output.version, output.score, output.time_us)
    if prediction is None:
        if output.challenger:
            return Prediction(output.time_us, None, (score,))
        return Prediction(output.time_us, score, ())
    time_us = min(prediction.time_us, output.time_us)
    if not output.challenger:
        if prediction.champion is not None:
            return prediction
        return msgspec.structs.replace(prediction, time_us=time_us, champion=score)
    if any(c.name == output.name for c in prediction.challengers):
        return prediction
    challengers = tuple(sorted((*prediction.challengers, score), key=lambda c: c.name))
    return msgspec.structs.replace(prediction, time_us=time_us, challengers=challengers)

r"""The prediction ledger: what each model scored for a record, until its label comes or expires.

The ledger lives in a :class:`~streamer.core.state.store.Store` (in memory or
RocksDB), under keys of its own, so that it can share a partition's state
store and its changelog:

- ``L`` ``p`` + identity: the record's :class:`Prediction` (the champion's
  score and version, each challenger's, the prediction time, and its label
  once joined);
- ``L`` ``t`` + prediction time (8 bytes, big-endian, offset by 2^63) +
  identity: an empty value, so that expiring is a range scan in time order;
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

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import msgspec

from streamer.core.labels.join import DUPLICATE, PAST_HORIZON, UNMATCHED, Label, Output
from streamer.core.state.store import Change, Store

PREFIX = b"L"
ENTRY_PREFIX = _ENTRY = PREFIX + b"p"
TIME_PREFIX = _BY_TIME = PREFIX + b"t"
COUNTS_KEY = _COUNTS = PREFIX + b"m"
TIME_BIAS = _TIME_BIAS = 1 << 63
_SCORE = struct.Struct(">d")


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


@dataclass(frozen=True, slots=True)
class Joined:
    """A prediction with its label: what the metrics window holds."""

    identity: bytes
    prediction: Prediction

    @property
    def label(self) -> LedgerLabel:
        """The label (a joined prediction has one)."""
        assert self.prediction.label is not None
        return self.prediction.label


_encoder = msgspec.msgpack.Encoder()
_prediction = msgspec.msgpack.Decoder(Prediction)
_counts = msgspec.msgpack.Decoder(LedgerCounts)


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


def current_changes(ledger: PredictionLedger, identities: Iterable[bytes]) -> list[Change]:
    """The stored values of these records' entries, as changes (a replay sends them again)."""
    changes: list[Change] = []
    for identity in dict.fromkeys(identities):
        raw = ledger.store.get(entry_key(identity))
        if raw is not None:
            prediction = _prediction.decode(raw)
            changes += [(_time_key(prediction.time_us, identity), b""), (entry_key(identity), raw)]
    return changes


def held_delta(changes: Iterable[Change]) -> int:
    """How many predictions these changes add to a ledger (negative: remove)."""
    delta = 0
    for key, value in changes:
        if key[:2] == _BY_TIME:
            delta += 1 if value is not None else -1
    return delta


def labelled(store: Store) -> tuple[int, list[Joined]]:
    """Every prediction a ledger's store holds (a count) and those labelled (a full scan)."""
    held = 0
    joined: list[Joined] = []
    for key, raw in store.items_from(_ENTRY):
        held += 1
        prediction = _prediction.decode(raw)
        if prediction.label is not None:
            joined.append(Joined(key[len(_ENTRY) :], prediction))
    return held, joined


class PredictionLedger:
    """Predictions by identity, joined to labels, expired after ``horizon_us``.

    Args:
        store: Where the ledger lives (its keys start with ``L``).
        horizon_us: How long a prediction waits for its label.
    """

    def __init__(self, store: Store, horizon_us: int) -> None:
        self.store = store
        self.horizon_us = horizon_us
        raw = store.get(_COUNTS)
        self.counts = _counts.decode(raw) if raw is not None else LedgerCounts()

    def get(self, identity: bytes) -> Prediction | None:
        """The prediction held for ``identity``, or None."""
        raw = self.store.get(entry_key(identity))
        return _prediction.decode(raw) if raw is not None else None

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

    def record_champion(
        self,
        identities: Sequence[bytes],
        scores: Sequence[float],
        model: tuple[str, str],
        time_us: int,
        *,
        new: bool = False,
    ) -> tuple[list[Joined], list[Change]]:
        """:meth:`record` of the champion's scores of a batch, all made at ``time_us``.

        The same changes in the same order as :meth:`record`, made cheaply in the
        common case (every record new to the ledger, each once); else :meth:`record`.
        ``new``: the caller knows that every identity is new and comes once (the
        store is not read).
        """
        name, version = model
        get = self.store.get
        if not new and (
            len(set(identities)) != len(identities)
            or any(get(_ENTRY + identity) is not None for identity in identities)
        ):
            return self.record(
                [
                    Output(identity, False, name, version, score, time_us)
                    for identity, score in zip(identities, scores, strict=True)
                ]
            )
        by_time = _BY_TIME + (time_us + _TIME_BIAS).to_bytes(8, "big")
        changes: list[Change] = []
        append = changes.append
        values = plain_values(time_us, name, version, scores)
        for identity, value in zip(identities, values, strict=True):
            append((by_time + identity, b""))
            append((_ENTRY + identity, value))
        if changes:
            self.counts = msgspec.structs.replace(
                self.counts, outputs=self.counts.outputs + len(identities)
            )
            changes.append((_COUNTS, _encoder.encode(self.counts)))
            self.store.write(changes)
        return [], changes

    def join(self, labels: Sequence[Label]) -> tuple[list[Joined], list[str], list[Change]]:
        """Join each label to its prediction: the first label of a record joins, once.

        Returns:
            The joined predictions, the reason of each label that joined nothing
            (``unmatched``, ``duplicate``, ``past_horizon``), and the changes written.
        """
        stored: dict[bytes, Prediction | None] = {}
        pending: dict[bytes, Prediction | None] = {}
        joined: list[Joined] = []
        reasons: list[str] = []
        for label in labels:
            if label.identity not in pending:
                stored[label.identity] = pending[label.identity] = self.get(label.identity)
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
        by_reason = dict(self.counts.labels)
        for reason in reasons:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        counts = msgspec.structs.replace(
            self.counts, joined=self.counts.joined + len(joined), labels=by_reason
        )
        return joined, reasons, self._write(stored, pending, counts)

    def expire(self, now_us: int) -> tuple[int, list[Change]]:
        """Delete the predictions made more than the horizon before ``now_us``.

        Returns:
            How many of them never got a label, and the changes written.
        """
        cutoff = now_us - self.horizon_us
        if cutoff <= -_TIME_BIAS:
            return 0, []
        high = _BY_TIME + (min(cutoff, _TIME_BIAS - 1) + _TIME_BIAS).to_bytes(8, "big")
        changes: list[Change] = []
        unlabelled = labelled = 0
        for time_key in self.store.keys_between(_BY_TIME, high):
            identity = time_key[len(_BY_TIME) + 8 :]
            prediction = self.get(identity)
            if prediction is not None and prediction.label is None:
                unlabelled += 1
            else:
                labelled += 1
            changes += [(time_key, None), (entry_key(identity), None)]
        if not changes:
            return 0, []
        self.counts = msgspec.structs.replace(
            self.counts,
            expired_unlabelled=self.counts.expired_unlabelled + unlabelled,
            expired_labelled=self.counts.expired_labelled + labelled,
        )
        changes.append((_COUNTS, _encoder.encode(self.counts)))
        self.store.write(changes)
        return unlabelled, changes

    def held(self) -> tuple[int, int]:
        """How many predictions the ledger holds: (unlabelled, labelled)."""
        unlabelled = labelled = 0
        for _, raw in self.store.items_from(_ENTRY):
            if _prediction.decode(raw).label is None:
                unlabelled += 1
            else:
                labelled += 1
        return unlabelled, labelled

    def _write(
        self,
        stored: dict[bytes, Prediction | None],
        pending: dict[bytes, Prediction | None],
        counts: LedgerCounts,
    ) -> list[Change]:
        """Write what changed from ``stored`` to ``pending``, and the counts, in one batch."""
        changes: list[Change] = []
        for identity, after in pending.items():
            before = stored[identity]
            if after is None or before is after:
                continue
            if before is not None and before.time_us != after.time_us:
                changes.append((_time_key(before.time_us, identity), None))
            if before is None or before.time_us != after.time_us:
                changes.append((_time_key(after.time_us, identity), b""))
            changes.append((entry_key(identity), _encoder.encode(after)))
        if counts != self.counts:
            changes.append((_COUNTS, _encoder.encode(counts)))
        if changes:
            self.store.write(changes)
        self.counts = counts
        return changes


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

"""The live path's pure parts: a scored batch's predictions, a label batch, the ledger's marks.

The producer actor holds a :class:`~streamer.topology.labels.LedgerKeeper`
(one :class:`~streamer.core.labels.ledger.PredictionLedger` per input
partition); what it records and joins is read here, with no client and no
actor:

- :func:`model_outputs`: the champion's (or a challenger's) prediction for
  each scored row of a batch, with the record's identity;
- :func:`read_label_batch`: the labels of a batch of the labels topic, and a
  dead letter (:class:`~streamer.messages.Rejection`) for each malformed one;
  :func:`read_label_columns`: a batch of labels all in the common form, in columns;
- :class:`LedgerMarks` and :func:`ledger_meta`: what each write of a
  partition's ledger ends with, so that its changelog can be restored by the
  state's rule (:mod:`streamer.core.state.restore`): the ledger's changes up to
  the last meta record, and a local store used only when exactly as far.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import orjson

from streamer.core.labels.join import (
    CLASSIFICATION,
    MALFORMED,
    MISROUTED,
    QUICK_TIME_MS,
    Label,
    LabelSpec,
    Output,
    Rejected,
    coordinates_identities,
    coordinates_labels,
    quick_label,
    read_label,
    record_id_identity,
    record_identity,
)
from streamer.core.state.changelog import safe_group
from streamer.core.state.codec import CODEC_VERSION, META_KEY, Meta, encode
from streamer.core.state.declared import RECORD_KEY
from streamer.core.state.store import Change
from streamer.messages import Rejection, SourceBatch

if TYPE_CHECKING:
    from streamer.settings import LabelsSettings

LABELS_STAGE = "labels"
"""The stage of a label's dead letter (its ``streamer.stage`` header)."""

LEDGER_FINGERPRINT = "prediction-ledger-4"
"""The ledger changelog's fingerprint in its meta records: a state changelog is never one.

Format 3 adds the ``Lj`` records (a label batch's joins, per scored batch), which a version of
format 2 would store without their entries: it refuses a changelog of format 3 (exit 2).
Format 4 writes a batch of consecutive offsets without them (``PredictionBatch.offsets``
empty), which a version of format 3 would read as a batch of none: it refuses format 4."""

LEDGER_FINGERPRINTS_READ = frozenset(
    {"prediction-ledger-2", "prediction-ledger-3", LEDGER_FINGERPRINT}
)
"""The formats this version restores: formats 2 and 3 have only records format 4 reads."""

MARKS_KEY = b"Lo"
"""The store key of a partition's :class:`LedgerMarks` (beside the ledger's own keys)."""


def label_spec(labels: LabelsSettings, challengers: Iterable[str]) -> LabelSpec:
    """``[labels]`` and the ``[[challenger]]`` names as the join reads them."""
    return LabelSpec(
        id_field=labels.id_field,
        value_field=labels.value_field,
        time_field=labels.time_field,
        task=labels.task,
        score_field=labels.score_field,
        horizon_us=round(labels.horizon_s * 1e6),
        challengers=frozenset(challengers),
    )


def ledger_topic_name(ledger_topic: str, group_id: str, input_topic: str) -> str:
    """``labels.ledger_topic``, or ``<group>.<input>.ledger-changelog`` (group sanitised)."""
    if ledger_topic:
        return ledger_topic
    return f"{safe_group(group_id)}.{input_topic}.ledger-changelog"


class LedgerMarks(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """How far a partition's ledger went: written with every change, in the same store write."""

    writes: int = 0
    """Writes of the ledger so far: its meta record's ``last_offset`` (see :func:`ledger_meta`)."""
    input_offset: int = -1
    """The last input offset whose champion prediction was recorded: a lower one is a replay."""
    label_offset: int = -1
    """The last labels offset joined: a label at or below it is a replay and joins nothing."""
    clock_us: int | None = None
    """The partition's clock: the newest prediction or label time seen (expiry runs on it)."""


_marks = msgspec.msgpack.Decoder(LedgerMarks)


def decode_marks(raw: bytes | None) -> LedgerMarks:
    """The marks in the store (a fresh ledger's when there are none)."""
    return _marks.decode(raw) if raw is not None else LedgerMarks()


def ledger_meta(topic: str, partition: int, writes: int) -> Meta:
    """The meta record that ends a ledger write: ``last_offset`` counts the writes.

    A label's join moves no input offset, so the input offset cannot tell a
    local store ahead of its changelog (a join never acknowledged) from one
    that is current; the count of writes can.
    """
    return Meta(CODEC_VERSION, LEDGER_FINGERPRINT, topic, partition, writes, (), 0)


def closing_changes(topic: str, partition: int, marks: LedgerMarks) -> list[Change]:
    """The marks and the meta record (last) that end a write."""
    return [
        (MARKS_KEY, msgspec.msgpack.encode(marks)),
        (META_KEY, encode(ledger_meta(topic, partition, marks.writes))),
    ]


def score_column(
    predictions: np.ndarray, output_names: Sequence[str], score_field: str
) -> np.ndarray | None:
    """The output named ``score_field`` of each prediction row, or None if the model has none."""
    if score_field not in output_names:
        return None
    if predictions.ndim == 1:
        return predictions
    return predictions[:, list(output_names).index(score_field)]


def model_outputs(
    spec: LabelSpec,
    source: SourceBatch,
    rows: Sequence[int],
    scores: Sequence[float],
    model: tuple[str, str, bool],
    time_us: int,
) -> list[Output]:
    """Each scored row's prediction with its record's identity, in row order.

    ``model`` is ``(name, version, challenger)``. A row without an identity (no
    key with ``$key``, a record without the id field) or with a score that is
    not a finite number is not recorded: no label can join it.
    """
    name, version, challenger = model
    identities, kept, _offsets = scored_identities(spec, source, rows, scores)
    return [
        Output(identity, challenger, name, version, score, time_us)
        for identity, score in zip(identities, kept, strict=True)
    ]


def scored_identities(
    spec: LabelSpec,
    source: SourceBatch,
    rows: Sequence[int],
    scores: Sequence[float],
) -> tuple[list[bytes], list[float], list[int]]:
    """The identity, score and offset of each row that can be recorded (:func:`model_outputs`)."""
    finite = [(row, float(score)) for row, score in zip(rows, scores, strict=True)]
    if not all(math.isfinite(score) for _row, score in finite):
        finite = [(row, score) for row, score in finite if math.isfinite(score)]
    id_field = spec.id_field
    if not id_field:
        offsets = source.offsets
        kept_offsets = [offsets[row] for row, _score in finite]
        identities = coordinates_identities(source.topic, source.partition, kept_offsets)
        return identities, [score for _row, score in finite], kept_offsets
    identities = []
    kept: list[float] = []
    kept_offsets = []
    for row, score in finite:
        if id_field == RECORD_KEY:
            key = source.keys[row]
            if key is None:
                continue
            identity = record_id_identity(key)
        else:
            try:
                value = source.values[row]
                doc = orjson.loads(value) if value is not None else None
                identity = record_identity(doc, source.keys[row], id_field)
            except (orjson.JSONDecodeError, Rejected):
                continue
        identities.append(identity)
        kept.append(score)
        kept_offsets.append(source.offsets[row])
    return identities, kept, kept_offsets


@dataclass(frozen=True, slots=True)
class LabelRead:
    """A label batch, read: each label with its offset, and a dead letter per malformed one."""

    labels: list[Label]
    offsets: list[int]
    rejections: list[Rejection]
    record_offsets: list[int] | None = None
    """With ``input_topic`` given, by source coordinates: each label's record offset when
    it names ``input_topic`` (its partition is the batch's), else -1."""


def read_label_batch(
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    partition: int,
    spec: LabelSpec,
    input_topic: str = "",
) -> LabelRead:
    """Read every label of a batch of labels partition ``partition``; never raises for a label.

    With source coordinates (``id_field`` empty), a label whose ``partition``
    is not ``partition`` is ``misrouted``: its record's ledger is another
    partition's, which this member may not hold. ``input_topic``: also give each
    label's record offset (:attr:`LabelRead.record_offsets`), for a join in columns.
    """
    labels: list[Label] = []
    label_offsets: list[int] = []
    rejections: list[Rejection] = []
    # By source coordinates, at top-level fields: most labels take quick_label's way.
    quick = not spec.id_field and not any(
        "." in field or field.startswith("$") for field in (spec.value_field, spec.time_field)
    )
    record_offsets: list[int] | None = [] if input_topic and not spec.id_field else None
    for index, (offset, key, value) in enumerate(zip(offsets, keys, values, strict=True)):
        try:
            try:
                doc: Any = orjson.loads(value) if value is not None else None
            except orjson.JSONDecodeError as exc:
                raise Rejected(MALFORMED, f"the label is not JSON: {exc}") from None
            label = (quick and quick_label(doc, spec)) or read_label(doc, key, spec)
            if not spec.id_field and doc["partition"] != partition:
                raise Rejected(  # noqa: TRY301 - one place turns every reason into a dead letter
                    MISROUTED,
                    f"the label names partition {doc['partition']!r} but came on labels "
                    f"partition {partition}; produce it to the partition of its record",
                )
        except Rejected as rejected:
            rejections.append(Rejection(index, rejected.reason, rejected.detail, LABELS_STAGE))
            continue
        labels.append(label)
        label_offsets.append(offset)
        if record_offsets is not None:
            # The label's identity is coordinates_identity(topic, partition, offset) of its
            # fields, whatever way read it: an int offset of input_topic names a record here.
            record = doc["offset"]
            record_offsets.append(
                record if doc["topic"] == input_topic and type(record) is int else -1
            )
    return LabelRead(labels, label_offsets, rejections, record_offsets)


@dataclass(frozen=True, slots=True)
class LabelColumns:
    """A label batch whose labels all name records of one input partition, in columns.

    What :func:`read_label_batch` reads of such a batch, without a :class:`Label` or an
    identity per label (the join makes the identities of the labels it joins).
    """

    topic: str
    partition: int
    records: list[int]
    """Each label's record offset in ``topic``/``partition``."""
    values: list[float]
    times: list[int] | None
    """Each label's time (µs); None when labels have no time (``time_field`` empty)."""

    def labels(self) -> list[Label]:
        """The labels as :func:`read_label_batch` reads them (for the label-by-label join)."""
        return coordinates_labels(self.topic, self.partition, self.records, self.values, self.times)


def read_label_columns(
    values: Sequence[bytes | None], partition: int, spec: LabelSpec, input_topic: str
) -> LabelColumns | None:
    """The labels of a batch in columns when each is in the common form; else None.

    The common form (:func:`~streamer.core.labels.join.quick_label`'s), by source
    coordinates at top-level fields, naming a record of ``input_topic`` in
    ``partition`` (the labels partition read). A batch with any other label (another
    form, another topic, misrouted, malformed) is None: :func:`read_label_batch` reads
    it, with the same labels and a dead letter for each malformed one.
    """
    value_field, time_field = spec.value_field, spec.time_field
    if (
        spec.id_field
        or not input_topic
        or not value_field
        or any("." in field or field.startswith("$") for field in (value_field, time_field))
    ):
        return None
    classification = spec.task == CLASSIFICATION
    loads = orjson.loads
    records: list[int] = []
    labelled: list[float] = []
    times: list[int] | None = [] if time_field else None
    try:
        for raw in values:
            # Not an object (TypeError), a field missing (KeyError), not JSON, a tombstone:
            # read_label_batch reads the batch.
            doc = loads(raw or b"")
            record, value, named = doc["offset"], doc[value_field], doc["partition"]
            if (
                doc["topic"] != input_topic
                or type(named) is not int
                or named != partition
                or type(record) is not int
                or type(value) is not int
                or record < 0
                or not (value in (0, 1) if classification else -(2**53) < value < 2**53)
            ):
                return None
            if times is not None:
                at = doc[time_field]
                if type(at) is not int or not -QUICK_TIME_MS < at < QUICK_TIME_MS:
                    return None
                times.append(at * 1000)
            records.append(record)
            labelled.append(float(value))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return LabelColumns(input_topic, partition, records, labelled, times)

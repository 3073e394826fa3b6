"""Frozen dataclasses passed between actors.

Commands flow down the pipeline (``ScoreBatch`` -> ``FeatureBatch`` ->
``ScoredBatch``); events flow back (``BatchAcked``). Each message carries a
whole micro-batch so that one ``tell`` (about 4 us) is paid per batch, never
per record. Every message that crosses from one actor (or the topology) to
another is defined here; a message an actor sends only to itself stays private
in its module. The replies to the control messages are frozen dataclasses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamer.core.records import TP

if TYPE_CHECKING:
    from streamer.actors.routing import Teller
    from streamer.core.labels.ledger import Joined, LedgerCounts
    from streamer.core.models import Model


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """A micro-batch of raw records from one topic-partition, in offset order.

    ``seq`` numbers the batches of one partition in dispatch order, so that the
    producer can restore the order after parallel stages.
    """

    batch_id: int
    topic: str
    partition: int
    seq: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps_ms: list[int]
    dispatched_at: float
    epoch: int = 0
    # Each record's input headers, when kafka.propagate_headers names some (else None).
    headers: list[list[tuple[str, bytes]]] | None = None
    # Declared [[state.features]] (topology/state.py), set by the consumer before the batch
    # is kept for rewinds. ``values`` stay the original bytes (dead letters carry them).
    state_rejections: tuple[Rejection, ...] = ()
    """The records the state dead-letters (stage ``state``): never prepared nor scored."""
    changelog: tuple[tuple[bytes, bytes | None], ...] = ()
    """The batch's store changes, in order, its meta record last: sent with its answers."""
    state_names: tuple[str, ...] = ()
    state_values: ServedValues | None = None
    """The features each record was served, in ``state_names`` order (None: no state): the
    preparation places them by name (core/preparation.py), and ``state.log_features``
    logs them."""

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def first_offset(self) -> int:
        """The first offset of the batch."""
        return self.offsets[0]

    @property
    def last_offset(self) -> int:
        """The last offset of the batch."""
        return self.offsets[-1]


@dataclass(frozen=True, slots=True, eq=False)
class ServedValues:
    """What the state served a batch's records: one float64 block, a row per record.

    ``matrix[i]`` holds record i's values (``SourceBatch.state_names`` order).
    A record served none (rejected by the state, its reason in
    ``state_rejections``, or not a JSON object) has a row of NaN and its index
    in ``absent``: NaN is never read as a value (a sum of floats may be one).
    One array for the batch instead of a struct and a tuple of floats per
    record: freeing a delivered batch frees two objects, not thousands. Equal only to
    itself (an array has no one truth value): compare :meth:`rows`.
    """

    matrix: np.ndarray
    absent: frozenset[int] = frozenset()

    @classmethod
    def of(cls, rows: Sequence[tuple[float, ...] | None], width: int) -> ServedValues:
        """The block of rows given one by one (None: none served), for tests and tools."""
        matrix = np.full((len(rows), width), np.nan)
        for at, values in enumerate(rows):
            if values is not None:
                matrix[at] = values
        return cls(matrix, frozenset(at for at, values in enumerate(rows) if values is None))

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def row(self, index: int) -> tuple[float, ...] | None:
        """Record ``index``'s values as floats (None: none served)."""
        if index in self.absent:
            return None
        return tuple(self.matrix[index].tolist())

    def rows(self) -> list[tuple[float, ...] | None]:
        """Each record's values as floats, the same doubles (None: none served)."""
        absent = self.absent
        return [
            None if at in absent else tuple(values)
            for at, values in enumerate(self.matrix.tolist())
        ]

    def tail(self, cut: int) -> ServedValues:
        """The values of records ``cut`` on."""
        return ServedValues(
            self.matrix[cut:], frozenset(at - cut for at in self.absent if at >= cut)
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one record of a batch is not scored: it goes to the dead-letter topic."""

    index: int
    reason: str
    detail: str
    stage: str


@dataclass(frozen=True, slots=True)
class ScoreBatch:
    """Consumer -> preprocessor: decode and prepare these records."""

    source: SourceBatch


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Preprocessor -> model: a standardized feature matrix for the valid rows."""

    source: SourceBatch
    features: np.ndarray
    valid_rows: np.ndarray
    rejections: tuple[Rejection, ...]
    dropped_rows: tuple[int, ...] = ()
    preprocess_seconds: float = 0.0
    # The preparation_key of the spec the features were prepared with; a model
    # actor whose model has another key prepares the batch again ("": unknown).
    spec_key: str = ""


@dataclass(frozen=True, slots=True)
class SwapModel:
    """Topology -> preprocessors and models: use this (fully loaded) model from the next batch."""

    model: Model


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """Model -> producer: one prediction row per valid record."""

    source: SourceBatch
    predictions: np.ndarray
    output_names: tuple[str, ...]
    valid_rows: np.ndarray
    rejections: tuple[Rejection, ...]
    dropped_rows: tuple[int, ...]
    model_name: str
    model_version: str
    preprocess_seconds: float = 0.0
    model_seconds: float = 0.0
    reasons: tuple[bytes, ...] = ()
    """One JSON array of reason codes per prediction row (``model.explain_top_k``), or none."""


@dataclass(frozen=True, slots=True)
class BatchAcked:
    """Producer -> consumer: the broker acknowledged every output of a batch.

    When ``error`` is set, at least one output was not delivered and the batch's
    offsets must never be committed.
    """

    batch_id: int
    topic: str
    partition: int
    error: str | None = None
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class BatchProduced:
    """Producer -> consumer: a batch's answers are with the client, waiting for the broker.

    No stage holds the batch any more, so the consumer's micro-batcher no longer
    counts it as work queued in the pipeline (see ``Ledger.take``).
    """

    batch_id: int


@dataclass(frozen=True, slots=True)
class BatchPartlyDelivered:
    """Producer -> consumer, before the producer dies: the answers below an offset are in.

    The broker acknowledged the answer of every record of the batch below
    ``answered_below``, in input order, before a connection-level failure.
    A :class:`Rewind` then sends only the rest of the batch again.
    """

    batch_id: int
    topic: str
    partition: int
    answered_below: int


@dataclass(frozen=True, slots=True)
class PartitionsAssigned:
    """Consumer -> producer (labels on), an ask: these partitions joined; open their ledgers.

    The producer restores each input partition's prediction ledger and answers;
    the consumer's client fetches meanwhile, but no batch is cut (and the member
    is not ready) until the answer: the restore (a store opened, the changelog
    probed) holds the GIL, and a batch cut before it would wait behind it
    (docs/labels.md).
    """

    tps: tuple[TP, ...]


@dataclass(frozen=True, slots=True)
class PartitionsRevoked:
    """Consumer -> producer: these partitions left; their batches dispatched before are abandoned.

    The producer sends no state changelog record of such a batch
    (``dispatched_at < before``): another member may own the partition's state
    by now, and an old batch's changes must not land after its own. Asked (not
    told) by the consumer's revoke: the producer answers once the broker has
    acknowledged every record it had already sent (at most ``flush_s``), so that
    no changelog record of this member's is still on its way when the next owner
    restores.
    """

    tps: tuple[TP, ...]
    before: float
    flush_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StateFlush:
    """Consumer -> producer: one partition's state changes gathered over an interval.

    Sent to the changelog topic (partition = the input partition), its meta
    record last, independently of any batch; the producer answers
    :class:`StateFlushed` once the broker acknowledged every record. ``epoch``
    and ``seq`` (numbering a partition's flushes in an epoch from 0) let the
    producer keep the changelog's order: it drops a flush of an older epoch,
    and one whose predecessor it did not get (lost with a producer that died;
    the rewind sends them all again, in order).
    """

    topic: str
    partition: int
    flush_id: int
    changes: tuple[tuple[bytes, bytes | None], ...]
    made_at: float
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class StateFlushed:
    """Producer -> consumer: the broker acknowledged every record of a :class:`StateFlush`."""

    topic: str
    partition: int
    flush_id: int


@dataclass(frozen=True, slots=True)
class LedgerHeld:
    """Producer -> consumer: a prediction ledger's durable bounds moved.

    ``input_from`` (``labels_from``) is the first offset of the input (labels)
    partition ``partition`` whose ledger changes are not all acknowledged in the
    ledger's changelog (None: every one is). The commit never passes them, and
    the consumer keeps the batches above them for a rewind (docs/labels.md). The
    producer tells it before it sends the batch it covers, so the consumer has
    it before that batch's :class:`BatchAcked`.
    """

    partition: int
    input_from: int | None
    labels_from: int | None


@dataclass(frozen=True, slots=True)
class Attach:
    """Topology -> consumer: the preprocessors to feed; fetching starts now."""

    preprocessors: list[Teller]


@dataclass(frozen=True, slots=True)
class Rewind:
    """Topology -> consumer: a stage was restarted; re-dispatch all unacknowledged work.

    Every batch still below the watermark is sent again, in partition order,
    tagged with the new ``epoch``. The producer drops batches of older epochs,
    so the outputs of each partition come out in order again (with duplicates
    of what was already delivered: at least once). Reply: :class:`Rewound`.
    """

    epoch: int


@dataclass(frozen=True, slots=True)
class StopFetching:
    """Topology -> consumer: stop taking new records; keep acking and committing.

    The consumer first dispatches what it buffered. Reply: :class:`ConsumerStatus`.
    """


@dataclass(frozen=True, slots=True)
class CommitNow:
    """Topology -> consumer: commit the watermark synchronously (reply: offsets)."""


@dataclass(frozen=True, slots=True)
class GetStatus:
    """Ask an actor for its status (reply: its ``*Status`` below); for control and tests."""


@dataclass(frozen=True, slots=True)
class GetInFlight:
    """Topology -> consumer: how much dispatched work is unacknowledged (reply: InFlight)."""


@dataclass(frozen=True, slots=True)
class InFlight:
    """Consumer -> topology: the work not yet acknowledged; the drain waits for no batches."""

    batches_in_flight: int
    records_in_flight: int
    bytes_in_flight: int


@dataclass(frozen=True, slots=True)
class Flush:
    """Topology -> producer: block until every sent record is acknowledged."""

    timeout_s: float


# --- replies ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """The consumer's reply to :class:`GetStatus` and :class:`StopFetching`.

    A batch is in flight from its dispatch until it is below the watermark.
    ``watermarks`` are the commit offsets that are safe now, ``committed`` those
    the broker accepted.
    """

    fetching: bool
    paused: bool
    assigned: list[TP]
    batches_in_flight: int
    records_in_flight: int
    bytes_in_flight: int
    records_dispatched: int
    records_buffered: int
    epoch: int
    watermarks: dict[TP, int]
    committed: dict[TP, int]
    state_keys: int = 0
    """Keys in the state of the assigned partitions (declared [[state.features]])."""


@dataclass(frozen=True, slots=True)
class Rewound:
    """The consumer's reply to :class:`Rewind`: how many batches it sent again."""

    epoch: int
    batches_resent: int


@dataclass(frozen=True, slots=True)
class ProducerStatus:
    """The producer's reply to :class:`GetStatus`."""

    waiting_for_order: int
    batches_produced: int
    unanswerable: int


@dataclass(frozen=True, slots=True)
class MetricsStatus:
    """The metrics actor's reply to :class:`GetStatus`: the bound HTTP port, if serving."""

    port: int | None


# --- metrics events -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordsConsumed:
    """The consumer dispatched a batch."""

    count: int


@dataclass(frozen=True, slots=True)
class BatchDelivered:
    """The producer got broker acknowledgements for a whole batch.

    ``timestamps_ms`` are the Kafka timestamps of the batch's records (the
    source batch's own list, not a copy) and ``acked_at`` the wall-clock time of
    the last acknowledgement: the metrics actor turns them into one end-to-end
    latency per record, off the client's I/O thread.
    """

    produced: int
    dead_letters: dict[str, int]
    dropped: int
    size: int
    batch_seconds: float
    preprocess_seconds: float
    model_seconds: float
    produce_seconds: float
    timestamps_ms: Sequence[int] = ()
    acked_at: float = 0.0
    truncated: int = 0
    unanswerable: int = 0
    changelog_records: int = 0
    """State changelog records the broker acknowledged with the batch."""
    scored: bool = True
    """False for a batch of labels: its dead letters count, not its size nor its latency."""


@dataclass(frozen=True, slots=True)
class ConsumerProgress:
    """The consumer's view of in-flight work, commits, lag and pauses."""

    in_flight_batches: int
    in_flight_records: int
    committed: dict[TP, int]
    lag: dict[TP, int]
    paused_partitions: int
    in_flight_bytes: int = 0


@dataclass(frozen=True, slots=True)
class StateProgress:
    """The state of each assigned partition (topology/state.py); a partition absent is gone.

    ``restored`` counts the changelog records restored since the last report.
    """

    keys: dict[TP, int]
    nbytes: dict[TP, int]
    restoring: dict[TP, bool]
    restore_seconds: dict[TP, float]
    restored: dict[TP, int]


@dataclass(frozen=True, slots=True)
class BreakerTripped:
    """The dead-letter breaker stopped the pipeline; the dominant reason and field."""

    reason: str
    feature: str


@dataclass(frozen=True, slots=True)
class ActorFailed:
    """An actor raised out of ``on_receive`` and died."""

    actor: str
    error: str


@dataclass(frozen=True, slots=True)
class ActorRestarted:
    """The supervisor replaced a dead actor."""

    actor: str


@dataclass(frozen=True, slots=True)
class ModelReloaded:
    """A hot reload of the model ended: ``result`` is 'success', 'unchanged' or 'failure'.

    On 'success', ``name`` and ``version`` are the new model's; otherwise the
    model in use (kept). ``error`` says why a reload failed.
    """

    result: str
    name: str
    version: str
    error: str = ""


@dataclass(frozen=True, slots=True)
class ChallengeBatch:
    """Model -> challenger: a batch the champion scored, to score again in the shadow.

    ``rows`` are the batch positions the champion scored, ``champion_scores``
    its score for each of them.
    """

    batch: FeatureBatch
    rows: np.ndarray
    champion_scores: np.ndarray


# --- delayed labels (docs/labels.md) -----------------------------------------


@dataclass(frozen=True, slots=True)
class LabelBatch:
    """Consumer -> producer: a batch of a labels partition, to join in its input partition's ledger.

    ``source.topic`` is the labels topic; ``source.partition`` is also the input
    partition whose ledger the labels join (the two topics are co-partitioned).
    """

    source: SourceBatch


@dataclass(frozen=True, slots=True)
class ChallengerScored:
    """Challenger -> producer, after its own delivery: its scores, for the prediction ledger.

    ``rows`` index the batch's records (``source.offsets``, ``source.keys``),
    ``scores`` is each row's score (the ``labels.score_field`` output).
    """

    source: SourceBatch
    rows: tuple[int, ...]
    scores: tuple[float, ...]
    name: str
    version: str
    scored_at: str


@dataclass(frozen=True, slots=True)
class LabelsJoined:
    """Producer -> metrics: a partition's labelled predictions that changed, its ledger's counts."""

    partition: int
    joined: tuple[Joined, ...]
    """streamer.core.labels.ledger.Joined: add, or replace by identity."""
    counts: LedgerCounts
    """The partition's cumulative counts (exact through restarts: kept in the store)."""
    held: int
    """Predictions held in the partition's ledger now."""
    reset: bool = False
    """True after a restore: the partition's window starts anew from ``joined``."""


@dataclass(frozen=True, slots=True)
class LabelsRevoked:
    """Producer -> metrics: these partitions' windows leave this member."""

    partitions: tuple[int, ...]

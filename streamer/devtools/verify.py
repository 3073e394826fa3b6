"""Read topics back and check that every input has an answer (the demo, the tests, the bench).

:func:`reconcile_topics` streams the input, output and dead-letter topics
through the range-based :class:`~streamer.core.reconcile.Reconciler`: it keeps
offsets as ranges, never the records, so a run of any length reconciles in
memory that grows with partitions and gaps only. Predictions name their input
in the ``partition`` and ``offset`` fields of their JSON document; dead letters
in the ``streamer.source.partition`` and ``streamer.source.offset`` headers.

The topics are read with the installed client (confluent-kafka when it can be
imported, else kafka-python), through the ``read_records`` function of its
backend module. The deadline follows progress: reading gives up only when
nothing arrived and no partition reached its end for ``idle_timeout_s``.

:func:`read_topic` keeps every record, for the tests that look at the
documents themselves; :func:`reconcile` counts such dumps with the same
reconciler.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from streamer.clients.base import Headers
from streamer.core.reconcile import Reconciler, Reconciliation
from streamer.core.records import TP, RecordColumns
from streamer.settings import KafkaSettings

__all__ = [
    "Reconciler",
    "Reconciliation",
    "TopicDump",
    "read_topic",
    "reconcile",
    "reconcile_topics",
    "source_of_dead_letter",
    "source_of_output",
]

DEFAULT_IDLE_TIMEOUT_S = 30.0
READERS = {
    "confluent": "streamer.clients.confluent",
    "kafka-python": "streamer.clients.kafka_python",
}

OnBatch = Callable[[TP, RecordColumns, list[Headers]], None]
Reader = Callable[..., dict[TP, int]]


def reader(client: str | None = None) -> Reader:
    """``read_records`` of ``client`` (None: confluent-kafka if importable, else kafka-python)."""
    if client is not None:
        module = importlib.import_module(READERS[client])
    else:
        try:
            module = importlib.import_module(READERS["confluent"])
        except ImportError:
            module = importlib.import_module(READERS["kafka-python"])
    read: Reader = module.read_records
    return read


def source_of_output(value: bytes | None) -> tuple[int, int]:
    """The input (partition, offset) that a prediction names in its document."""
    try:
        doc = orjson.loads(value or b"null")
        return int(doc["partition"]), int(doc["offset"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        msg = f"an output is not a streamer prediction (no partition and offset): {value!r:.120}"
        raise ValueError(msg) from None


def source_of_dead_letter(headers: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
    """The input (partition, offset) that a dead letter names in its headers."""
    named = dict(headers)
    try:
        return int(named["streamer.source.partition"]), int(named["streamer.source.offset"])
    except (KeyError, ValueError):
        msg = f"a dead letter has no streamer.source.partition/offset headers: {sorted(named)}"
        raise ValueError(msg) from None


def _grouped(sources: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    by_partition: dict[int, list[int]] = {}
    for partition, offset in sources:
        offsets = by_partition.get(partition)
        if offsets is None:
            offsets = by_partition[partition] = []
        offsets.append(offset)
    return by_partition


class TopicFeeder:
    """An ``on_batch`` for a reader that feeds the records of three topics to a Reconciler."""

    def __init__(
        self, reconciler: Reconciler, input_topic: str, output_topic: str, dead_letter_topic: str
    ) -> None:
        self.reconciler = reconciler
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic

    def __call__(self, tp: TP, records: RecordColumns, headers: list[Headers]) -> None:
        topic, partition = tp
        reconciler = self.reconciler
        if topic == self.input_topic:
            reconciler.add_inputs(partition, records.offsets)
        elif topic == self.output_topic:
            for source, offsets in _grouped(map(source_of_output, records.values)).items():
                reconciler.add_scored(source, offsets)
        elif topic == self.dead_letter_topic:
            for source, offsets in _grouped(map(source_of_dead_letter, headers)).items():
                reconciler.add_dead_lettered(source, offsets)


def reconcile_topics(
    bootstrap_servers: str,
    input_topic: str,
    output_topic: str,
    dead_letter_topic: str,
    *,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    on_progress: Callable[[int, int], None] | None = None,
    committed: Mapping[int, int] | None = None,
    client: str | None = None,
) -> Reconciliation:
    """Read the three topics to their ends, at once, and reconcile them by offsets.

    Args:
        bootstrap_servers: The broker.
        input_topic: The pipeline's input topic.
        output_topic: Its predictions.
        dead_letter_topic: Its dead letters.
        idle_timeout_s: Give up after this long without progress.
        on_progress: Called about once a second with (records read, records known).
        committed: Only the inputs below these offsets (input partition ->
            committed offset) must be answered, as in a run that was stopped early.
        client: ``"confluent"`` or ``"kafka-python"``; None picks the installed one.

    Raises:
        BrokerError: A topic could not be read to its end (no progress for
            ``idle_timeout_s``, or the broker is unreachable).
        ValueError: An output or a dead letter does not name its input.
    """
    reconciler = Reconciler()
    feeder = TopicFeeder(reconciler, input_topic, output_topic, dead_letter_topic)
    reader(client)(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        [input_topic, output_topic, dead_letter_topic],
        feeder,
        idle_timeout_s=idle_timeout_s,
        on_progress=on_progress,
    )
    return reconciler.result(committed)


@dataclass
class TopicDump:
    """Every record of a topic: ``records[(partition, offset)] = (key, value, headers)``."""

    records: dict[tuple[int, int], tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = (
        field(default_factory=dict)
    )

    def __len__(self) -> int:
        return len(self.records)

    def add(self, tp: TP, records: RecordColumns, headers: list[Headers]) -> None:
        """An ``on_batch`` for a reader: keep the records."""
        partition = tp[1]
        for index, offset in enumerate(records.offsets):
            self.records[(partition, offset)] = (
                records.keys[index],
                records.values[index],
                list(headers[index]),
            )


def read_topic(
    bootstrap_servers: str,
    topic: str,
    timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    client: str | None = None,
) -> TopicDump:
    """Every record of a topic, from the beginning to its end (for small topics: tests).

    ``timeout_s`` is the time without progress after which it gives up.
    """
    dump = TopicDump()
    reader(client)(
        KafkaSettings(bootstrap_servers=bootstrap_servers),
        [topic],
        dump.add,
        idle_timeout_s=timeout_s,
    )
    return dump


def reconcile(inputs: TopicDump, outputs: TopicDump, dead_letters: TopicDump) -> Reconciliation:
    """Reconcile topics already read with :func:`read_topic`, with the same Reconciler."""
    reconciler = Reconciler()
    for partition, offsets in _grouped(inputs.records).items():
        reconciler.add_inputs(partition, offsets)
    scored = (source_of_output(value) for _key, value, _headers in outputs.records.values())
    for partition, offsets in _grouped(scored).items():
        reconciler.add_scored(partition, offsets)
    dead = (source_of_dead_letter(headers) for _k, _v, headers in dead_letters.records.values())
    for partition, offsets in _grouped(dead).items():
        reconciler.add_dead_lettered(partition, offsets)
    return reconciler.result()

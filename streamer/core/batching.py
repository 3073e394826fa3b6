"""Micro-batching: turn polled records into per-partition batches of bounded size and age."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.core.records import TP, RecordColumns

# The consumer client's fetch size, derived from batch.max_in_flight_bytes. The
# clients' defaults (50 MiB a fetch, 1 MiB a partition; Tansu applies the 50 MiB
# to each partition, up to about 5 MB) let a client buffer a fetch or more per
# partition beyond the cap. 1/16 of the cap (4 MiB at the default) is the bytes
# of one micro-batch at the default batch.max_in_flight; each backend takes its
# share of it (kafka-python a quarter, see its GroupConsumer). 1 MiB still takes
# thousands of small records a fetch, and a record larger than a fetch still
# comes, alone.
FETCH_BYTES_MIN = 1 << 20
FETCH_BYTES_MAX = 50 << 20


def fetch_max_bytes(max_in_flight_bytes: int) -> int:
    """The consumer's fetch budget: 1/16 of the in-flight cap, 1 to 50 MiB."""
    return max(FETCH_BYTES_MIN, min(FETCH_BYTES_MAX, max_in_flight_bytes // 16))


def columns_bytes(records: RecordColumns) -> int:
    """The bytes of the records' keys and values (a pass in C over each column).

    Counted once: the micro-batcher notes the count on each batch it releases.
    """
    if records.nbytes is None:
        records.nbytes = sum(map(len, filter(None, records.values))) + sum(
            map(len, filter(None, records.keys))
        )
    return records.nbytes


def _count_within(records: RecordColumns, max_bytes: int) -> int:
    """How many leading records fit in ``max_bytes`` (at least one, so that nothing sticks)."""
    total = 0
    for count, (key, value) in enumerate(zip(records.keys, records.values, strict=True)):
        total += len(key or b"") + len(value or b"")
        if total > max_bytes:
            return max(1, count)
    return len(records)


@dataclass(slots=True)
class Budget:
    """What may still be dispatched now: batches and bytes (the consumer's free credits)."""

    batches: int
    nbytes: int

    def allows(self) -> bool:
        """True while both are left; a single batch may overdraw the bytes."""
        return self.batches > 0 and self.nbytes > 0

    def spend(self, nbytes: int) -> None:
        """One batch of ``nbytes`` leaves."""
        self.batches -= 1
        self.nbytes -= nbytes


@dataclass(slots=True)
class _Buffer:
    started_at: float
    records: RecordColumns = field(default_factory=RecordColumns.empty)
    nbytes: int = 0


class MicroBatcher:
    """Accumulates records per partition; releases a batch when full or old enough.

    A batch holds records of exactly one partition, in offset order, so that the
    watermark and the output order stay per partition. It is full at
    ``max_records`` records or at ``max_bytes`` bytes of keys and values.
    Records stay in columns (:class:`RecordColumns`) from the poll to the batch.
    """

    def __init__(self, max_records: int, max_wait_s: float, max_bytes: int | None = None) -> None:
        if max_records < 1:
            msg = f"max_records must be >= 1, got {max_records}"
            raise ValueError(msg)
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        # A batch is also released, and cut, at this many bytes of keys and
        # values (it always holds at least one record).
        self.max_bytes = max_bytes
        self._buffers: dict[TP, _Buffer] = {}

    def add(
        self,
        tp: TP,
        records: RecordColumns,
        now: float,
        budget: Budget | None = None,
    ) -> list[tuple[TP, RecordColumns]]:
        """Buffer records of one partition; return the full batches this completes.

        With a ``budget``, only as many full batches leave as it allows; the
        rest stay buffered until :meth:`release`. The batcher keeps ``records``
        (no copy): the caller must not change them after.
        """
        if not len(records):
            return []
        buffer = self._buffers.get(tp)
        if buffer is None:  # the batcher owns the polled columns from here on
            buffer = self._buffers[tp] = _Buffer(started_at=now, records=records)
        else:
            buffer.records.extend(records)
        if self.max_bytes is not None:
            buffer.nbytes += columns_bytes(records)
        return self._cut(tp, buffer, now, budget)

    def release(self, now: float, budget: Budget) -> list[tuple[TP, RecordColumns]]:
        """The full batches held back by an earlier budget, as far as this one allows."""
        ready: list[tuple[TP, RecordColumns]] = []
        for tp, buffer in list(self._buffers.items()):
            if self._full(buffer):
                ready.extend(self._cut(tp, buffer, now, budget))
        return ready

    @property
    def holds_full_batches(self) -> bool:
        """True when a full batch waits for credits: polling more would only buffer more."""
        return any(self._full(buffer) for buffer in self._buffers.values())

    def _full(self, buffer: _Buffer) -> bool:
        return len(buffer.records) >= self.max_records or (
            self.max_bytes is not None and buffer.nbytes >= self.max_bytes
        )

    def _cut(
        self, tp: TP, buffer: _Buffer, now: float, budget: Budget | None
    ) -> list[tuple[TP, RecordColumns]]:
        ready: list[tuple[TP, RecordColumns]] = []
        max_bytes = self.max_bytes
        while self._full(buffer) and (budget is None or budget.allows()):
            count = self.max_records
            if max_bytes is not None and buffer.nbytes >= max_bytes:
                count = min(count, _count_within(buffer.records, max_bytes))
            whole = count >= len(buffer.records)
            head = buffer.records.take(count)
            if max_bytes is not None:
                # All of the buffer: its count is known; else count the batch.
                if whole:
                    head.nbytes = buffer.nbytes
                nbytes = columns_bytes(head)
                buffer.nbytes -= nbytes
                if budget is not None:
                    budget.spend(nbytes)
            elif budget is not None:
                budget.spend(0)
            ready.append((tp, head))
            buffer.started_at = now
        if not len(buffer.records):
            del self._buffers[tp]
        return ready

    def expired(self, now: float) -> list[tuple[TP, RecordColumns]]:
        """Release every partial batch older than ``max_wait_s`` (a full one waits for credits)."""
        ready = [
            (tp, self._counted(buf))
            for tp, buf in self._buffers.items()
            if now - buf.started_at >= self.max_wait_s and not self._full(buf)
        ]
        for tp, _ in ready:
            del self._buffers[tp]
        return ready

    def drain(self) -> list[tuple[TP, RecordColumns]]:
        """Release every buffered record."""
        ready = [(tp, self._counted(buf)) for tp, buf in self._buffers.items()]
        self._buffers.clear()
        return ready

    def _counted(self, buffer: _Buffer) -> RecordColumns:
        """A whole buffer's records, with their bytes noted when the batcher counts them."""
        if self.max_bytes is not None:
            buffer.records.nbytes = buffer.nbytes
        return buffer.records

    def first_offset(self, tp: TP) -> int | None:
        """The offset of the oldest buffered record of a partition, or None."""
        buffer = self._buffers.get(tp)
        return buffer.records.offsets[0] if buffer is not None and len(buffer.records) else None

    def discard(self, tps: list[TP]) -> int:
        """Drop buffered records of revoked partitions; return how many were dropped."""
        dropped = 0
        for tp in tps:
            buf = self._buffers.pop(tp, None)
            if buf is not None:
                dropped += len(buf.records)
        return dropped

    def time_to_next_deadline(self, now: float) -> float | None:
        """Seconds until the oldest partial batch is due, or None when nothing is buffered."""
        if not self._buffers:
            return None
        oldest = min(buf.started_at for buf in self._buffers.values())
        return max(0.0, oldest + self.max_wait_s - now)

    @property
    def buffered(self) -> int:
        """Records held in partial batches."""
        return sum(len(buf.records) for buf in self._buffers.values())

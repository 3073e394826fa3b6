"""The commit watermark: which offsets are safe to commit.

A batch's offsets become committable only when the broker acknowledged every
output of that batch *and* of every batch dispatched before it on the same
partition. The tracker never looks at the offsets between batches: a gap in the
log (compaction, transaction markers) is simply never dispatched.

A partition with state also has a *durable bound* (:meth:`WatermarkTracker.hold`):
the first input offset whose state changes are not yet acknowledged in the
changelog (they are gathered over ``state.changelog_interval_s``,
docs/state.md), and, with delayed labels, the first offset whose prediction
ledger changes are not (docs/labels.md). Each holder sets its own bound; the
offsets the tracker gives to commit never pass any of them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from streamer.core.records import TP

STATE_HOLDER = "state"
"""The state changelog's bound (:meth:`WatermarkTracker.hold`)."""
LEDGER_HOLDER = "ledger"
"""The prediction ledger changelog's bound: the consumer also keeps the batches above it."""


@dataclass(slots=True)
class _Pending:
    next_offset: int
    size: int
    nbytes: int = 0
    acked: bool = False


class WatermarkTracker:
    """Tracks dispatched batches and computes the contiguous acknowledged watermark.

    Offsets returned by :meth:`committable` are Kafka commit offsets: the offset
    of the next record to read, i.e. the last acknowledged offset + 1.
    """

    def __init__(self) -> None:
        self._pending: dict[TP, OrderedDict[int, _Pending]] = {}
        self._watermark: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._failed: dict[int, str] = {}
        self._durable: dict[TP, dict[str, int]] = {}
        self._records_in_flight = 0
        self._bytes_in_flight = 0
        # Totals of the records (and their bytes) that went below a watermark, ever.
        self._records_released = 0
        self._bytes_released = 0

    def track(
        self,
        tp: TP,
        batch_id: int,
        first_offset: int,
        last_offset: int,
        size: int,
        nbytes: int = 0,
    ) -> None:
        """Record that a batch covering ``first_offset..last_offset`` was dispatched.

        ``size`` is its number of records and ``nbytes`` the bytes of their keys
        and values. Batches of one partition must be tracked in offset order.
        """
        if last_offset < first_offset:
            msg = (
                f"batch {batch_id} on {tp[0]}/{tp[1]} ends ({last_offset}) "
                f"before it starts ({first_offset})"
            )
            raise ValueError(msg)
        queue = self._pending.setdefault(tp, OrderedDict())
        # The next batch must start above everything tracked or acknowledged so far.
        floor = next(reversed(queue.values())).next_offset if queue else self._watermark.get(tp, 0)
        if first_offset < floor:
            msg = (
                f"batch {batch_id} on {tp[0]}/{tp[1]} starts at {first_offset}, "
                f"at or below an offset already tracked ({floor - 1})"
            )
            raise ValueError(msg)
        queue[batch_id] = _Pending(next_offset=last_offset + 1, size=size, nbytes=nbytes)
        self._records_in_flight += size
        self._bytes_in_flight += nbytes

    def ack(self, tp: TP, batch_id: int) -> bool:
        """Mark a batch delivered. Returns False for a batch that is not tracked."""
        queue = self._pending.get(tp)
        if queue is None or batch_id not in queue or batch_id in self._failed:
            return False
        queue[batch_id].acked = True
        while queue:
            first_id, first = next(iter(queue.items()))
            if not first.acked:
                break
            del queue[first_id]
            self._watermark[tp] = first.next_offset
            self._records_in_flight -= first.size
            self._bytes_in_flight -= first.nbytes
            self._records_released += first.size
            self._bytes_released += first.nbytes
        return True

    def is_pending(self, tp: TP, batch_id: int) -> bool:
        """True while a batch is tracked and not yet below the watermark."""
        return batch_id in self._pending.get(tp, ())

    def fail(self, tp: TP, batch_id: int, reason: str) -> None:
        """Mark a batch undeliverable: the watermark of its partition stops before it for good."""
        if batch_id in self._pending.get(tp, {}):
            self._failed[batch_id] = reason

    @property
    def failures(self) -> dict[int, str]:
        """Batches that could not be delivered, by batch id."""
        return dict(self._failed)

    def hold(self, tp: TP, durable_from: int | None, holder: str = STATE_HOLDER) -> None:
        """Never give a commit offset past ``durable_from`` for ``tp`` (None: no bound).

        ``durable_from`` is the first offset whose changes ``holder``'s changelog
        (the state's, or the prediction ledger's) has not acknowledged yet; a
        commit offset equal to it is allowed (it commits only the offsets below).
        """
        bounds = self._durable.get(tp)
        if durable_from is not None:
            if bounds is None:
                bounds = self._durable[tp] = {}
            bounds[holder] = durable_from
        elif bounds is not None:
            bounds.pop(holder, None)
            if not bounds:
                del self._durable[tp]

    def held(self, tp: TP, holder: str) -> int | None:
        """``holder``'s bound on ``tp`` (None: it holds nothing there)."""
        bounds = self._durable.get(tp)
        return None if bounds is None else bounds.get(holder)

    def bounds(self, tp: TP) -> list[int]:
        """Every holder's bound on ``tp``."""
        return list(self._durable.get(tp, {}).values())

    def holding(self, holder: str) -> int:
        """The partitions on which ``holder`` holds a bound."""
        return sum(holder in bounds for bounds in self._durable.values())

    def committable(self) -> dict[TP, int]:
        """Commit offsets that advanced since the last :meth:`mark_committed`."""
        return {
            tp: offset
            for tp, offset in self.watermarks().items()
            if self._committed.get(tp, -1) < offset
        }

    def watermarks(self) -> dict[TP, int]:
        """The current commit offset of every partition that has one (within its durable bound)."""
        durable = self._durable
        if not durable:
            return dict(self._watermark)
        return {
            tp: min(offset, *durable[tp].values()) if tp in durable else offset
            for tp, offset in self._watermark.items()
        }

    def mark_committed(self, offsets: dict[TP, int]) -> None:
        """Record that the broker accepted these commit offsets."""
        for tp, offset in offsets.items():
            if self._committed.get(tp, -1) < offset:
                self._committed[tp] = offset

    def committed(self) -> dict[TP, int]:
        """Offsets the broker has accepted."""
        return dict(self._committed)

    def forget(self, tps: list[TP]) -> None:
        """Drop all state of revoked partitions; late acks for them are then ignored."""
        for tp in tps:
            queue = self._pending.pop(tp, None)
            if queue:
                self._records_in_flight -= sum(p.size for p in queue.values())
                self._bytes_in_flight -= sum(p.nbytes for p in queue.values())
                for batch_id in queue:
                    self._failed.pop(batch_id, None)
            self._watermark.pop(tp, None)
            self._committed.pop(tp, None)
            self._durable.pop(tp, None)

    @property
    def batches_in_flight(self) -> int:
        """Batches dispatched and not yet below the watermark."""
        return sum(len(q) for q in self._pending.values())

    @property
    def records_in_flight(self) -> int:
        """Records dispatched and not yet below the watermark."""
        return self._records_in_flight

    @property
    def bytes_in_flight(self) -> int:
        """Bytes of the keys and values of records dispatched and not yet below the watermark."""
        return self._bytes_in_flight

    @property
    def released(self) -> tuple[int, int]:
        """The records, and bytes of keys and values, that went below a watermark so far."""
        return self._records_released, self._bytes_released

    def in_flight_for(self, tp: TP) -> int:
        """Batches in flight on one partition."""
        return len(self._pending.get(tp, ()))

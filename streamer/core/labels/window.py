"""The window of joined records the metrics cover: defined by prediction time, not by arrival.

The window holds the ``max_records`` joined records with the latest
prediction times (ties broken by identity), among those made within
``max_age_us`` of the newest one (0: no time limit). Its content depends on
the set of joined records only, never on the order their labels arrived in:
a label that comes late for an old prediction enters the window only if its
prediction is among the latest. A record joined again (a challenger's score
that came after its label) replaces the first by identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from streamer.core.labels.ledger import Joined


class _Entry(msgspec.Struct, frozen=True, order=True, gc=False, array_like=True):
    """A window's record with what it sorts by: ordered as the tuple of its fields.

    Not a tuple: a tuple is tracked by the garbage collector from its creation, and the
    window's, kept for as long as their records are the latest, were the daemon's only
    lasting growth of tracked objects with labels on: a young collection every 10,000
    records joined, each scanning every young object (the batches in flight, the label
    batches kept for the ledger), 2-11 ms of CPU each with the GIL held. A struct with
    ``gc=False`` is never tracked, and sorts as fast (docs/performance.md).
    """

    time_us: int
    identity: bytes
    """Unique in a window: the record itself is never compared."""
    record: Joined


class LabelWindow:
    """The latest joined records by prediction time, bounded in count and age.

    Args:
        max_records: At most this many records.
        max_age_us: When > 0, only records predicted within this of the newest.
    """

    def __init__(self, max_records: int, max_age_us: int = 0) -> None:
        if max_records <= 0:
            msg = f"max_records must be > 0, got {max_records}"
            raise ValueError(msg)
        self.max_records = max_records
        self.max_age_us = max_age_us
        # identity -> (prediction time, identity, record): entries that sort natively (the
        # identity is unique, so the record itself is never compared) — a key function per
        # record made a scrape's sort the most of its cost.
        self._records: dict[bytes, _Entry] = {}
        self._newest_us: int | None = None

    def add(self, joined: Iterable[Joined]) -> None:
        """Add (or replace, by identity) joined records; the oldest beyond the bounds leave."""
        for record in joined:
            time_us = record.prediction.time_us
            self._records[record.identity] = _Entry(time_us, record.identity, record)
            if self._newest_us is None or time_us > self._newest_us:
                self._newest_us = time_us
        # Trimming at twice the bound keeps the cost per record constant.
        if len(self._records) > 2 * self.max_records:
            self._trim()

    def records(self) -> list[Joined]:
        """The window's records, oldest prediction first."""
        self._trim()
        return [entry.record for entry in sorted(self._records.values())]

    def __len__(self) -> int:
        self._trim()
        return len(self._records)

    def _trim(self) -> None:
        kept = list(self._records.values())
        if self.max_age_us > 0 and self._newest_us is not None:
            oldest = self._newest_us - self.max_age_us
            kept = [entry for entry in kept if entry.time_us > oldest]
        if len(kept) > self.max_records:
            kept = sorted(kept)[-self.max_records :]
        if len(kept) != len(self._records):
            self._records = {entry.identity: entry for entry in kept}


def merged_records(
    windows: Sequence[LabelWindow], max_records: int, max_age_us: int = 0
) -> list[Joined]:
    """The records of one window over the union of ``windows``, oldest prediction first.

    The same as adding every window's records to a new :class:`LabelWindow`
    (identities are unique across windows: one partition's each), without
    sorting each window first.
    """
    entries = [entry for window in windows for entry in window._records.values()]
    newest = [w._newest_us for w in windows if w._newest_us is not None]
    if max_age_us > 0 and newest:
        oldest = max(newest) - max_age_us
        entries = [entry for entry in entries if entry.time_us > oldest]
    # Each window's entries come in arrival order, mostly prediction order: runs that the
    # sort merges in about linear time (a heap of the newest was slower).
    return [entry.record for entry in sorted(entries)[-max_records:]]

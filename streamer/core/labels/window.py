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

from collections.abc import Iterable

from streamer.core.labels.ledger import Joined


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
        self._records: dict[bytes, Joined] = {}
        self._newest_us: int | None = None

    def add(self, joined: Iterable[Joined]) -> None:
        """Add (or replace, by identity) joined records; the oldest beyond the bounds leave."""
        for record in joined:
            self._records[record.identity] = record
            time_us = record.prediction.time_us
            if self._newest_us is None or time_us > self._newest_us:
                self._newest_us = time_us
        # Trimming at twice the bound keeps the cost per record constant.
        if len(self._records) > 2 * self.max_records:
            self._trim()

    def records(self) -> list[Joined]:
        """The window's records, oldest prediction first."""
        self._trim()
        return sorted(self._records.values(), key=_order)

    def __len__(self) -> int:
        self._trim()
        return len(self._records)

    def _trim(self) -> None:
        kept = list(self._records.values())
        if self.max_age_us > 0 and self._newest_us is not None:
            oldest = self._newest_us - self.max_age_us
            kept = [r for r in kept if r.prediction.time_us > oldest]
        if len(kept) > self.max_records:
            kept = sorted(kept, key=_order)[-self.max_records :]
        if len(kept) != len(self._records):
            self._records = {r.identity: r for r in kept}


def _order(record: Joined) -> tuple[int, bytes]:
    return record.prediction.time_us, record.identity

"""Reconciliation by offsets: which input offsets the outputs and dead letters answer.

Every input record must be answered by a prediction or a dead letter that
names it by ``(partition, offset)``. Instead of the records, this keeps the
offsets of each input partition as ranges, so memory grows with the number of
partitions and gaps, not with the number of records: a clean run of any length
is one range per partition. Duplicates are counted as they are found.

Pure code: the readers in :mod:`streamer.devtools.verify` feed it from the topics.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from streamer.core.records import TP


class OffsetRanges:
    """A set of offsets of one partition, as sorted, disjoint half-open ranges.

    Ranges that touch are merged, so consecutive offsets cost one range
    whatever their number.
    """

    __slots__ = ("_ends", "_starts", "count")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        index = bisect_right(self._starts, offset) - 1
        return index >= 0 and offset < self._ends[index]

    def __repr__(self) -> str:
        return f"OffsetRanges({self.ranges()!r})"

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges as ``(start, end)``, end excluded, in order."""
        return list(zip(self._starts, self._ends, strict=True))

    def add_range(self, start: int, end: int) -> int:
        """Add the offsets ``start`` to ``end - 1``; returns how many of them were new."""
        if end <= start:
            return 0
        starts, ends = self._starts, self._ends
        if not ends or start > ends[-1]:  # after every range: the common case
            starts.append(start)
            ends.append(end)
            self.count += end - start
            return end - start
        first = bisect_left(ends, start)  # the first range that ends at or after start
        last = bisect_right(starts, end, lo=first)  # one past the last that starts by end
        if first == last:
            starts.insert(first, start)
            ends.insert(first, end)
            self.count += end - start
            return end - start
        before = sum(ends[i] - starts[i] for i in range(first, last))
        merged_start = min(start, starts[first])
        merged_end = max(end, ends[last - 1])
        starts[first:last] = [merged_start]
        ends[first:last] = [merged_end]
        added = (merged_end - merged_start) - before
        self.count += added
        return added

    def add(self, offsets: Iterable[int]) -> int:
        """Add offsets in any order, repeats allowed; returns how many were new."""
        return sum(self.add_range(start, end) for start, end in runs(offsets))

    def without(self, other: OffsetRanges) -> list[tuple[int, int]]:
        """The ranges of the offsets in this set that are not in ``other``."""
        result: list[tuple[int, int]] = []
        theirs = other.ranges()
        index = 0
        for start, end in self.ranges():
            cursor = start
            while index < len(theirs) and theirs[index][1] <= cursor:
                index += 1
            probe = index
            while cursor < end and probe < len(theirs) and theirs[probe][0] < end:
                other_start, other_end = theirs[probe]
                if other_start > cursor:
                    result.append((cursor, other_start))
                cursor = max(cursor, other_end)
                probe += 1
            if cursor < end:
                result.append((cursor, end))
        return result

    def below(self, limit: int) -> OffsetRanges:
        """A copy that keeps only the offsets below ``limit``."""
        kept = OffsetRanges()
        for start, end in self.ranges():
            if start >= limit:
                break
            kept.add_range(start, min(end, limit))
        return kept


def runs(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """The distinct offsets as ranges of consecutive offsets (end excluded), in order."""
    ordered = sorted(set(offsets))
    if not ordered:
        return []
    if ordered[-1] - ordered[0] == len(ordered) - 1:  # distinct and sorted: one run
        return [(ordered[0], ordered[-1] + 1)]
    result: list[tuple[int, int]] = []
    start = previous = ordered[0]
    for offset in ordered[1:]:
        if offset != previous + 1:
            result.append((start, previous + 1))
            start = offset
        previous = offset
    result.append((start, previous + 1))
    return result


@dataclass(frozen=True)
class Reconciliation:
    """How the outputs and dead letters cover the inputs.

    Attributes:
        inputs: Input records.
        scored: Distinct input offsets that have at least one prediction.
        dead_lettered: Distinct input offsets that have at least one dead letter.
        duplicates: Answers (predictions and dead letters) beyond the first for
            an input offset.
        lost: Input records with no answer (only below ``committed``, when given).
        lost_ranges: Where they are, as ``(partition, start, end)``, end excluded.
    """

    inputs: int
    scored: int
    dead_lettered: int
    duplicates: int
    lost: int
    lost_ranges: tuple[tuple[int, int, int], ...] = ()

    def line(self) -> str:
        """The counts as one line, as the demo's summary prints them."""
        return (
            f"records in {self.inputs}, scored {self.scored}, "
            f"dead-lettered {self.dead_lettered}, duplicates {self.duplicates}, lost {self.lost}"
        )


class Reconciler:
    """Collects input offsets and the sources that outputs and dead letters name.

    Feed it in any order and in batches of any size; :meth:`result` gives the
    counts. A source is a duplicate when an earlier prediction or dead letter
    already answered it.
    """

    def __init__(self) -> None:
        self.inputs: dict[int, OffsetRanges] = {}
        self.scored: dict[int, OffsetRanges] = {}
        self.dead: dict[int, OffsetRanges] = {}
        self.answered: dict[int, OffsetRanges] = {}
        self.duplicates = 0

    def add_inputs(self, partition: int, offsets: Iterable[int]) -> None:
        """Input records of one partition."""
        _ranges(self.inputs, partition).add(offsets)

    def add_scored(self, partition: int, offsets: Iterable[int]) -> None:
        """Predictions that name these input offsets of ``partition``."""
        self._answer(self.scored, partition, list(offsets))

    def add_dead_lettered(self, partition: int, offsets: Iterable[int]) -> None:
        """Dead letters that name these input offsets of ``partition``."""
        self._answer(self.dead, partition, list(offsets))

    def _answer(self, kind: dict[int, OffsetRanges], partition: int, offsets: list[int]) -> None:
        _ranges(kind, partition).add(offsets)
        new = _ranges(self.answered, partition).add(offsets)
        self.duplicates += len(offsets) - new

    def ranges_held(self) -> int:
        """How many ranges the reconciler holds: what its memory grows with."""
        return sum(
            len(r.ranges())
            for kind in (self.inputs, self.scored, self.dead, self.answered)
            for r in kind.values()
        )

    def result(self, committed: Mapping[int, int] | None = None) -> Reconciliation:
        """The counts so far.

        Args:
            committed: If given, only the input offsets below each partition's
                committed offset must be answered (a partition missing from it
                has committed nothing): at least once means exactly that.
        """
        lost_ranges: list[tuple[int, int, int]] = []
        for partition in sorted(self.inputs):
            inputs = self.inputs[partition]
            if committed is not None:
                inputs = inputs.below(committed.get(partition, 0))
            answered = self.answered.get(partition, OffsetRanges())
            lost_ranges.extend((partition, s, e) for s, e in inputs.without(answered))
        return Reconciliation(
            inputs=sum(len(r) for r in self.inputs.values()),
            scored=sum(len(r) for r in self.scored.values()),
            dead_lettered=sum(len(r) for r in self.dead.values()),
            duplicates=self.duplicates,
            lost=sum(end - start for _p, start, end in lost_ranges),
            lost_ranges=tuple(lost_ranges),
        )


def _ranges(kind: dict[int, OffsetRanges], partition: int) -> OffsetRanges:
    ranges = kind.get(partition)
    if ranges is None:
        ranges = kind[partition] = OffsetRanges()
    return ranges


class Pacer:
    """Which partitions a reader should pause so that each topic's partitions keep pace.

    Outputs are spread over the output partitions by key, so a prediction's
    neighbours in its input partition sit in the other output partitions,
    written at about the same time. Read one output partition ahead of the
    others and every offset it names is a gap until they catch up: the ranges
    would grow with the records. So a partition whose last record is younger
    (by record timestamp) than the oldest position among its topic's unfinished
    partitions by more than twice the time its last batch of records spanned,
    and at least ``slack_ms``, is paused until they catch up. The slack follows
    the batches because a fetch brings about a megabyte per partition, seconds
    of a slow stream and milliseconds of a preloaded one: the window stays at
    about two batches per partition, whatever the rate. A partition that has
    delivered nothing yet counts as the oldest; one whose records have no
    timestamp (-1) is neither held back nor holds others back. The partition
    at the oldest position is never paused, so reading always progresses.
    """

    def __init__(self, tps: Iterable[TP], slack_ms: int = 100) -> None:
        self.slack_ms = slack_ms
        self._last: dict[TP, int | None] = dict.fromkeys(tps)
        self._span: dict[TP, int] = {}
        self._done: set[TP] = set()  # finished, or without timestamps

    def read(self, tp: TP, last_timestamp_ms: int, first_timestamp_ms: int | None = None) -> None:
        """``tp`` delivered a batch of records with timestamps from first to last (ms)."""
        if last_timestamp_ms < 0:
            self._done.add(tp)
            return
        last = self._last.get(tp)
        self._last[tp] = last_timestamp_ms if last is None else max(last, last_timestamp_ms)
        if first_timestamp_ms is not None and first_timestamp_ms >= 0:
            self._span[tp] = max(0, last_timestamp_ms - first_timestamp_ms)

    def finished(self, tp: TP) -> None:
        """``tp`` reached its end: it no longer holds the others back."""
        self._done.add(tp)

    def ahead(self) -> set[TP]:
        """The unfinished partitions that should be paused now."""
        pacing = [(tp, last) for tp, last in self._last.items() if tp not in self._done]
        oldest: dict[str, int | None] = {}
        for (topic, _partition), last in pacing:
            if topic not in oldest:
                oldest[topic] = last
            else:
                current = oldest[topic]
                oldest[topic] = None if last is None or current is None else min(current, last)
        ahead = set()
        for tp, last in pacing:
            bound = oldest[tp[0]]
            slack = max(self.slack_ms, 2 * self._span.get(tp, 0))
            if last is not None and (bound is None or last > bound + slack):
                ahead.add(tp)
        return ahead

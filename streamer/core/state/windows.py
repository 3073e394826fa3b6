"""Apply records to one partition's state and compute their window features.

For a record r of key k with event time t, a feature aggregates the records of
key k that were applied before r in its partition (and r itself, with
``include_current``) whose event time is in ``(t - window, t]``.

- **Late records.** A record whose time is more than ``allowed_lateness``
  before the newest time of its key is dead-lettered (``late``); the state is
  unchanged. Any other out-of-order record is applied: it counts for the later
  records whose window covers its time.
- **Bounded.** A key keeps only the entries a later record can still see:
  time above its newest time minus (largest window + allowed lateness). A key
  whose newest time is older than the partition's clock (the newest time
  applied to the partition) minus ``key_ttl`` reads as empty, and
  :meth:`PartitionState.sweep` deletes it whenever it runs: when it runs
  changes no value.
- **Exact floats.** Every value is computed again from the window's entries:
  sums with ``math.fsum`` (the correctly rounded sum, whatever the order of
  the terms), ``std`` as the square root of the fsum of squared deviations
  from that mean, over n. So a value depends only on the set of records in the
  window, never on batching, on how the state was stored or restored, nor on
  the order it was rebuilt in: offline equals live, bit for bit.
- **Once per record.** The store keeps the last applied input offset. A record
  at or below it is a replay: it changes nothing and gets what it was served
  the first time (kept per offset until :meth:`PartitionState.forget_served`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from streamer.core.dead_letters import LATE, STATE_REPLAYED
from streamer.core.state.codec import (
    CODEC_VERSION,
    KEY_PREFIX,
    META_KEY,
    Entry,
    FieldValue,
    KeyState,
    Meta,
    Served,
    decode_key_state,
    decode_meta,
    decode_served,
    encode,
    key_state_key,
    served_key,
)
from streamer.core.state.layout import (
    BadRecordError,
    Layout,
    read_field,
    read_key,
    read_time_us,
)
from streamer.core.state.store import Change, Store


@dataclass(frozen=True, slots=True)
class StateInput:
    """One input record as the state reads it: ``doc`` is its decoded JSON object, or None."""

    offset: int
    key: bytes | None
    timestamp_ms: int | None
    doc: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Applied:
    """A batch applied: one outcome per input (None: not a JSON object, left to the preprocessor).

    ``changes`` are the store writes of the batch, in the order written: the
    records of the changelog topic.
    """

    outcomes: tuple[Served | None, ...]
    changes: tuple[Change, ...]


class ForeignStoreError(Exception):
    """The store belongs to another partition, another feature declaration, or is corrupt."""


_GroupInput = tuple[bytes, int, tuple[FieldValue, ...]]


class PartitionState:
    """The state of one input partition over a :class:`Store`.

    ``remember_served`` keeps each outcome per offset so that a replay gets the
    same values; the offline command, which never replays, turns it off.
    """

    def __init__(
        self,
        layout: Layout,
        store: Store,
        topic: str,
        partition: int,
        *,
        remember_served: bool = True,
    ) -> None:
        self.layout = layout
        self.store = store
        self.topic = topic
        self.partition = partition
        self._remember = remember_served
        raw = store.get(META_KEY)
        if raw is None:
            self.meta = Meta(
                CODEC_VERSION,
                layout.fingerprint,
                topic,
                partition,
                -1,
                (None,) * len(layout.groups),
                0,
            )
        else:
            try:
                self.meta = decode_meta(raw)
            except msgspec.DecodeError as exc:
                msg = f"the state store of {topic}/{partition} is corrupt: {exc}"
                raise ForeignStoreError(msg) from None
            mine = (CODEC_VERSION, layout.fingerprint, topic, partition)
            theirs = (
                self.meta.version,
                self.meta.fingerprint,
                self.meta.topic,
                self.meta.partition,
            )
            if mine != theirs:
                msg = (
                    f"the state store of {topic}/{partition} was written for {theirs[2]}/"
                    f"{theirs[3]} (codec {theirs[0]}, features {theirs[1]}), not for this "
                    f"declaration (codec {mine[0]}, features {mine[1]})"
                )
                raise ForeignStoreError(msg)

    @property
    def last_offset(self) -> int:
        """The last input offset applied (-1: none)."""
        return self.meta.last_offset

    def apply(self, records: Iterable[StateInput]) -> Applied:
        """Apply records of this partition in offset order; write the batch's changes at once."""
        pending: dict[bytes, bytes | None] = {}
        outcomes: list[Served | None] = []
        clocks = list(self.meta.clocks_us)
        last = self.meta.last_offset
        for record in records:
            if record.doc is None:
                outcomes.append(None)
                last = max(last, record.offset)
                continue
            if record.offset <= self.meta.last_offset:
                outcomes.append(self._replayed(record.offset, pending))
                continue
            outcome = self._apply_one(record, pending, clocks)
            if self._remember:
                pending[served_key(record.offset)] = encode(outcome)
            outcomes.append(outcome)
            last = max(last, record.offset)
        self.meta = msgspec.structs.replace(self.meta, last_offset=last, clocks_us=tuple(clocks))
        pending[META_KEY] = encode(self.meta)
        changes = tuple(pending.items())
        self.store.write(changes)
        return Applied(tuple(outcomes), changes)

    def _replayed(self, offset: int, pending: dict[bytes, bytes | None]) -> Served:
        key = served_key(offset)
        raw = pending[key] if key in pending else self.store.get(key)
        if raw is None:
            return Served(
                None,
                STATE_REPLAYED,
                f"offset {offset} was applied to the state before (last applied "
                f"{self.meta.last_offset}) and what it was served is no longer kept",
            )
        return decode_served(raw)

    def _apply_one(
        self, record: StateInput, pending: dict[bytes, bytes | None], clocks: list[int | None]
    ) -> Served:
        layout = self.layout
        try:
            inputs = self._read(record)
        except BadRecordError as problem:
            return Served(None, problem.reason, problem.detail)
        states: list[KeyState | None] = []
        for group, (key, time_us, _values) in enumerate(inputs):
            state = self._key_state(group, key, pending, clocks[group])
            if state is not None and time_us < state.newest_us - layout.allowed_lateness_us:
                late_by = (state.newest_us - time_us) / 1e6
                return Served(
                    None,
                    LATE,
                    f"event time is {late_by:g}s before the newest of its key, more than "
                    f"state.allowed_lateness_s={layout.allowed_lateness_us / 1e6:g}",
                )
            states.append(state)
        windows: dict[tuple[int, int], list[Entry]] = {}  # one pass per group and window length
        values = tuple(
            self._value(index, inputs, states, windows) for index in range(len(layout.features))
        )
        for group, (key, time_us, fields) in enumerate(inputs):
            state = states[group]
            newest = time_us if state is None else max(state.newest_us, time_us)
            keep_above = newest - layout.groups[group].horizon_us
            kept = (
                () if state is None else tuple(e for e in state.entries if e.time_us > keep_above)
            )
            entry = Entry(record.offset, time_us, fields)
            pending[key_state_key(group, key)] = encode(KeyState(newest, (*kept, entry)))
            clock = clocks[group]
            clocks[group] = time_us if clock is None else max(clock, time_us)
        return Served(values)

    def _read(self, record: StateInput) -> list[_GroupInput]:
        doc = record.doc
        assert doc is not None
        inputs = []
        for group in self.layout.groups:
            key = read_key(doc, record.key, group.key)
            time_us = read_time_us(doc, record.timestamp_ms, group.time)
            fields = tuple(
                read_field(doc, name, numeric=numeric)
                for name, numeric in zip(group.fields, group.numeric, strict=True)
            )
            inputs.append((key, time_us, fields))
        return inputs

    def _key_state(
        self, group: int, key: bytes, pending: dict[bytes, bytes | None], clock: int | None
    ) -> KeyState | None:
        store_key = key_state_key(group, key)
        raw = pending[store_key] if store_key in pending else self.store.get(store_key)
        if raw is None:
            return None
        state = decode_key_state(raw)
        if self._expired(group, state, clock):
            return None
        return state

    def _expired(self, group: int, state: KeyState, clock: int | None) -> bool:
        ttl = self.layout.key_ttl_us or self.layout.groups[group].horizon_us
        return clock is not None and state.newest_us < clock - ttl

    def _value(  # noqa: PLR0911 - one return per aggregation
        self,
        index: int,
        inputs: list[_GroupInput],
        states: list[KeyState | None],
        windows: dict[tuple[int, int], list[Entry]],
    ) -> float:
        layout = self.layout
        feature = layout.features[index]
        group = layout.feature_group[index]
        field = layout.feature_field[index]
        key, time_us, fields = inputs[group]
        del key
        window = windows.get((group, feature.window_us))
        if window is None:
            low = time_us - feature.window_us
            state = states[group]
            window = (
                [] if state is None else [e for e in state.entries if low < e.time_us <= time_us]
            )
            windows[(group, feature.window_us)] = window
        if feature.agg == "time_since_last":
            if not window:
                return feature.default
            return (time_us - max(e.time_us for e in window)) / 1_000_000
        if feature.agg == "count":
            return float(len(window) + feature.include_current)
        if feature.agg == "last":
            if feature.include_current:
                return float(fields[field])
            if not window:
                return feature.default
            newest = max(window, key=lambda e: (e.time_us, e.offset))
            return float(newest.values[field])
        seen = [e.values[field] for e in window]
        if feature.include_current:
            seen.append(fields[field])
        return aggregate(feature.agg, seen, feature.default)

    def forget_served(self, below_offset: int) -> tuple[Change, ...]:
        """Delete what was served below an offset (the committed one: never replayed again)."""
        if below_offset <= self.meta.served_from:
            return ()
        stale = self.store.keys_between(served_key(self.meta.served_from), served_key(below_offset))
        self.meta = msgspec.structs.replace(self.meta, served_from=below_offset)
        changes: list[Change] = [(key, None) for key in stale]
        changes.append((META_KEY, encode(self.meta)))
        self.store.write(changes)
        return tuple(changes)

    def sweep(self) -> tuple[Change, ...]:
        """Delete the keys that read as empty (past their TTL); no value changes by it."""
        changes: list[Change] = []
        for store_key, raw in self.store.items_from(KEY_PREFIX):
            group = store_key[1]
            if self._expired(group, decode_key_state(raw), self.meta.clocks_us[group]):
                changes.append((store_key, None))
        if changes:
            self.store.write(changes)
        return tuple(changes)

    def key_count(self) -> int:
        """Keys held (an O(keys) scan: for tests and the restore log, not per batch)."""
        return sum(1 for _ in self.store.items_from(KEY_PREFIX))


def aggregate(  # noqa: PLR0911 - one return per aggregation
    agg: str, values: Sequence[FieldValue], default: float
) -> float:
    """sum, mean, min, max, std, distinct_count over a window's values; order never matters."""
    if agg == "distinct_count":
        return float(len(set(values)))
    numbers = [float(v) for v in values]
    if agg == "sum":
        return math.fsum(numbers)
    if not numbers:
        return default
    if agg == "min":
        return min(numbers)
    if agg == "max":
        return max(numbers)
    mean = math.fsum(numbers) / len(numbers)
    if agg == "mean":
        return mean
    if agg == "std":
        return math.sqrt(math.fsum((x - mean) ** 2 for x in numbers) / len(numbers))
    msg = f"unknown aggregation {agg!r}"
    raise ValueError(msg)


def enrich(doc: dict[str, Any], names: Sequence[str], values: Sequence[float]) -> bytes:
    """The record's JSON value with each declared feature at its top level (the value wins)."""
    return orjson.dumps({**doc, **dict(zip(names, values, strict=True))})


__all__ = [
    "Applied",
    "ForeignStoreError",
    "PartitionState",
    "StateInput",
    "aggregate",
    "enrich",
]

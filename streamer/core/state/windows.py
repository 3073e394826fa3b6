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
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import orjson

from streamer.core.dead_letters import LATE, STATE_REPLAYED
from streamer.core.state.codec import (
    CODEC_VERSION,
    KEY_PREFIX,
    META_KEY,
    Entry,
    FieldValue,
    Meta,
    Served,
    decode_key_state,
    decode_meta,
    decode_served,
    encode,
    key_state_key,
    served_key,
)
from streamer.core.state.declared import RECORD_KEY, RECORD_TIMESTAMP
from streamer.core.state.entries import KeyEntries, Window
from streamer.core.state.layout import (
    MAX_TIME_US,
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

_RECORD_TIME, _TOP_FIELD_TIME, _OTHER_TIME = range(3)


def _time_source(path: str) -> int:
    if path == RECORD_TIMESTAMP:
        return _RECORD_TIME
    return _OTHER_TIME if "." in path else _TOP_FIELD_TIME


CACHED_ENTRIES = 250_000
"""Window entries kept decoded between batches (their keys' :class:`KeyEntries`), about
60 MB: a key of the last batches is read from memory, not from the store. The cache
holds what the store holds (it is dropped when a batch fails), so it changes no value."""


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
        cached_entries: int = CACHED_ENTRIES,
    ) -> None:
        self.layout = layout
        self.store = store
        self.topic = topic
        self.partition = partition
        self._remember = remember_served
        self._cache: OrderedDict[bytes, tuple[KeyEntries, int]] = OrderedDict()
        """The keys of the last batches as the store holds them, least recently used first."""
        self._cache_limit = cached_entries
        self._cached = 0
        self._new_keys: set[bytes] = set()
        """The keys of the batch being applied that the store did not hold."""
        self._plans = tuple(
            (f.agg, group, field, f.window_us, f.include_current, f.default)
            for f, group, field in zip(
                layout.features, layout.feature_group, layout.feature_field, strict=True
            )
        )
        """Per feature, what computing its value reads (attribute lookups once, not per record)."""
        self._reads = tuple(
            (
                group.key,
                group.key != RECORD_KEY and "." not in group.key,
                group.time,
                _time_source(group.time),
                tuple(
                    (name, numeric, "." not in name)
                    for name, numeric in zip(group.fields, group.numeric, strict=True)
                ),
            )
            for group in layout.groups
        )
        """Per group, its paths and whether each is a field at the top level (read inline)."""
        self._horizons = tuple(group.horizon_us for group in layout.groups)
        self._ttls = tuple(layout.key_ttl_us or horizon for horizon in self._horizons)
        self._widths = tuple(len(group.fields) for group in layout.groups)
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
        """Apply records of this partition in offset order; write the batch's changes at once.

        Each key touched is decoded once (its :class:`KeyEntries` kept for the
        batch, and for the next batches within ``cached_entries``) and encoded
        once at the end, into its place in the changes (where its first write
        was): the same changes as one encode per record.
        """
        keys: dict[bytes, KeyEntries | None] = {}
        self._new_keys.clear()
        try:
            applied = self._apply(records, keys)
        except BaseException:
            self._forget_cache()  # its keys may hold what the store never got
            raise
        self._cache_keys(keys)
        return applied

    def _apply(
        self, records: Iterable[StateInput], keys: dict[bytes, KeyEntries | None]
    ) -> Applied:
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
            outcome = self._apply_one(record, pending, keys, clocks)
            if self._remember:
                pending[served_key(record.offset)] = encode(outcome)
            outcomes.append(outcome)
            last = max(last, record.offset)
        for store_key, value in pending.items():
            if value is None:  # a key written by this batch: its state at the end
                entries = keys[store_key]
                assert entries is not None
                pending[store_key] = encode(entries.to_state())
        meta = msgspec.structs.replace(self.meta, last_offset=last, clocks_us=tuple(clocks))
        pending[META_KEY] = encode(meta)
        changes = tuple(pending.items())
        self.store.write(changes)
        self.meta = meta  # only once written: a failed write leaves the engine as the store is
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
        self,
        record: StateInput,
        pending: dict[bytes, bytes | None],
        keys: dict[bytes, KeyEntries | None],
        clocks: list[int | None],
    ) -> Served:
        layout = self.layout
        try:
            inputs = self._read(record)
        except BadRecordError as problem:
            return Served(None, problem.reason, problem.detail)
        states: list[KeyEntries | None] = []
        for group, (store_key, time_us, _values) in enumerate(inputs):
            state = self._key_state(group, store_key, keys, clocks[group])
            if state is not None and time_us < state.newest_us - layout.allowed_lateness_us:
                late_by = (state.newest_us - time_us) / 1e6
                return Served(
                    None,
                    LATE,
                    f"event time is {late_by:g}s before the newest of its key, more than "
                    f"state.allowed_lateness_s={layout.allowed_lateness_us / 1e6:g}",
                )
            states.append(state)
        values = self._values(inputs, states)
        for group, (store_key, time_us, fields) in enumerate(inputs):
            state = states[group]
            entry = Entry(record.offset, time_us, fields)
            if state is None:  # new, or past its TTL: only this entry
                keys[store_key] = KeyEntries(time_us, [entry], len(fields))
            else:
                newest = max(state.newest_us, time_us)
                state.add(entry, newest - self._horizons[group])
            if store_key not in pending:
                pending[store_key] = None  # encoded at the end of the batch
            clock = clocks[group]
            clocks[group] = time_us if clock is None else max(clock, time_us)
        return Served(values)

    def _values(
        self, inputs: list[_GroupInput], states: list[KeyEntries | None]
    ) -> tuple[float, ...]:
        """Each feature's value for a record: its window's entries, and the record itself."""
        windows: dict[tuple[int, int], Window | None] = {}  # one per group and window length
        values: list[float] = []
        for agg, group, field, window_us, include_current, default in self._plans:
            _store_key, time_us, fields = inputs[group]
            window_key = (group, window_us)
            if window_key in windows:
                window = windows[window_key]
            else:
                state = states[group]
                window = None if state is None else state.select(time_us - window_us, time_us)
                windows[window_key] = window
            if agg == "count":
                values.append(float((0 if window is None else len(window)) + include_current))
            elif agg == "time_since_last":
                if window is None or not window:
                    values.append(default)
                else:
                    values.append((time_us - window.newest_time()) / 1_000_000)
            elif agg == "last" and include_current:
                values.append(float(fields[field]))
            elif agg == "last":
                values.append(
                    default if window is None or not window else float(window.last(field))
                )
            else:
                seen = [] if window is None else window.values(field)
                if include_current:
                    seen.append(fields[field])
                values.append(aggregate(agg, seen, default))
        return tuple(values)

    def _read(self, record: StateInput) -> list[_GroupInput]:
        """Per group: the record's store key, time and fields."""
        doc = record.doc
        assert doc is not None
        # The usual case inline (a string key, an integer time, finite float and string
        # fields, at the top level); anything else through the read_* functions, which
        # read it the same way or raise with the reason, in the same order.
        inputs = []
        for index, (key_path, key_top, time_path, time_source, reads) in enumerate(self._reads):
            raw = doc.get(key_path) if key_top else None
            key = raw.encode() if type(raw) is str else read_key(doc, record.key, key_path)
            if time_source == _RECORD_TIME:
                raw = record.timestamp_ms
            else:
                raw = doc.get(time_path) if time_source == _TOP_FIELD_TIME else None
            if (
                type(raw) is int
                and (raw >= 0 or time_source != _RECORD_TIME)
                and -MAX_TIME_US < raw * 1000 < MAX_TIME_US
            ):
                time_us = raw * 1000
            else:
                time_us = read_time_us(doc, record.timestamp_ms, time_path)
            fields: list[FieldValue] = []
            for name, numeric, top in reads:
                raw = doc.get(name) if top else None
                if (numeric and type(raw) is float and math.isfinite(raw)) or (
                    not numeric and type(raw) is str
                ):
                    fields.append(raw)
                else:
                    fields.append(read_field(doc, name, numeric=numeric))
            inputs.append((key_state_key(index, key), time_us, tuple(fields)))
        return inputs

    def _key_state(
        self, group: int, store_key: bytes, keys: dict[bytes, KeyEntries | None], clock: int | None
    ) -> KeyEntries | None:
        if store_key in keys:
            state = keys[store_key]
        elif store_key in self._cache:
            state = keys[store_key] = self._cache[store_key][0]
        else:
            raw = self.store.get(store_key)
            if raw is None:
                state = None
                self._new_keys.add(store_key)
            else:
                state = KeyEntries.from_state(decode_key_state(raw), self._widths[group])
            keys[store_key] = state
        if state is None or self._expired(group, state.newest_us, clock):
            return None
        return state

    def _expired(self, group: int, newest_us: int, clock: int | None) -> bool:
        return clock is not None and newest_us < clock - self._ttls[group]

    def _cache_keys(self, keys: dict[bytes, KeyEntries | None]) -> None:
        """Keep a batch's keys for the next batches, within ``cached_entries`` entries.

        A key new in this batch is not kept: most keys of a stream with many
        keys are seen once in a long while, and would only push out the keys
        that come back.
        """
        cache = self._cache
        new_keys = self._new_keys
        for store_key, state in keys.items():
            if store_key in new_keys:
                continue
            self._uncache(store_key)
            if state is not None:
                size = len(state.entries) + 1
                cache[store_key] = (state, size)
                self._cached += size
        while self._cached > self._cache_limit:
            _key, (_state, size) = cache.popitem(last=False)
            self._cached -= size

    def _uncache(self, store_key: bytes) -> None:
        cached = self._cache.pop(store_key, None)
        if cached is not None:
            self._cached -= cached[1]

    def _forget_cache(self) -> None:
        self._cache.clear()
        self._cached = 0

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
            newest_us = decode_key_state(raw).newest_us
            if self._expired(group, newest_us, self.meta.clocks_us[group]):
                changes.append((store_key, None))
                self._uncache(store_key)
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
    if agg == "sum":  # fsum reads each number as float() does
        return math.fsum(cast("Sequence[float]", values))  # a numeric field holds floats
    numbers = list(map(float, values))
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

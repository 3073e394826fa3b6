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
  from that mean, over n (the compiled loop keeps a long window's fsum partials
  between a key's records: the same correctly rounded sum, for the cost of the
  entries that came and left). So a value depends only on the set of records in the
  window, never on batching, on how the state was stored or restored, nor on
  the order it was rebuilt in: offline equals live, bit for bit.
- **Once per record.** The store keeps the last applied input offset. A record
  at or below it is a replay: it changes nothing and gets what it was served
  the first time (kept until :meth:`PartitionState.forget_served` passes it).
"""

from __future__ import annotations

import math
import os
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from types import ModuleType
from typing import Any, NamedTuple

import msgspec
import orjson

from streamer.core.dead_letters import LATE, STATE_REPLAYED, STATE_TOO_LARGE
from streamer.core.state.codec import (
    CODEC_VERSION,
    KEY_PREFIX,
    META_KEY,
    SERVED_RUN,
    FieldValue,
    Meta,
    Served,
    ServedRun,
    block_bytes,
    decode_key_state,
    decode_meta,
    decode_served,
    encode,
    encode_key_state,
    key_state_key,
    served_key,
)
from streamer.core.state.entries import (
    FeaturePlan,
    KeyEntries,
    aggregate,
    exact_sum,
    feature_kind,
    feature_values,
    window_value,
)
from streamer.core.state.layout import (
    BadRecordError,
    GroupColumns,
    GroupInput,
    Layout,
    RecordReader,
)
from streamer.core.state.store import Change, Store


class StateInput(msgspec.Struct, frozen=True):
    """One input record as the state reads it: ``doc`` is its decoded JSON object, or None.

    A struct rather than a frozen dataclass: made once per record, 5 times cheaper.
    """

    offset: int
    key: bytes | None
    timestamp_ms: int | None
    doc: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Applied:
    """A batch applied: the values each input was served, as one block, and the store writes.

    ``values`` holds ``width`` doubles per input, row after row, in the
    layout's feature order (an ``array('d')``: one object for the batch, not a
    struct and a tuple per record). An input served none has a row of NaN and
    is in ``missing``: its rejection (a :class:`Served` with a reason: late,
    missing_key, ...), or None when it is not a JSON object (left to the
    preprocessor). ``changes`` are the store writes of the batch, in the order
    written: the records of the changelog topic.
    """

    values: array
    width: int
    missing: dict[int, Served | None]
    changes: tuple[Change, ...]

    def row(self, index: int) -> tuple[float, ...] | None:
        """The values served to input ``index`` (None: none)."""
        if index in self.missing:
            return None
        return tuple(self.values[index * self.width : (index + 1) * self.width])

    @property
    def outcomes(self) -> tuple[Served | None, ...]:
        """One outcome per input, as objects: the offline command's and the tests' view."""
        count = len(self.values) // self.width if self.width else 0
        missing = self.missing
        return tuple(missing[at] if at in missing else Served(self.row(at)) for at in range(count))


class ForeignStoreError(Exception):
    """The store belongs to another partition, another feature declaration, or is corrupt."""


class _GroupPlan(NamedTuple):
    """What applying a record to one group reads and computes (looked up once, not per record)."""

    horizon_us: int
    ttl_us: int
    windows_us: tuple[int, ...]
    """The group's distinct window lengths: a feature's window is its slot in this tuple."""
    features: tuple[FeaturePlan, ...]
    by_slot: tuple[tuple[FeaturePlan, ...], ...]
    """The features of each window length (for a key whose times are out of order)."""
    no_bounds: tuple[int, ...]
    no_columns: list[list[FieldValue]]
    """An empty window's columns (read, never written)."""
    max_entries: int
    """A key holds at most this many entries (core/state/limits.py)."""


def _group_plans(layout: Layout) -> tuple[_GroupPlan, ...]:
    plans = []
    for index, group in enumerate(layout.groups):
        members = [
            (at, feature, layout.feature_field[at])
            for at, feature in enumerate(layout.features)
            if layout.feature_group[at] == index
        ]
        windows = tuple(dict.fromkeys(feature.window_us for _at, feature, _field in members))
        features = tuple(
            (
                at,
                feature_kind(feature.agg),
                windows.index(feature.window_us),
                field,
                feature.include_current,
                feature.default,
                feature.agg,
            )
            for at, feature, field in members
        )
        plans.append(
            _GroupPlan(
                horizon_us=group.horizon_us,
                ttl_us=layout.key_ttl_us or group.horizon_us,
                windows_us=windows,
                features=features,
                by_slot=tuple(
                    tuple(f for f in features if f[2] == slot) for slot in range(len(windows))
                ),
                no_bounds=(0,) * len(windows),
                no_columns=[[] for _ in group.fields],
                max_entries=group.max_entries or sys.maxsize,
            )
        )
    return tuple(plans)


ENGINE_VARIABLE = "STREAMER_STATE_ENGINE"
"""``python`` runs the pure-Python loop even where the compiled one is built."""


NATIVE_FUNCTIONS = (
    "apply_group",
    "bind",
    "cache_keys",
    "defer_keys",
    "typed_group",
    "window_sum",
)
"""What this module calls in the compiled loop: a build without one of them is not used."""


NATIVE_ABI = 2
"""The calling convention of the compiled loop this module calls (``_engine.ABI``): 2 since
its apply_group writes the served values into the batch's block."""


def _compiled() -> tuple[ModuleType | None, str]:
    """The compiled loop (streamer/core/state/_engine.c), or None and why not."""
    if os.environ.get(ENGINE_VARIABLE, "").strip().lower() == "python":
        return None, f"{ENGINE_VARIABLE}=python"
    try:
        from streamer.core.state import _engine  # noqa: PLC0415 - built by setup.py, optional
    except ImportError as exc:
        return None, f"the compiled loop is not built ({exc})"
    missing = [name for name in NATIVE_FUNCTIONS if not hasattr(_engine, name)]
    problems = [f"no {', '.join(missing)}"] if missing else []
    abi = getattr(_engine, "ABI", 1)  # a build from before its ABI constant: 1
    if abi != NATIVE_ABI:
        problems.append(f"ABI {abi}, not {NATIVE_ABI}")
    if problems:  # built from an older _engine.c: its calls would fail at the first batch
        return None, (
            f"the compiled loop is stale ({'; '.join(problems)}): rebuild it with "
            "`python setup.py build_ext --inplace` or reinstall streamer"
        )
    return _engine, (
        f"the one-group loop compiled; {ENGINE_VARIABLE}=python runs the Python one, same values"
    )


_NATIVE, ENGINE_REASON = _compiled()
COMPILED = _NATIVE
"""The compiled module (_engine.c), or None: for the steps around the loop that other modules
run (core/preparation.py reads a batch's served values with it)."""
ENGINE = "native" if _NATIVE is not None else "python"
"""The engine a :class:`PartitionState` uses unless told: ``native`` (the one-group loop
compiled, same values bit for bit) or ``python``; :data:`ENGINE_REASON` says why."""

_TIME_BOUND = 1 << 62
"""The compiled loop keeps times in 64 bits: windows, TTL and lateness below this (always,
in practice: 2**62 µs is 146,000 years), times too (a record's beyond is a bad timestamp)."""


CACHED_ENTRIES = 250_000
"""Window entries kept decoded between batches (their keys' :class:`KeyEntries`), about
27 MB (110 bytes an entry with the bench's one float field, tracemalloc): a key of the last
batches is read from memory, not from the store. The cache holds what the store holds (it
is dropped when a batch fails), so it changes no value."""


_UNREAD: Any = object()


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
        engine: str = "",
        deferred: bool = False,
    ) -> None:
        """``engine``: ``native``, ``python``, or "" for :data:`ENGINE` (the same values).

        ``deferred``: a batch writes nothing to the store and returns no changes;
        the keys it changed stay live and *dirty*, what it served and the meta
        wait in memory, and :meth:`take_changes` encodes and writes them all at
        once (the daemon, once per changelog flush: see :meth:`take_changes`).
        """
        self.layout = layout
        self.store = store
        self.topic = topic
        self.partition = partition
        self._remember = remember_served
        self._cache: dict[bytes, KeyEntries] = {}
        """The keys of the last batches as the store holds them, least recently used first
        (a dict keeps its order, and costs half an OrderedDict's time to move a key last)."""
        self._cache_sizes: dict[bytes, int] = {}
        """The entries (+ 1) each cached key held when cached, in the cache's order: beside
        it, not in a tuple with the key (a tuple per key per batch, work for the collector)."""
        self._cache_limit = cached_entries
        self._cached = 0
        self._new_keys: set[bytes] = set()
        """The keys of the batch being applied that the store did not hold."""
        self.deferred = deferred
        self._dirty: dict[bytes, KeyEntries] = {}
        """Deferred: the keys changed since the last take, live, in the order first changed."""
        self._dirty_entries = 0
        """About the entries the dirty keys hold (at most: a bound for the memory they keep)."""
        self._pending: dict[bytes, bytes | None] = {}
        """Deferred: served runs and deletions not yet written, in the order made."""
        self.broken = False
        """Deferred: a batch failed half way; the live keys may hold part of it (see apply)."""
        self._changing = False
        """True once the batch being applied may have changed a key."""
        self._groups = _group_plans(layout)
        self._native = _native_engine(engine, self._groups, layout.allowed_lateness_us)
        self._bookkeeping = _NATIVE if (engine or ENGINE) == "native" else None
        """The compiled per-batch bookkeeping of the keys (any layout), or None (the Python one)."""
        self._reader = RecordReader(
            layout,
            [key_state_key(group, b"") for group in range(len(layout.groups))],
            self._bookkeeping,
        )
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
        once at the end. The changes are the keys written, in the order of
        their first write, then what the batch served (in runs of
        :data:`~streamer.core.state.codec.SERVED_RUN`), then the meta.
        """
        records = list(records)
        return self.apply_columns(
            [record.offset for record in records],
            [record.key for record in records],
            [record.timestamp_ms for record in records],
            [record.doc for record in records],
        )

    def apply_columns(
        self,
        offsets: list[int],
        keys: Sequence[bytes | None],
        timestamps_ms: Sequence[int | None],
        docs: Sequence[dict[str, Any] | None],
    ) -> Applied:
        """:meth:`apply` of a batch given as columns (the consumer's): no record made for it.

        Deferred, a batch reads every key it needs before it changes any: one
        that fails reading (a key that does not decode, a corrupt store) leaves
        the live state as the last whole batch left it. One that fails later
        leaves :attr:`broken` set: its partition must be dropped, rebuilt from
        what the changelog holds and its records read again.
        """
        if self.broken:
            msg = f"the state of {self.topic}/{self.partition} failed a batch: rebuild it"
            raise RuntimeError(msg)
        entries: dict[bytes, KeyEntries | None] = {}
        self._new_keys.clear()
        self._changing = False
        try:
            applied = self._apply(offsets, keys, timestamps_ms, docs, entries)
        except BaseException:
            self._forget_cache()  # its keys may hold what the store never got
            if self.deferred and self._changing:
                self.broken = True  # the dirty keys may hold part of the batch
            raise
        self._cache_keys(entries)
        return applied

    def _apply(
        self,
        offsets: list[int],
        record_keys: Sequence[bytes | None],
        timestamps_ms: Sequence[int | None],
        docs: Sequence[dict[str, Any] | None],
        keys: dict[bytes, KeyEntries | None],
    ) -> Applied:
        count = len(offsets)
        width = len(self.layout.features)
        missing: dict[int, Served | None] = {}
        fresh, last = self._sort_out(offsets, docs, missing)
        if len(fresh) < count:
            docs = [docs[at] for at in fresh]
            record_keys = [record_keys[at] for at in fresh]
            timestamps_ms = [timestamps_ms[at] for at in fresh]
        columns, bad = self._reader.read_columns(
            docs,  # type: ignore[arg-type]
            record_keys,
            timestamps_ms,
        )
        clocks = list(self.meta.clocks_us)
        written: dict[bytes, None] = {}
        """The keys this batch writes, in the order of their first write."""
        if self.deferred:
            self._read_ahead(columns, keys)
            self._changing = True
        block = _NAN * (len(fresh) * width)  # a row a record applied; NaN: none served
        rejected: dict[int, Served] = {}
        """The records applied that the state rejects, by their place in ``block``."""
        if len(columns) == 1:
            self._apply_group(columns[0], bad, keys, clocks, written, block, rejected)
        else:
            self._apply_groups(columns, bad, keys, clocks, written, block, rejected)
        if len(fresh) == count:
            values = block  # every record was applied: the usual batch
            missing.update(rejected)
        else:
            values = _placed(block, rejected, fresh, count, width, missing)
        if self.deferred:
            self._defer(offsets, fresh, block, rejected, written, keys)
            self.meta = msgspec.structs.replace(
                self.meta, last_offset=last, clocks_us=tuple(clocks)
            )
            return Applied(values, width, missing, ())
        changes: list[Change] = [
            (store_key, encode_key_state(e.newest_us, e.times, e.columns))
            for store_key, e in [(k, keys[k]) for k in written]
            if e is not None  # a key written holds entries
        ]
        if self._remember:
            changes.extend(_served_runs(offsets, fresh, block, rejected, width))
        meta = msgspec.structs.replace(self.meta, last_offset=last, clocks_us=tuple(clocks))
        changes.append((META_KEY, encode(meta)))
        self.store.write(changes)
        self.meta = meta  # only once written: a failed write leaves the engine as the store is
        return Applied(values, width, missing, tuple(changes))

    def _read_ahead(
        self, columns: list[GroupColumns], keys: dict[bytes, KeyEntries | None]
    ) -> None:
        """Read every key of the batch that is not cached (the loops then find them in ``keys``)."""
        cache = self._cache
        for group in columns:
            for store_key in set(group.store_keys).difference(cache):
                keys[store_key] = self._load(store_key)

    def _defer(
        self,
        offsets: list[int],
        fresh: list[int],
        block: array,
        rejected: dict[int, Served],
        written: dict[bytes, None],
        keys: dict[bytes, KeyEntries | None],
    ) -> None:
        """Keep a batch's changes for :meth:`take_changes`: its keys dirty, its runs encoded."""
        dirty = self._dirty
        # What a key held when it became dirty, and an entry per group for each record since.
        # A key past its TTL got a new KeyEntries: the newest object replaces the old.
        if self._bookkeeping is not None:  # the same, in C: no bytecode per key
            self._dirty_entries += self._bookkeeping.defer_keys(written, keys, dirty) + len(fresh)
        else:
            held = [keys[store_key] for store_key in written.keys() - dirty.keys()]
            self._dirty_entries += sum(len(e.times) for e in held if e is not None) + len(fresh)
            dirty.update({store_key: keys[store_key] for store_key in written})  # type: ignore[misc]
        if self._remember:
            self._pending.update(
                _served_runs(offsets, fresh, block, rejected, len(self.layout.features))
            )

    @property
    def dirty_entries(self) -> int:
        """Deferred: at most this many entries are held by keys not yet written."""
        return self._dirty_entries

    @property
    def dirty_keys(self) -> int:
        """Deferred: how many keys changed since they were last written."""
        return len(self._dirty)

    def take_changes(self, *, write: bool = True) -> tuple[Change, ...]:
        """Deferred: every change since the last take, encoded once, and written to the store.

        The changes are the served runs and deletions in the order made, then
        each dirty key's state (once, as it is now), then the meta last: one
        store write, so the store's last applied offset always goes with the
        states it describes. ``write=False``: only encoded (a store being
        rebuilt gets them from the changelog's overlay).
        """
        if self.broken:
            msg = f"the state of {self.topic}/{self.partition} failed a batch: rebuild it"
            raise RuntimeError(msg)
        changes: list[Change] = list(self._pending.items())
        changes.extend(
            (store_key, encode_key_state(e.newest_us, e.times, e.columns))
            for store_key, e in self._dirty.items()
        )
        changes.append((META_KEY, encode(self.meta)))
        if write:
            self.store.write(changes)
        self._pending = {}
        self._dirty = {}
        self._dirty_entries = 0
        return tuple(changes)

    def _sort_out(
        self,
        offsets: list[int],
        docs: Sequence[dict[str, Any] | None],
        outcomes: dict[int, Served | None],
    ) -> tuple[list[int], int]:
        """The places of the records to apply, and the last offset once the batch is applied.

        A replay gets its outcome in ``outcomes`` here (what it was served); a
        value that is not a JSON object gets None there.
        """
        applied_before = self.meta.last_offset
        if offsets and min(offsets) > applied_before and None not in docs:
            return list(range(len(offsets))), max(offsets)  # the usual batch: every record new
        fresh = []
        last = applied_before
        replays: dict[int, Served] = {}
        for at, (offset, doc) in enumerate(zip(offsets, docs, strict=True)):
            if doc is None:
                outcomes[at] = None
                last = max(last, offset)
            elif offset <= applied_before:
                outcomes[at] = self._replayed(offset, replays)
            else:
                fresh.append(at)
                last = max(last, offset)
        return fresh, last

    def _apply_group(  # noqa: PLR0912, PLR0915 - the hot loop, inlined: a call costs what a step does
        self,
        columns: GroupColumns,
        bad: dict[int, BadRecordError],
        keys: dict[bytes, KeyEntries | None],
        clocks: list[int | None],
        written: dict[bytes, None],
        block: array,
        rejected: dict[int, Served],
    ) -> None:
        """The records of a one-group layout, in order: :meth:`_apply_groups` for one group."""
        plan = self._groups[0]
        features, windows, horizon, ttl = (
            plan.features,
            plan.windows_us,
            plan.horizon_us,
            plan.ttl_us,
        )
        no_bounds, no_columns, max_entries = plan.no_bounds, plan.no_columns, plan.max_entries
        one_window = len(windows) == 1
        one_field = len(no_columns) == 1
        lateness = self.layout.allowed_lateness_us
        width = len(self.layout.features)
        cache = self._cache
        load = self._load
        rows: Iterator[GroupInput] = zip(*columns, strict=True)
        start = 0
        if self._native is not None:  # the same loop, compiled: it stops where it may not go
            start, clocks[0] = self._native.apply_group(
                plan, features, windows, horizon, ttl, max_entries, lateness, width,
                len(no_columns), *columns, bad, keys, cache, load, clocks[0], written, block,
                rejected,
            )  # fmt: skip
            if start == len(columns.times_us):
                return
            rows = islice(rows, start, None)
        clock = clocks[0]
        for at, (store_key, time_us, fields) in enumerate(rows, start):
            if bad and at in bad:
                rejected[at] = Served(None, bad[at].reason, bad[at].detail)
                continue
            state = keys.get(store_key, _UNREAD)
            if state is _UNREAD:
                cached = cache.get(store_key)
                state = keys[store_key] = cached if cached is not None else load(store_key)
            if state is not None:
                newest = state.newest_us
                if clock is not None and newest < clock - ttl:
                    state = None  # past its TTL: it reads as empty
                elif time_us < newest - lateness:
                    rejected[at] = _late(newest - time_us, lateness)
                    continue
                elif len(state.times) >= max_entries and _full(
                    state, max(newest, time_us) - horizon, max_entries
                ):
                    rejected[at] = _too_large(max_entries)
                    continue
            values = [0.0] * width
            if state is None:  # new, or past its TTL: only this entry
                feature_values(
                    features, no_bounds, [], no_columns, 0, True, time_us, fields, values
                )
                keys[store_key] = KeyEntries.first(time_us, fields)
            elif state.ordered and time_us >= newest:  # KeyEntries.bounds and .add, inline
                times = state.times
                hi = len(times)
                bounds = (
                    [bisect_right(times, time_us - windows[0], 0, hi)]
                    if one_window
                    else [bisect_right(times, time_us - w, 0, hi) for w in windows]
                )
                entry_columns = state.columns
                feature_values(
                    features, bounds, times, entry_columns, hi, True, time_us, fields, values
                )
                if times[0] <= time_us - horizon:
                    state.drop(time_us - horizon)  # in place: the lists stay the same
                state.newest_us = time_us
                times.append(time_us)
                if one_field:
                    entry_columns[0].append(fields[0])
                else:
                    for column, value in zip(entry_columns, fields, strict=True):
                        column.append(value)
            else:
                _out_of_order(plan, state, time_us, fields, values)
            written[store_key] = None
            if clock is None or time_us > clock:
                clock = time_us
            block[at * width : (at + 1) * width] = array("d", values)
        clocks[0] = clock

    def _apply_groups(
        self,
        columns: list[GroupColumns],
        bad: dict[int, BadRecordError],
        keys: dict[bytes, KeyEntries | None],
        clocks: list[int | None],
        written: dict[bytes, None],
        block: array,
        rejected: dict[int, Served],
    ) -> None:
        """The records, in order: each one's values, then its entries in its keys' states."""
        width = len(self.layout.features)
        rows = zip(*(zip(*group, strict=True) for group in columns), strict=True)
        for at, inputs in enumerate(rows):
            if at in bad:
                rejected[at] = Served(None, bad[at].reason, bad[at].detail)
                continue
            served = self._apply_one(inputs, keys, clocks, written)
            if served.values is None:
                rejected[at] = served
            else:
                block[at * width : (at + 1) * width] = array("d", served.values)

    def _replayed(self, offset: int, replays: dict[int, Served]) -> Served:
        """What a replayed offset was served: from its served run, read once per batch."""
        if offset not in replays and offset >= self.meta.served_from:
            raw = self._served_run(offset)
            if raw is not None:
                width = len(self.layout.features)
                run = decode_served(raw, width)
                replays.update(
                    (at, run.outcome(place, width)) for place, at in enumerate(run.offsets)
                )
        if offset in replays and offset >= self.meta.served_from:
            return replays[offset]
        return Served(
            None,
            STATE_REPLAYED,
            f"offset {offset} was applied to the state before (last applied "
            f"{self.meta.last_offset}) and what it was served is no longer kept",
        )

    def _apply_one(
        self,
        inputs: Sequence[GroupInput],
        keys: dict[bytes, KeyEntries | None],
        clocks: list[int | None],
        written: dict[bytes, None],
    ) -> Served:
        """Apply one well-read record: its values, then its entries in its keys' states."""
        lateness = self.layout.allowed_lateness_us
        groups = self._groups
        states: list[KeyEntries | None] = []
        for group, (store_key, time_us, _fields) in enumerate(inputs):
            state = keys[store_key] if store_key in keys else self._read_key(store_key, keys)
            if state is not None:
                clock = clocks[group]
                if clock is not None and state.newest_us < clock - groups[group].ttl_us:
                    state = None  # past its TTL: it reads as empty
                elif time_us < state.newest_us - lateness:
                    return _late(state.newest_us - time_us, lateness)
                elif len(state.times) >= groups[group].max_entries and _full(
                    state,
                    max(state.newest_us, time_us) - groups[group].horizon_us,
                    groups[group].max_entries,
                ):
                    return _too_large(groups[group].max_entries)
            states.append(state)
        values = [0.0] * len(self.layout.features)
        for plan, (_store_key, time_us, fields), state in zip(groups, inputs, states, strict=True):
            if state is None:
                feature_values(
                    plan.features, plan.no_bounds, [], plan.no_columns, 0, True, time_us, fields,
                    values,
                )  # fmt: skip
            elif state.ordered:
                bounds, hi = state.bounds(time_us, plan.windows_us)
                feature_values(
                    plan.features, bounds, state.times, state.columns, hi, True, time_us, fields,
                    values,
                )  # fmt: skip
            else:
                _unordered_values(plan, state, time_us, fields, values)
        for group, (store_key, time_us, fields) in enumerate(inputs):
            state = states[group]
            if state is None:  # new, or past its TTL: only this entry
                keys[store_key] = KeyEntries.first(time_us, fields)
            else:
                state.add(time_us, fields, max(state.newest_us, time_us) - groups[group].horizon_us)
            written[store_key] = None
            clock = clocks[group]
            clocks[group] = time_us if clock is None else max(clock, time_us)
        return Served(tuple(values))

    def _served_run(self, offset: int) -> bytes | None:
        """The bytes of the served run that holds ``offset`` (the first to end at or after it)."""
        low, high = served_key(offset), served_key(self.meta.last_offset + 1)
        ends = self.store.keys_between(low, high)
        pending = self._pending
        if pending:  # deferred: runs not yet written, deletions not yet made
            found = dict.fromkeys(ends)
            for key, value in pending.items():
                if low <= key < high:
                    if value is None:
                        found.pop(key, None)
                    else:
                        found[key] = None
            ends = sorted(found)
        if not ends:
            return None
        return pending[ends[0]] if ends[0] in pending else self.store.get(ends[0])

    def _read(self, record: StateInput) -> list[GroupInput]:
        """Per group: the record's store key, time and fields (one record alone)."""
        assert record.doc is not None
        return self._reader.read(record.doc, record.key, record.timestamp_ms)

    def _load(self, store_key: bytes) -> KeyEntries | None:
        """A key's entries from the store (None: the store does not hold it), or its live ones."""
        if self._dirty:
            dirty = self._dirty.get(store_key)
            if dirty is not None:  # changed since the store got it (and out of the cache)
                return dirty
        raw = self.store.get(store_key)
        if raw is None:
            self._new_keys.add(store_key)
            return None
        state = decode_key_state(raw)
        width = len(self._groups[store_key[1]].no_columns)
        if (
            not state.times
            or len(state.columns) != width
            or any(len(column) != len(state.times) for column in state.columns)
        ):  # it decodes, but as no key state of this group does: a corrupt store
            msg = f"the key state at {store_key!r} has {len(state.times)} entries and "
            msg += f"{[len(column) for column in state.columns]} field values"
            raise msgspec.DecodeError(msg)
        return KeyEntries.from_state(state)

    def _read_key(
        self, store_key: bytes, keys: dict[bytes, KeyEntries | None]
    ) -> KeyEntries | None:
        """A key's entries, the first time the batch reads it: cached, from the store, or none."""
        cached = self._cache.get(store_key)
        state = keys[store_key] = cached if cached is not None else self._load(store_key)
        return state

    def _expired(self, group: int, newest_us: int, clock: int | None) -> bool:
        return clock is not None and newest_us < clock - self._groups[group].ttl_us

    def _cache_keys(self, keys: dict[bytes, KeyEntries | None]) -> None:
        """Keep a batch's keys for the next batches, within ``cached_entries`` entries.

        A key new in this batch is not kept: most keys of a stream with many
        keys are seen once in a long while, and would only push out the keys
        that come back.
        """
        cache, sizes = self._cache, self._cache_sizes
        new_keys = self._new_keys
        if self._bookkeeping is not None:  # the same dict operations, in C
            self._cached = self._bookkeeping.cache_keys(
                keys, new_keys, cache, sizes, self._cached, self._cache_limit
            )
            return
        cached = self._cached
        for store_key, state in keys.items():
            if store_key in new_keys:
                continue
            old = sizes.pop(store_key, None)  # then put back last: the most recently used
            if old is not None:
                cached -= old
                del cache[store_key]
            if state is not None:
                size = len(state.times) + 1
                cache[store_key] = state
                sizes[store_key] = size
                cached += size
        if cached > self._cache_limit:
            evicted = []
            for store_key, size in sizes.items():  # the least recently used first
                if cached <= self._cache_limit:
                    break
                evicted.append(store_key)
                cached -= size
            for store_key in evicted:
                del cache[store_key]
                del sizes[store_key]
        self._cached = cached

    def _uncache(self, store_key: bytes) -> None:
        size = self._cache_sizes.pop(store_key, None)
        if size is not None:
            del self._cache[store_key]
            self._cached -= size

    def _forget_cache(self) -> None:
        self._cache.clear()
        self._cache_sizes.clear()
        self._cached = 0

    def forget_served(self, below_offset: int) -> tuple[Change, ...]:
        """Forget what was served below an offset (the committed one: never replayed again).

        A served run is deleted once its last offset is below; a replay below
        ``below_offset`` is ``state_replayed`` either way.
        """
        if below_offset <= self.meta.served_from:
            return ()
        low, high = served_key(self.meta.served_from), served_key(below_offset)
        stale = self.store.keys_between(low, high)
        self.meta = msgspec.structs.replace(self.meta, served_from=below_offset)
        if self.deferred:  # deleted at the next take; a run never written is just dropped
            pending = self._pending
            for key in [key for key in pending if low <= key < high]:
                del pending[key]
            pending.update(dict.fromkeys(stale))
            return ()
        changes: list[Change] = [(key, None) for key in stale]
        changes.append((META_KEY, encode(self.meta)))
        self.store.write(changes)
        return tuple(changes)

    def sweep(self) -> tuple[Change, ...]:
        """Delete the keys that read as empty (past their TTL); no value changes by it.

        Deferred: the deletions wait for the next :meth:`take_changes` (and ()
        is returned); a dirty key, newer than the store's bytes, is left to the
        next sweep.
        """
        changes: list[Change] = []
        dirty = self._dirty
        for store_key, raw in self.store.items_from(KEY_PREFIX):
            if store_key in dirty:
                continue
            group = store_key[1]
            newest_us = decode_key_state(raw).newest_us
            if self._expired(group, newest_us, self.meta.clocks_us[group]):
                changes.append((store_key, None))
        for store_key, _none in changes:
            self._uncache(store_key)
        if self.deferred:
            self._pending.update(changes)
            return ()
        if changes:
            self.store.write(changes)
        return tuple(changes)

    def key_count(self) -> int:
        """Keys held (an O(keys) scan: for tests and the restore log, not per batch)."""
        return sum(1 for _ in self.store.items_from(KEY_PREFIX))


_NAN = array("d", [math.nan])
"""A row of one NaN: ``_NAN * n`` is a block of n values, none served yet."""


def _placed(
    block: array,
    rejected: dict[int, Served],
    fresh: list[int],
    count: int,
    width: int,
    missing: dict[int, Served | None],
) -> array:
    """The batch's block from its applied records' (``block``, at ``fresh``) and its replays'.

    ``missing`` holds the replays' outcomes and None for a value that is not a
    JSON object; it is left with the inputs served no values.
    """
    values = _NAN * (count * width)
    for place, at in enumerate(fresh):
        values[at * width : (at + 1) * width] = block[place * width : (place + 1) * width]
    for place, outcome in rejected.items():
        missing[fresh[place]] = outcome
    for at, replayed in list(missing.items()):
        if replayed is not None and replayed.values is not None:  # a replay served values
            values[at * width : (at + 1) * width] = array("d", replayed.values)
            del missing[at]
    return values


def _served_runs(
    offsets: list[int],
    fresh: list[int],
    block: array,
    rejected: dict[int, Served],
    width: int,
) -> Iterator[Change]:
    """The batch's served runs as store writes: each a slice of its block, and its rejections."""
    for start, run_offsets in _runs(offsets, fresh):
        stop = start + len(run_offsets)
        refused = [
            (place - start, outcome.reason, outcome.detail)
            for place, outcome in rejected.items()
            if start <= place < stop
        ]
        ran = ServedRun(run_offsets, block_bytes(block, start * width, stop * width), refused)
        yield served_key(run_offsets[-1]), encode(ran)


def _runs(offsets: list[int], fresh: list[int]) -> Iterator[tuple[int, list[int]]]:
    """The served runs of a batch: (the first's place among ``fresh``, their offsets)."""
    every = len(fresh) == len(offsets)  # the usual batch: sliced, not gathered one by one
    for start in range(0, len(fresh), SERVED_RUN):
        if every:
            yield start, offsets[start : start + SERVED_RUN]
        else:
            yield start, [offsets[at] for at in fresh[start : start + SERVED_RUN]]


def _native_engine(engine: str, plans: Sequence[_GroupPlan], lateness_us: int) -> ModuleType | None:
    """The compiled loop for a one-group layout whose bounds fit it, else None (the Python loop)."""
    if engine not in ("", "native", "python"):
        msg = f"engine must be 'native', 'python' or '', not {engine!r}"
        raise ValueError(msg)
    if engine == "native" and _NATIVE is None:
        msg = f"the native state engine is not available: {ENGINE_REASON}"
        raise ValueError(msg)
    if (engine or ENGINE) == "python" or len(plans) != 1:
        return None
    plan = plans[0]
    bounds = (*plan.windows_us, plan.horizon_us, plan.ttl_us, lateness_us, plan.max_entries)
    if not all(0 <= bound < _TIME_BOUND for bound in bounds[:-1]) or plan.max_entries < 1:
        return None
    return _NATIVE


def _late(behind_us: int, lateness_us: int) -> Served:
    return Served(
        None,
        LATE,
        f"event time is {behind_us / 1e6:g}s before the newest of its key, more than "
        f"state.allowed_lateness_s={lateness_us / 1e6:g}",
    )


def _full(state: KeyEntries, keep_above: int, max_entries: int) -> bool:
    """Whether the key holds ``max_entries`` entries above ``keep_above`` (those the add keeps).

    Counted, not dropped: the state of a record refused stays as the store has it.
    """
    times = state.times
    if state.ordered:
        return len(times) - bisect_right(times, keep_above) >= max_entries
    return sum(1 for t in times if t > keep_above) >= max_entries


def _too_large(max_entries: int) -> Served:
    return Served(
        None,
        STATE_TOO_LARGE,
        f"its key holds {max_entries} entries already, the most one key's state may hold "
        "(state.max_entries_per_key; it must fit one changelog record): the state is unchanged",
    )


def _out_of_order(
    plan: _GroupPlan,
    state: KeyEntries,
    time_us: int,
    fields: Sequence[FieldValue],
    values: list[float],
) -> None:
    """A record older than its key's newest, or of a key out of order: values, then its entry."""
    newest = state.newest_us
    if state.ordered:
        bounds, hi = state.bounds(time_us, plan.windows_us)
        feature_values(
            plan.features, bounds, state.times, state.columns, hi, True, time_us, fields, values
        )
    else:
        _unordered_values(plan, state, time_us, fields, values)
    state.add(time_us, fields, max(newest, time_us) - plan.horizon_us)


def _unordered_values(
    plan: _GroupPlan,
    state: KeyEntries,
    time_us: int,
    fields: Sequence[FieldValue],
    values: list[float],
) -> None:
    """The features of a key whose times are out of order: each window filtered."""
    for slot, window_us in enumerate(plan.windows_us):
        times, columns = state.filtered(time_us - window_us, time_us)
        feature_values(
            plan.by_slot[slot], plan.no_bounds, times, columns, len(times), False, time_us,
            fields, values,
        )  # fmt: skip


if _NATIVE is not None:
    _NATIVE.bind(
        Served, KeyEntries, _late, _full, _too_large, _out_of_order, window_value, exact_sum,
        math.fsum, KeyEntries.first,
    )  # fmt: skip


def enrich(doc: dict[str, Any], names: Sequence[str], values: Sequence[float]) -> bytes:
    """The record's JSON value with each declared feature at its top level (the value wins).

    The bytes of ``orjson.dumps({**doc, **dict(zip(names, values))})``, at about
    half its cost (no dict of the features, no unpacking).
    """
    merged = doc.copy()
    for name, value in zip(names, values, strict=True):
        merged[name] = value
    return orjson.dumps(merged)


__all__ = [
    "COMPILED",
    "ENGINE",
    "ENGINE_REASON",
    "Applied",
    "ForeignStoreError",
    "PartitionState",
    "StateInput",
    "aggregate",
    "enrich",
]

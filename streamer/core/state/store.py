"""The per-partition key-value store: in memory, or RocksDB on local disk (rocksdict).

Why RocksDB through rocksdict: the store must hold millions of keys without
holding them in RAM, write a batch's changes atomically (a ``WriteBatch``:
the key states and the partition's last applied offset land together, or not
at all, so a kill -9 never leaves a store that applied half a batch), and
iterate keys in order (served records are trimmed by offset range). rocksdict
ships RocksDB in a wheel (no system library) and is what Quix Streams uses for
the same job. SQLite would give atomicity and order too, at a higher cost per
write; shelve/dbm give neither atomic batches nor ordered iteration.

A store holds what :mod:`streamer.core.state.codec` encodes, and nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

Change = tuple[bytes, bytes | None]
"""A write: ``(key, value)``, or ``(key, None)`` to delete (a tombstone in the changelog)."""


class Store(Protocol):
    """What the state engine needs of a store."""

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None."""

    def write(self, changes: Sequence[Change]) -> None:
        """Apply every change at once (all or none)."""

    def keys_between(self, low: bytes, high: bytes) -> list[bytes]:
        """The keys in ``[low, high)``, in byte order."""

    def items_from(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, in byte order."""

    def close(self) -> None:
        """Release the store (its data stays)."""


class MemoryStore:
    """A dict: for the offline command and the tests (``streamer features`` holds one file)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:  # noqa: D102
        return self.data.get(key)

    def write(self, changes: Sequence[Change]) -> None:  # noqa: D102
        for key, value in changes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def keys_between(self, low: bytes, high: bytes) -> list[bytes]:  # noqa: D102
        return sorted(k for k in self.data if low <= k < high)

    def items_from(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:  # noqa: D102
        for key in sorted(k for k in self.data if k.startswith(prefix)):
            yield key, self.data[key]

    def close(self) -> None:  # noqa: D102
        pass


WRITE_BEHIND_BYTES = 8_000_000
"""What a state store gathers in memory before it writes to RocksDB (keys and values written).

The window state writes each key it changes once per batch, and the bench's
keys come back every batch or two: RocksDB's write (its write-ahead log and
memtable, about 2 µs a key with the GIL held) was the engine's largest single
cost. Gathered, a key rewritten many times reaches RocksDB once per 8 MB
written. The changelog, not the local store, is what makes the state durable
(docs/state.md): a kill -9 loses what was gathered, the store is then behind
the changelog and rebuilt from it, as a store ahead of it always was. 8 MB a
partition keeps the 1,000,000-key bench within its memory target."""

_NOT_GATHERED: Any = object()


class RocksStore:
    """One partition's store in a RocksDB directory (``state.dir/<group>/<topic>-<partition>``).

    ``write_behind_bytes`` > 0: writes are gathered in memory (and read from
    there) until that many bytes were written, then written to RocksDB in one
    batch, and at :meth:`flush` and :meth:`close`. Each write stays all or
    none: RocksDB holds the store as it was after some whole write, never part
    of one. 0: each write goes to RocksDB at once.

    ``memtable_bytes`` > 0: RocksDB's write buffer (memtable) size, which with
    its two buffers bounds what a store holds in memory before a flush to disk
    (0: RocksDB's default, 64 MB).

    ``wal`` False: RocksDB writes no write-ahead log (half the cost of a write).
    A kill -9 then loses the writes since the last memtable flush to disk: the
    store reopens as it was after an older whole write (a prefix of the writes,
    one column family), its meta record behind the changelog's, and is rebuilt
    from the changelog (docs/state.md). :meth:`close` flushes the memtables.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        write_behind_bytes: int = 0,
        memtable_bytes: int = 0,
        wal: bool = True,
    ) -> None:
        from rocksdict import Options, Rdict, WriteOptions  # noqa: PLC0415 - streamer[state] only

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._options = Options(raw_mode=True)
        # An open starts this many threads to open the table files and joins them, with the
        # GIL held (16 by default: an open of a new store started 18 threads). One cut an open
        # by about 1 ms of CPU, and 8 ms of wall time with the 2 cores busy (docs/performance.md,
        # "The consumer's side and the start-up"); the files are the same, opened in turn.
        self._options.set_max_file_opening_threads(1)
        if memtable_bytes:
            self._options.set_write_buffer_size(memtable_bytes)
        self._db: Any = Rdict(str(self.path), self._options)
        self._wal = wal
        # A property at run time, though rocksdict's stubs declare a method of that name.
        self._write_options: Any = cast("Any", WriteOptions())
        self._write_options.disable_wal = not wal
        self._gathered: dict[bytes, dict[bytes, bytes | None]] = {}
        """What was gathered, by the key's first byte (a range reads only its own kinds)."""
        self._gathered_bytes = 0
        self._write_behind_bytes = write_behind_bytes

    def get(self, key: bytes) -> bytes | None:  # noqa: D102
        if self._gathered:
            kind = self._gathered.get(key[:1])
            if kind is not None:
                value: bytes | None = kind.get(key, _NOT_GATHERED)
                if value is not _NOT_GATHERED:
                    return value
        found: bytes | None = self._db.get(key)
        return found

    def write(self, changes: Sequence[Change]) -> None:  # noqa: D102
        if not self._write_behind_bytes:
            self._write_through(changes)
            return
        size = sum(len(key) + (0 if value is None else len(value)) for key, value in changes)
        if self._gathered_bytes + size >= self._write_behind_bytes:
            # One RocksDB batch of what was gathered and these changes: if it fails, neither
            # is lost from memory, and this write failed as a whole.
            self._write_through((*self._gathered_changes(), *changes))
            self._gathered.clear()
            self._gathered_bytes = 0
            return
        gathered = self._gathered
        for key, value in changes:
            kind = gathered.get(key[:1])
            if kind is None:
                kind = gathered[key[:1]] = {}
            kind[key] = value
        self._gathered_bytes += size

    def flush(self) -> None:
        """Write what was gathered to RocksDB."""
        if self._gathered:
            self._write_through(self._gathered_changes())
            self._gathered.clear()
            self._gathered_bytes = 0

    def _gathered_changes(self) -> list[Change]:
        return [change for kind in self._gathered.values() for change in kind.items()]

    def _write_through(self, changes: Sequence[Change]) -> None:
        from rocksdict import WriteBatch  # noqa: PLC0415

        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch, self._write_options)

    def keys_between(self, low: bytes, high: bytes) -> list[bytes]:  # noqa: D102
        keys: list[bytes] = []
        for key in self._db.keys(from_key=low):
            if key >= high:
                break
            keys.append(key)
        if not self._gathered:
            return keys
        found = dict.fromkeys(keys)
        for first, kind in self._gathered.items():
            if not low[:1] <= first <= high[:1]:
                continue
            for key, value in kind.items():
                if low <= key < high:
                    if value is None:
                        found.pop(key, None)
                    else:
                        found[key] = None
        return sorted(found)

    def items_from(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:  # noqa: D102
        self.flush()  # a scan (a sweep, a count) reads RocksDB alone
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def approximate_bytes(self) -> int:
        """RocksDB's estimate of its live data, and what is gathered (the state-bytes gauge)."""
        written = int(self._db.property_int_value("rocksdb.estimate-live-data-size") or 0)
        return written + self._gathered_bytes

    def close(self) -> None:
        """Write what was gathered, then close (RocksDB's memtables flushed to disk)."""
        try:
            self.flush()
            if not self._wal:  # no write-ahead log: the memtables to disk
                self._db.flush()
        finally:
            self._db.close()

    def destroy(self) -> None:
        """Close and delete the directory (a corrupt or foreign store is rebuilt from its log)."""
        self._gathered.clear()
        self._gathered_bytes = 0
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)

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
from typing import Any, Protocol

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


class RocksStore:
    """One partition's store in a RocksDB directory (``state.dir/<group>/<topic>-<partition>``)."""

    def __init__(self, path: str | Path) -> None:
        from rocksdict import Options, Rdict  # noqa: PLC0415 - streamer[state] only

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._options = Options(raw_mode=True)
        self._db: Any = Rdict(str(self.path), self._options)

    def get(self, key: bytes) -> bytes | None:  # noqa: D102
        value: bytes | None = self._db.get(key)
        return value

    def write(self, changes: Sequence[Change]) -> None:  # noqa: D102
        from rocksdict import WriteBatch  # noqa: PLC0415

        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch)

    def keys_between(self, low: bytes, high: bytes) -> list[bytes]:  # noqa: D102
        keys: list[bytes] = []
        for key in self._db.keys(from_key=low):
            if key >= high:
                break
            keys.append(key)
        return keys

    def items_from(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:  # noqa: D102
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def approximate_bytes(self) -> int:
        """RocksDB's estimate of the live data size (for the state-bytes gauge)."""
        return int(self._db.property_int_value("rocksdb.estimate-live-data-size") or 0)

    def close(self) -> None:  # noqa: D102
        self._db.close()

    def destroy(self) -> None:
        """Close and delete the directory (a corrupt or foreign store is rebuilt from its log)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

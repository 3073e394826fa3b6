"""A batch's values decoded for the state step: only the fields the declared features read.

The state step needs, per record, the key, the event time and the fields of
each group (core/state/layout.py). Decoding each value into a dict with
orjson builds every field of every record; a msgspec Struct of only the read
fields skips the others (0.34 against 0.79 µs per record of the bench's
events, before the dicts' garbage: docs/state.md). :func:`typed_batch` does that for a whole
batch, and answers only when each record then reads exactly as from
orjson's dict (``loads_json``, the reference that the per-record path and
``streamer features`` use); otherwise None, and the caller decodes as ever.

Where msgspec and orjson differ, and how a batch is kept on the right side:

- **UTF-8.** msgspec does not check the bytes of a field it skips; orjson
  refuses a value with any invalid UTF-8 (``not_utf8``). The batch's bytes are
  checked at once: ASCII, else a strict UTF-8 decode of them all (in C).
- **Depth.** orjson refuses nesting beyond 1,024 levels; msgspec stops at
  Python's recursion limit (about 995 levels below 1,000): stricter, unless
  the limit was raised above 1,024, which sends every batch the old way
  (``msgspec_nests_like_orjson``).
- **Numbers beyond a double** (``1e400``): skipped by msgspec, read as inf
  by ``loads_json`` (accepted by both); msgspec refuses one in a read field:
  the batch goes the old way.
- **Integers beyond 64 bits** read as an int by msgspec and as a float by
  orjson; **anything but the usual types** (a str key, an int time, a finite
  float or a str field): the record is read alone, from orjson's dict, by
  :meth:`~streamer.core.state.layout.RecordReader.read_columns`, which reads
  only those types from the columns (a 64-bit integer is beyond any time).
- Duplicate keys (the last wins), escaped keys, strings and their escapes,
  lone surrogates (refused), the JSON grammar: the same in both
  (tests/unit/core/state/test_reading.py compares them on generated values).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from streamer.core.features import loads_json, msgspec_nests_like_orjson


class TypedBatch(Sequence[dict[str, Any]]):
    """A batch whose every value is a JSON object, with the read fields as columns.

    ``columns[path]`` holds each record's value at that top-level path (None
    when absent; with no paths, the batch is only known to hold objects).
    Indexing a record decodes its value with ``loads_json``: the dict that a
    record read alone, or a replay, needs.
    """

    __slots__ = ("columns", "values")

    def __init__(self, values: Sequence[bytes], columns: dict[str, list[Any]]) -> None:
        self.values = values
        self.columns = columns

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        doc: dict[str, Any] = loads_json(self.values[index])
        return doc

    def __contains__(self, item: object) -> bool:
        # Every record is an object: the `None not in docs` of the engine is one call.
        return isinstance(item, dict) and any(item == doc for doc in self)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(loads_json, self.values)


@functools.lru_cache(maxsize=16)
def _decoder(paths: tuple[str, ...]) -> tuple[msgspec.json.Decoder[Any], list[Callable[..., Any]]]:
    """A msgspec decoder of just ``paths`` (any JSON value; None when absent), and their getters."""
    fields = [f"f{i}" for i in range(len(paths))]
    struct = msgspec.defstruct(
        "StateFields",
        [(name, Any, None) for name in fields],
        rename=dict(zip(fields, paths, strict=True)),
        gc=False,  # decoded JSON holds no cycles: a batch's structs are no work for the collector
    )
    return msgspec.json.Decoder(struct), [operator.attrgetter(name) for name in fields]


def typed_batch(
    values: Sequence[bytes | None], paths: tuple[str, ...], max_bytes: int
) -> TypedBatch | None:
    """``values`` with the top-level ``paths`` as columns, or None (see the module docstring).

    None unless every value is non-empty, at most ``max_bytes``, UTF-8, and a
    JSON object that msgspec decodes; then each record's fate is the one the
    per-record path gives it.
    """
    if not values or not msgspec_nests_like_orjson():
        return None
    try:
        joined = b"\n".join(values)  # type: ignore[arg-type]  # a None: TypeError
        if len(joined) > max_bytes and max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
            return None
        if not joined.isascii():
            joined.decode()  # strict UTF-8 of every value; a newline splits no character
        decoder, getters = _decoder(paths)
        structs = list(map(decoder.decode, values))  # type: ignore[arg-type]  # b"": DecodeError
    except (TypeError, UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        return None
    columns = {path: list(map(get, structs)) for path, get in zip(paths, getters, strict=True)}
    return TypedBatch(values, columns)  # type: ignore[arg-type]

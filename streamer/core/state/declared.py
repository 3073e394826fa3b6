"""Declared state features: the ``[[state.features]]`` tables, parsed and checked once.

A declared feature aggregates, per key, the values of earlier records of the
same key within a sliding event-time window (docs/state.md). This module only
reads the declarations; :mod:`streamer.core.state.windows` computes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AGGREGATIONS = (
    "count", "sum", "mean", "min", "max", "std", "last", "time_since_last", "distinct_count",
)  # fmt: skip
"""What a feature computes over its window."""

NUMERIC_AGGREGATIONS = frozenset({"sum", "mean", "min", "max", "std", "last"})
"""The aggregations whose ``field`` must hold a number in every record."""

RECORD_KEY = "$key"
"""``key = "$key"``: the Kafka record key (its bytes) instead of a field of the value."""

RECORD_TIMESTAMP = "$timestamp"
"""``time = "$timestamp"`` (the default): the Kafka record timestamp, in milliseconds."""


class DeclarationError(ValueError):
    """A ``[[state.features]]`` table is wrong: the message names it and says how to fix it."""


_UNITS_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def parse_duration_us(text: Any) -> int:
    """A window or a lateness as whole microseconds: ``"1h"``, ``"90s"``, ``"1h30m"``, ``"250ms"``.

    A number is seconds. The result is an integer, so that window bounds are
    compared exactly (a float bound could put a record on either side).

    Raises:
        DeclarationError: Not a positive duration.
    """
    if isinstance(text, bool):
        msg = f"must be a duration like '1h', '30m', '90s' or '250ms', got {text!r}"
        raise DeclarationError(msg)
    if isinstance(text, int | float):
        micros = round(float(text) * 1_000_000)
    elif isinstance(text, str) and text and _DURATION.sub("", text.replace(" ", "")) == "":
        micros = sum(int(n) * _UNITS_US[unit] for n, unit in _DURATION.findall(text))
    else:
        msg = f"must be a duration like '1h', '30m', '90s' or '250ms', got {text!r}"
        raise DeclarationError(msg)
    if micros <= 0:
        msg = f"must be a positive duration, got {text!r}"
        raise DeclarationError(msg)
    return micros


@dataclass(frozen=True)
class StateFeature:
    """One ``[[state.features]]`` table.

    ``key`` and ``time`` are dotted field paths into the record's JSON value, or
    :data:`RECORD_KEY` / :data:`RECORD_TIMESTAMP`. ``default`` is the value of
    an aggregation over an empty window (``mean``, ``min``, ``max``, ``std``,
    ``last``, ``time_since_last``; ``count``, ``sum`` and ``distinct_count``
    are 0 there).
    """

    name: str
    key: str
    agg: str
    window_us: int
    field: str = ""
    time: str = RECORD_TIMESTAMP
    include_current: bool = True
    default: float = 0.0


_KNOWN_KEYS = ("name", "key", "agg", "field", "window", "time", "include_current", "default")


def parse_features(tables: Any) -> tuple[StateFeature, ...]:
    """The ``[[state.features]]`` tables as :class:`StateFeature`, in their order.

    Raises:
        DeclarationError: One line naming the table (``state.features[2].agg``) and the fix.
    """
    if not isinstance(tables, Sequence) or isinstance(tables, str):
        msg = "state.features must be an array of tables like [[state.features]]"
        raise DeclarationError(msg)
    features = [_parse_one(i, table) for i, table in enumerate(tables)]
    names = [f.name for f in features]
    for name in names:
        if names.count(name) > 1:
            msg = f"state.features: the name {name!r} is declared twice; names must be unique"
            raise DeclarationError(msg)
    return tuple(features)


def _parse_one(index: int, table: Any) -> StateFeature:
    where = f"state.features[{index}]"
    if not isinstance(table, Mapping):
        msg = f"{where} must be a table like [[state.features]], got {table!r}"
        raise DeclarationError(msg)
    unknown = sorted(set(table) - set(_KNOWN_KEYS))
    if unknown:
        msg = f"unknown key {where}.{unknown[0]} (known keys: {', '.join(_KNOWN_KEYS)})"
        raise DeclarationError(msg)
    name = _text(table, "name", where, required=True)
    where = f"state.features[{index}] ({name!r})"
    key = _text(table, "key", where, required=True)
    agg = _text(table, "agg", where, required=True)
    if agg not in AGGREGATIONS:
        msg = f"{where}.agg must be one of {', '.join(AGGREGATIONS)}, got {agg!r}"
        raise DeclarationError(msg)
    field = _text(table, "field", where, required=False)
    if agg in NUMERIC_AGGREGATIONS or agg == "distinct_count":
        if not field:
            msg = f"{where}.field is required for agg = {agg!r} (the record field it reads)"
            raise DeclarationError(msg)
    elif field:
        msg = f"{where}.field is not read by agg = {agg!r}; remove it"
        raise DeclarationError(msg)
    if "window" not in table:
        msg = f"{where}.window is required (a duration like '1h')"
        raise DeclarationError(msg)
    try:
        window_us = parse_duration_us(table["window"])
    except DeclarationError as exc:
        msg = f"{where}.window {exc}"
        raise DeclarationError(msg) from None
    time = _text(table, "time", where, required=False) or RECORD_TIMESTAMP
    include_current = table.get("include_current", True)
    if not isinstance(include_current, bool):
        msg = f"{where}.include_current must be true or false, got {include_current!r}"
        raise DeclarationError(msg)
    default = table.get("default", 0.0)
    if isinstance(default, bool) or not isinstance(default, int | float):
        msg = f"{where}.default must be a number, got {default!r}"
        raise DeclarationError(msg)
    return StateFeature(
        name=name,
        key=key,
        agg=agg,
        window_us=window_us,
        field=field,
        time=time,
        include_current=include_current,
        default=float(default),
    )


def _text(table: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
    value = table.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        msg = f"{where}.{key} must be a non-empty string, got {value!r}"
        raise DeclarationError(msg)
    return value.strip()

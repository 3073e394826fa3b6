"""Types of the compiled loop (streamer/core/state/_engine.c); see windows.py."""

from collections.abc import Callable
from typing import Any

def bind(
    served: type,
    key_entries: type,
    late: Callable[..., Any],
    full: Callable[..., Any],
    too_large: Callable[..., Any],
    out_of_order: Callable[..., Any],
    value: Callable[..., Any],
    exact_sum: Callable[..., Any],
    fsum: Callable[..., Any],
    first: Callable[..., Any],
) -> None: ...
def apply_group(
    plan: Any,
    features: tuple[Any, ...],
    windows_us: tuple[int, ...],
    horizon_us: int,
    ttl_us: int,
    max_entries: int,
    lateness_us: int,
    width: int,
    fields: int,
    store_keys: list[bytes],
    times_us: list[int],
    rows: list[Any],
    bad: dict[int, Any],
    keys: dict[bytes, Any],
    cache: dict[bytes, Any],
    load: Callable[[bytes], Any],
    clock: int | None,
    written: dict[bytes, None],
    served: list[Any],
) -> tuple[int, int | None]: ...
def window_sum(values: list[float]) -> float: ...
def cache_keys(
    keys: dict[bytes, Any],
    new_keys: set[bytes],
    cache: dict[bytes, Any],
    sizes: dict[bytes, int],
    cached: int,
    limit: int,
) -> int: ...
def defer_keys(
    written: dict[bytes, None], keys: dict[bytes, Any], dirty: dict[bytes, Any]
) -> int: ...
def float_rows(rows: Any, width: int) -> bytes | None: ...

"""Python's default recursion limit inside a hypothesis test, for the msgspec fast paths."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def python_default_recursion_limit() -> Iterator[None]:
    """Hypothesis raises the limit while a test runs, and a fast path that decodes with
    msgspec declines every batch above 1,024 (``msgspec_nests_like_orjson``): the tests
    of those paths run them under the limit a process starts with."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)

"""For the tests of the msgspec fast paths against orjson: JSON texts where they may differ,
and Python's default recursion limit inside a hypothesis test."""

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


EDGE_LITERALS = (
    b"1e400",  # beyond a double: orjson refuses the value (loads_json: inf), msgspec skips it
    b"-1E+309",
    b"9" * 400,
    b"0e999",
    b"1e-400",
    b"18446744073709551616",  # beyond 64 bits: orjson reads a float, msgspec an int
    b"18446744073709551615",
    b"-9223372036854775809",
    b"9007199254740993",  # above 2**53: a float rounds it
    b"-0",
    b"-0.0",
    b"0.1000000000000000055511151231257827021181583404541015625",
    b"1796555250015.4400000000001",
    b'[1e400,{"x":-1e999}]',
    b'"\\u00e9\\ud83d\\ude00"',
    b'"\\ud800"',  # a lone surrogate: refused by both
    b'"caf\xc3\xa9"',
    b'"\xed\xa0\x80"',  # an encoded surrogate: not UTF-8
    b'"\xf4\x90\x80\x80"',  # beyond U+10FFFF
    b'"\xc3"',  # a cut character
    b"[" * 1000 + b"]" * 1000,  # deeper than msgspec nests, not than orjson
    b"[" * 1030 + b"]" * 1030,  # deeper than orjson nests
)
"""JSON values, as their text, where msgspec's decode and orjson's may differ."""

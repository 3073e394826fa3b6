"""Which input headers a record carries to its output and its dead letter (kafka.propagate_headers).

The bytes of a carried header are passed on as they are. streamer's own
``streamer.*`` headers of an input (a replayed dead letter, say) are never
carried: the dead letter writes its own.
"""

from __future__ import annotations

from collections.abc import Sequence

Headers = list[tuple[str, bytes]]

_OWN_PREFIX = "streamer."


def carried_headers(headers: Sequence[Headers] | None, names: str) -> list[Headers] | None:
    """Each row's headers named by ``names`` (comma list, or ``*``); None when no row has one."""
    spec = names.strip()
    if headers is None or not spec:
        return None
    if not any(headers):
        # No record has a header: the outputs go without (the clients' faster path).
        return None
    if spec == "*":
        carried = [[(k, v) for k, v in row if not k.startswith(_OWN_PREFIX)] for row in headers]
    else:
        wanted = frozenset(name.strip() for name in spec.split(",") if name.strip())
        carried = [[(k, v) for k, v in row if k in wanted] for row in headers]
    return carried if any(carried) else None

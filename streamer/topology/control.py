"""Blocking control calls, made from the topology's own threads and never from inside an actor."""

from __future__ import annotations

import time
from typing import Any

import pykka

ASK_TIMEOUT_S = 10.0


def ask(ref: pykka.ActorRef, message: object, timeout: float) -> Any:
    """Ask ``ref`` and wait for the answer (pykka's deadlock guide: not from an actor)."""
    return ref.ask(message, block=True, timeout=timeout)


def left(deadline: float) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value), never negative."""
    return max(0.0, deadline - time.monotonic())

"""Stable addresses for restartable actors, and the link to a shadow (challenger) actor."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pykka

if TYPE_CHECKING:
    from streamer.core.models import Model
    from streamer.core.monitoring.agreement import Agreement, PendingSlots

log = logging.getLogger(__name__)


class Teller(Protocol):
    """Where a stage sends its output: a ``pykka.ActorRef`` or a :class:`Route` of them.

    Only ``tell`` is used on the data plane, and what it returns is ignored, so
    a ref (``-> None``) and a Route (``-> bool``) both fit.
    """

    def tell(self, message: Any) -> object:
        """Send ``message`` without waiting for an answer."""
        ...


class Route:
    """A named group of actor refs that the supervisor can swap.

    Senders hold the Route, not the refs, so that a restarted actor is reached
    without rewiring its neighbours. A ``tell`` to a dead ref is dropped (not
    raised): the supervisor restarts the actor and rewinds the consumer, which
    sends every unacknowledged batch again.
    """

    def __init__(self, name: str, refs: list[pykka.ActorRef] | None = None) -> None:
        self.name = name
        self._refs: list[pykka.ActorRef] = list(refs or [])
        self._next = 0
        self._lock = threading.Lock()

    def set(self, refs: list[pykka.ActorRef]) -> None:
        """Replace every ref."""
        with self._lock:
            self._refs = list(refs)

    def replace(self, index: int, ref: pykka.ActorRef) -> None:
        """Swap one ref (after a restart)."""
        with self._lock:
            self._refs[index] = ref

    def refs(self) -> list[pykka.ActorRef]:
        """A snapshot of the current refs."""
        with self._lock:
            return list(self._refs)

    def tell(self, message: object) -> bool:
        """Send to the next ref, round-robin; returns False when it was dropped."""
        ref = self._take_next()
        if ref is None:
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            log.debug("%s: dropped a message to a dead actor; a rewind resends it", self.name)
            return False
        return True

    def ask(self, message: object) -> pykka.Future[Any] | None:
        """Send to the next ref like :meth:`tell`; its answer's future, None when dropped."""
        ref = self._take_next()
        if ref is None:
            return None
        try:
            return ref.ask(message, block=False)
        except pykka.ActorDeadError:
            return None

    def _take_next(self) -> pykka.ActorRef | None:
        with self._lock:
            if not self._refs:
                return None
            ref = self._refs[self._next % len(self._refs)]
            self._next += 1
        return ref


def ask_without_waiting(
    target: Route | pykka.ActorRef[Any], message: object
) -> pykka.Future[Any] | None:
    """Send ``message`` to a ref or a Route; the answer's future, None if nobody got it."""
    if isinstance(target, Route):
        return target.ask(message)
    try:
        return target.ask(message, block=False)
    except pykka.ActorDeadError:
        return None


def timed_out(future: pykka.Future[Any], timeout_s: float) -> bool:
    """Wait for ``future``; True only when no answer came within ``timeout_s``.

    A dead actor (or its failure) counts as an answer: whatever it had sent, its
    client's close flushed, and a restarted actor is rewound anyway.
    """
    try:
        future.get(timeout=timeout_s)
    except pykka.Timeout:
        return True
    except Exception:  # the actor's own failure: its supervisor's business
        return False
    return False


@dataclass
class ChallengerLink:
    """What the model actors and the metrics hold of one running challenger.

    ``model`` is the challenger's model in use: a hot reload replaces it (and the
    ``version`` label of its metrics), and the actor switches between two batches.
    """

    name: str
    model: Model
    ref: pykka.ActorRef
    slots: PendingSlots
    agreement: Agreement

    @property
    def version(self) -> str:
        """The version label of the challenger's metrics."""
        return self.model.version

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
        with self._lock:
            if not self._refs:
                return False
            ref = self._refs[self._next % len(self._refs)]
            self._next += 1
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            log.debug("%s: dropped a message to a dead actor; a rewind resends it", self.name)
            return False
        return True


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

"""Liveness and readiness: pure functions of a snapshot of the topology.

The metrics actor's HTTP threads call the pipeline's probes, which take a
:class:`TopologySnapshot` and answer ``(ok, details)``: ``/healthz`` and
``/readyz`` return 200 when ok, 503 otherwise, with ``details`` as the JSON body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Probe = tuple[bool, dict[str, Any]]


@dataclass(frozen=True)
class TopologySnapshot:
    """What the probes look at, taken at one moment."""

    alive: Mapping[str, bool]
    """Every actor by name (``consumer``, ``producer``, ``metrics``, ``model-0``, ...)."""
    restarts: Mapping[str, int]
    """Restarts so far, by stage."""
    failure: str | None
    """Why the supervisor gave up, if it did."""
    assigned: bool
    """The consumer got its first partitions."""
    model_loaded: bool
    stopping: bool
    model_reachable: bool = True
    """False while a remote model's server is down (its circuit breaker is open)."""


def liveness(snapshot: TopologySnapshot) -> Probe:
    """Is every actor alive? Details name the dead ones.

    An actor that died and is being restarted counts as dead until its
    replacement runs; a failure the supervisor gave up on fails for good.
    """
    dead = sorted(name for name, alive in snapshot.alive.items() if not alive)
    ok = not dead and snapshot.failure is None
    details: dict[str, Any] = {
        "status": "ok" if ok else "failing",
        "dead_actors": dead,
        "restarts": dict(snapshot.restarts),
    }
    if snapshot.failure is not None:
        details["failure"] = snapshot.failure
    return ok, details


def readiness(snapshot: TopologySnapshot) -> Probe:
    """Broker reached, actors alive, group joined, model loaded and reachable, not stopping."""
    alive = snapshot.alive
    checks = {
        "actors_alive": liveness(snapshot)[0],
        "broker_connected": alive.get("consumer", False) and alive.get("producer", False),
        "group_joined": snapshot.assigned,
        "model_loaded": snapshot.model_loaded,
        "model_reachable": snapshot.model_reachable,
        "not_stopping": not snapshot.stopping,
    }
    failing = sorted(name for name, ok in checks.items() if not ok)
    return (
        not failing,
        {
            "status": "ready" if not failing else "not ready",
            "failing": failing,
            "checks": checks,
        },
    )

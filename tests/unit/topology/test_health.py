"""Liveness and readiness, as pure functions of a snapshot."""

from __future__ import annotations

import dataclasses

from streamer.topology.health import TopologySnapshot, liveness, readiness

HEALTHY = TopologySnapshot(
    alive={"consumer": True, "producer": True, "metrics": True, "model-0": True},
    restarts={},
    failure=None,
    assigned=True,
    model_loaded=True,
    stopping=False,
)


def snapshot(**changes: object) -> TopologySnapshot:
    return dataclasses.replace(HEALTHY, **changes)  # type: ignore[arg-type]


def down(*names: str) -> dict[str, bool]:
    return {name: name not in names for name in HEALTHY.alive}


class TestLiveness:
    def test_every_actor_alive_is_ok(self) -> None:
        assert liveness(HEALTHY) == (
            True,
            {"status": "ok", "dead_actors": [], "restarts": {}},
        )

    def test_the_dead_actors_are_named_in_order(self) -> None:
        ok, details = liveness(snapshot(alive=down("producer", "model-0")))
        assert ok is False
        assert details["status"] == "failing"
        assert details["dead_actors"] == ["model-0", "producer"]

    def test_a_failure_the_supervisor_gave_up_on_fails_with_actors_alive(self) -> None:
        ok, details = liveness(snapshot(failure="model actor died: boom", restarts={"model": 5}))
        assert ok is False
        assert details == {
            "status": "failing",
            "dead_actors": [],
            "restarts": {"model": 5},
            "failure": "model actor died: boom",
        }

    def test_the_restarts_are_a_copy(self) -> None:
        restarts = {"producer": 1}
        _, details = liveness(snapshot(restarts=restarts))
        details["restarts"]["producer"] = 2
        assert restarts == {"producer": 1}


class TestReadiness:
    def test_a_healthy_assigned_pipeline_is_ready(self) -> None:
        assert readiness(HEALTHY) == (
            True,
            {
                "status": "ready",
                "failing": [],
                "checks": {
                    "actors_alive": True,
                    "broker_connected": True,
                    "group_joined": True,
                    "model_loaded": True,
                    "model_reachable": True,
                    "not_stopping": True,
                },
            },
        )

    def test_before_the_first_assignment_it_is_not_ready(self) -> None:
        ok, details = readiness(snapshot(assigned=False))
        assert ok is False
        assert details["status"] == "not ready"
        assert details["failing"] == ["group_joined"]

    def test_a_dead_producer_means_the_broker_is_not_connected(self) -> None:
        _, details = readiness(snapshot(alive=down("producer")))
        assert details["failing"] == ["actors_alive", "broker_connected"]

    def test_a_dead_model_is_not_alive_but_the_broker_is_connected(self) -> None:
        _, details = readiness(snapshot(alive=down("model-0")))
        assert details["failing"] == ["actors_alive"]

    def test_before_the_consumer_exists_the_broker_is_not_connected(self) -> None:
        # While the broker is retried at start, only the metrics actor runs.
        ok, details = readiness(
            snapshot(alive={"consumer": False, "producer": False, "metrics": True}, assigned=False)
        )
        assert ok is False
        assert details["failing"] == ["actors_alive", "broker_connected", "group_joined"]

    def test_a_stopping_pipeline_is_not_ready(self) -> None:
        _, details = readiness(snapshot(stopping=True))
        assert details["failing"] == ["not_stopping"]

    def test_a_failure_fails_readiness_through_liveness(self) -> None:
        _, details = readiness(snapshot(failure="boom"))
        assert details["failing"] == ["actors_alive"]

"""The state metrics of the contract, from StateProgress and BatchDelivered, with their names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamer.actors.metrics import PipelineMetrics
from streamer.messages import BatchDelivered, StateProgress


def delivered(changelog_records: int) -> BatchDelivered:
    return BatchDelivered(
        produced=2,
        dead_letters={"late": 1},
        dropped=0,
        size=3,
        batch_seconds=0.01,
        preprocess_seconds=0.0,
        model_seconds=0.0,
        produce_seconds=0.0,
        changelog_records=changelog_records,
    )


def test_state_metrics_follow_the_open_partitions() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    value = registry.get_sample_value
    assert value("streamer_state_changelog_records_total") == 0.0
    assert value("streamer_dead_letters_total", {"reason": "late"}) == 0.0  # exists at 0

    metrics.apply(
        StateProgress(
            keys={("t", 0): 5, ("t", 1): 7},
            nbytes={("t", 0): 1024, ("t", 1): 0},
            restoring={("t", 0): False, ("t", 1): False, ("t", 2): True},
            restore_seconds={("t", 0): 0.25, ("t", 1): 0.0},
            restored={("t", 0): 300},
        )
    )
    metrics.apply(delivered(4))
    metrics.apply(delivered(6))
    assert value("streamer_state_keys", {"partition": "0"}) == 5
    assert value("streamer_state_keys", {"partition": "1"}) == 7
    assert value("streamer_state_bytes", {"partition": "0"}) == 1024
    assert value("streamer_state_restore_seconds", {"partition": "0"}) == 0.25
    assert value("streamer_state_restoring", {"partition": "2"}) == 1
    assert value("streamer_state_restoring", {"partition": "0"}) == 0
    assert value("streamer_state_restore_records_total", {"partition": "0"}) == 300
    assert value("streamer_state_changelog_records_total") == 10
    assert value("streamer_dead_letters_total", {"reason": "late"}) == 2

    # Partition 1 revoked, 2 restored: their series follow; the counter adds up.
    metrics.apply(
        StateProgress(
            keys={("t", 0): 6, ("t", 2): 9},
            nbytes={("t", 0): 2048, ("t", 2): 0},
            restoring={("t", 0): False, ("t", 2): False},
            restore_seconds={("t", 0): 0.25, ("t", 2): 1.5},
            restored={("t", 0): 20},
        )
    )
    assert value("streamer_state_keys", {"partition": "1"}) is None
    assert value("streamer_state_restoring", {"partition": "1"}) is None
    assert value("streamer_state_keys", {"partition": "2"}) == 9
    assert value("streamer_state_restoring", {"partition": "2"}) == 0
    assert value("streamer_state_restore_seconds", {"partition": "2"}) == 1.5
    assert value("streamer_state_restore_records_total", {"partition": "0"}) == 320

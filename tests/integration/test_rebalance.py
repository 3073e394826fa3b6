"""Two pipelines in one group: partitions move between them mid-stream and no input is lost."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from streamer.core.demo_data import make_record
from streamer.core.models.linear import load_linear
from streamer.topology import Pipeline

from .helpers import (
    BACKENDS,
    PROCESS_TIMEOUT_S,
    Cluster,
    GatedModel,
    PipelineStarter,
    SlowModel,
    Topics,
    end_offsets,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
RECORDS = 4000
MAX_RECORDS = 20
DELIVERY_TIMEOUT_S = 30.0


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a model actor blocked


@pytest.mark.parametrize("client", BACKENDS)
@pytest.mark.parametrize(
    "max_in_flight",
    [
        pytest.param(10_000, id="while-fetching"),
        pytest.param(2, id="while-paused-by-backpressure"),
    ],
)
def test_a_member_consumes_the_partitions_it_keeps_after_a_rebalance_and_nothing_is_lost(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    gate: threading.Event,
    max_in_flight: int,
    client: str,
) -> None:
    topics = cluster.new_topics(partitions=PARTITIONS)
    rng = random.Random(5)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(RECORDS)])
    ends = end_offsets(produced)
    settings = cluster.settings(
        topics,
        kafka={"client": client},
        batch={"max_records": MAX_RECORDS, "max_in_flight": max_in_flight},
        model={"workers": 1},
    )
    first = start_pipeline(settings, model=GatedModel(load_linear(None), gate))
    backpressured = max_in_flight < RECORDS // MAX_RECORDS
    if backpressured:
        wait_for(
            lambda: first.consumer_status().paused,
            PROCESS_TIMEOUT_S,
            "the first member to pause at max_in_flight",
        )
    else:
        wait_for(
            lambda: first.consumer_status().records_dispatched > 0,
            PROCESS_TIMEOUT_S,
            "the first member to dispatch records",
        )
        assert not first.consumer_status().paused

    second = start_pipeline(settings)  # the demo model, not gated
    wait_for(
        lambda: len(first.consumer_status().assigned) < PARTITIONS,
        PROCESS_TIMEOUT_S,
        "the first member to hand partitions over",
    )
    gate.set()

    _all_committed_then_nothing_lost(cluster, topics, ends, first, second, DELIVERY_TIMEOUT_S)


@pytest.mark.parametrize("client", BACKENDS)
def test_a_second_member_joining_mid_stream_loses_nothing(
    client: str, cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=PARTITIONS)
    rng = random.Random(11)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(RECORDS)])
    ends = end_offsets(produced)
    # Slow enough that the first member is still busy when the second one joins.
    settings = cluster.settings(
        topics,
        kafka={"client": client},
        batch={"max_records": 20, "max_in_flight": 4},
        model={"workers": 1},
    )
    first = start_pipeline(settings, model=SlowModel(load_linear(None), delay_s=0.02))
    wait_for(
        lambda: sum(first.consumer_status().watermarks.values()) > 0,
        PROCESS_TIMEOUT_S,
        "the first member to make progress",
    )

    second = start_pipeline(settings, model=SlowModel(load_linear(None), delay_s=0.02))
    wait_for(
        lambda: len(first.consumer_status().assigned) < PARTITIONS,
        PROCESS_TIMEOUT_S,
        "the first member to give up partitions",
    )
    assert sum(first.consumer_status().watermarks.values()) < RECORDS, (
        "the first member finished before the rebalance: nothing moved mid-stream"
    )
    _all_committed_then_nothing_lost(cluster, topics, ends, first, second, PROCESS_TIMEOUT_S)
    assert cluster.committed(topics.group, topics.input, PARTITIONS) == ends


def _all_committed_then_nothing_lost(
    cluster: Cluster,
    topics: Topics,
    ends: dict[int, int],
    first: Pipeline,
    second: Pipeline,
    timeout_s: float,
) -> None:
    """Wait for the group's commits to reach the input ends, stop both members, reconcile."""
    with cluster.committed_reader(topics.group) as committed:

        def describe() -> str:
            offsets = {p: committed(topics.input, p) for p in range(PARTITIONS)}
            return (
                f"group commits {offsets}; first member {first.consumer_status()}; "
                f"second member {second.consumer_status()}"
            )

        wait_for(
            lambda: all(committed(topics.input, p) == end for p, end in ends.items()),
            timeout_s,
            f"the group's commits to reach the input ends {ends}",
            interval_s=0.2,
            describe=describe,
        )
    assert second.stop().exit_code == 0
    assert first.stop().exit_code == 0

    result = cluster.reconcile(topics)
    assert result.lost == 0, result.lost_ranges[:10]
    assert result.scored == RECORDS

"""A slow model: the consumer caps the batches in flight and still delivers everything."""

from __future__ import annotations

import random
import threading
import time

import pytest

from streamer.actors import consumer as consumer_module
from streamer.core.demo_data import make_record
from streamer.core.models.linear import load_linear

from .helpers import (
    BACKENDS,
    PROCESS_TIMEOUT_S,
    Cluster,
    GatedModel,
    PipelineStarter,
    SlowModel,
    end_offsets,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
MAX_IN_FLIGHT = 2
MAX_RECORDS = 25
RECORDS = 4000

# How far above max_in_flight the consumer can go, from ConsumerActor._poll_once:
# a poll asks for at most free * max_records records (free = max_in_flight - in
# flight), but the micro-batcher also holds a partial batch (< max_records) per
# partition from earlier polls, so partition p can release up to
# ceil((max_records - 1 + n_p) / max_records) batches for its n_p new records:
# at most one more than n_p alone would fill, plus its leftover partial batch,
# which expires and is dispatched by the ticker even while paused. A partition
# that got no records releases at most its one old partial batch. Summed over
# the partitions that is at most free + 2 * partitions - 1 batches.
OVERSHOOT = 2 * PARTITIONS - 1


def test_batches_in_flight_stay_within_the_cap_under_a_slow_model_and_all_are_delivered(
    cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=PARTITIONS)
    rng = random.Random(3)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(RECORDS)])
    model = SlowModel(load_linear(None), delay_s=0.005)
    settings = cluster.settings(
        topics,
        batch={"max_in_flight": MAX_IN_FLIGHT, "max_records": MAX_RECORDS},
        model={"workers": 1},
    )
    pipeline = start_pipeline(settings, model=model)

    wanted = {(topics.input, p): end for p, end in end_offsets(produced).items()}
    in_flight: list[int] = []
    paused_seen = False
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while True:
        status = pipeline.consumer_status()
        in_flight.append(status.batches_in_flight)
        paused_seen = paused_seen or status.paused
        if status.watermarks == wanted:
            break
        assert time.monotonic() < deadline, f"not delivered in time: {status.watermarks}"
        time.sleep(0.001)
    report = pipeline.stop()

    assert report.exit_code == 0, report.failure
    assert len(in_flight) > 50, "too few samples to say anything about the cap"
    assert max(in_flight) <= MAX_IN_FLIGHT + OVERSHOOT, sorted(in_flight)[-20:]
    assert max(in_flight) >= MAX_IN_FLIGHT, "the cap was never reached: the model was not slow"
    assert paused_seen, "the consumer never paused its partitions"
    assert model.calls >= RECORDS // MAX_RECORDS

    result = cluster.reconcile(topics)
    assert (result.scored, result.dead_lettered, result.duplicates, result.lost) == (
        RECORDS,
        0,
        0,
        0,
    )


# kafka-python stops fetching a paused partition, so the consumer asks the broker for
# the end offsets (ListOffsets) while paused. Tansu answers that with the last batch's
# base offset + 1 (shared/TANSU-NOTES.md), not the end: tests/unit checks that refresh.
# confluent's pause is local, so librdkafka's fetches keep its end offsets current.
@pytest.mark.parametrize(
    "client",
    [
        pytest.param(
            "kafka-python",
            marks=pytest.mark.skip(reason="Tansu's ListOffsets(latest) is not the log end"),
        ),
        *BACKENDS[1:],
    ],
)
def test_the_lag_gauge_counts_records_that_arrive_while_the_consumer_is_paused(
    cluster: Cluster, start_pipeline: PipelineStarter, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "END_OFFSETS_EVERY_S", 0.5)
    topics = cluster.new_topics(partitions=1)
    rng = random.Random(13)
    cluster.produce(topics.input, [make_record(rng) for _ in range(200)])
    gate = threading.Event()  # the model holds the first batch: the watermark stays at 0
    settings = cluster.settings(
        topics,
        kafka={"client": client},
        batch={"max_in_flight": 1, "max_records": 10},
        model={"workers": 1},
    )
    try:
        pipeline = start_pipeline(settings, model=GatedModel(load_linear(None), gate))
        wait_for(lambda: pipeline.consumer_status().paused, PROCESS_TIMEOUT_S, "a pause")
        # These arrive while the partition is paused, so no fetch reports them.
        cluster.produce(topics.input, [make_record(rng) for _ in range(300)])

        def lag_is_right() -> bool:
            lag, expected = lag_and_expected()
            return lag == expected

        def lag_and_expected() -> tuple[float | None, int]:
            status = pipeline.consumer_status()
            fetched = status.records_dispatched + status.records_buffered
            lag = pipeline.registry.get_sample_value(
                "streamer_consumer_lag", {"topic": topics.input, "partition": "0"}
            )
            return lag, 500 - fetched

        wait_for(
            lag_is_right,
            PROCESS_TIMEOUT_S,
            "the lag to count the 500 records not yet fetched",
            describe=lambda: f"(lag, expected) = {lag_and_expected()}",
        )
        assert pipeline.consumer_status().paused
    finally:
        gate.set()
    assert pipeline.stop().exit_code == 0

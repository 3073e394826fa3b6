"""Both Kafka client backends pass the same delivery, commit and rebalance checks."""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.core.demo_data import make_record
from streamer.core.model import load_linear
from streamer.topology import Pipeline, ShutdownReport
from streamer.verify import TopicDump, reconcile

from .helpers import (
    ASSIGN_TIMEOUT_S,
    PROCESS_TIMEOUT_S,
    Cluster,
    PipelineStarter,
    Produced,
    SlowModel,
    Topics,
    end_offsets,
    wait_for,
    wait_until_delivered,
)

pytestmark = pytest.mark.integration

EVENTS = 5000
PARTITIONS = 4

BACKENDS = [
    pytest.param("kafka-python", id="kafka-python"),
    pytest.param(
        "confluent",
        id="confluent",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("confluent_kafka") is None,
            reason="needs the confluent extra: pip install 'streamer[confluent]'",
        ),
    ),
]


@dataclass
class Run:
    """What one clean run over 5,000 valid events left behind."""

    client: str
    topics: Topics
    produced: Produced
    report: ShutdownReport
    inputs: TopicDump
    outputs: TopicDump
    dead_letters: TopicDump
    committed: dict[int, int | None]


@pytest.fixture(scope="module", params=BACKENDS)
def clean_run(request: pytest.FixtureRequest, cluster: Cluster) -> Run:
    """5,000 valid events in 4 partitions, scored by a pipeline on one backend, read back."""
    client: str = request.param
    topics = cluster.new_topics(partitions=PARTITIONS)
    rng = random.Random(20261126)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(EVENTS)])
    assert len(end_offsets(produced)) == PARTITIONS, "every partition should get records"
    pipeline = Pipeline(
        cluster.settings(topics, kafka={"client": client}), registry=CollectorRegistry()
    )
    try:
        pipeline.start()
        assert pipeline.wait_until_assigned(ASSIGN_TIMEOUT_S)
        wait_until_delivered(pipeline, topics.input, produced)
    finally:
        report = pipeline.stop()
    return Run(
        client=client,
        topics=topics,
        produced=produced,
        report=report,
        inputs=cluster.read(topics.input),
        outputs=cluster.read(topics.output),
        dead_letters=cluster.read(topics.dead_letter),
        committed=cluster.committed(topics.group, topics.input, PARTITIONS),
    )


class TestEachBackendDeliversAndCommits:
    def test_the_pipeline_drains_and_stops_cleanly(self, clean_run: Run) -> None:
        assert clean_run.report.exit_code == 0, clean_run.report.failure
        assert clean_run.report.drained

    def test_every_input_has_exactly_one_output(self, clean_run: Run) -> None:
        result = reconcile(clean_run.inputs, clean_run.outputs, clean_run.dead_letters)

        assert (result.scored, result.dead_lettered, result.duplicates, result.lost) == (
            EVENTS,
            0,
            0,
            [],
        )

    def test_each_score_equals_the_demo_model_applied_offline(self, clean_run: Run) -> None:
        model = load_linear(None)
        mean, std = model.spec.mean.tolist(), model.spec.std.tolist()
        for key, value, _headers in clean_run.outputs.records.values():
            doc = orjson.loads(value or b"null")
            in_key, in_value = clean_run.produced[(doc["partition"], doc["offset"])]
            event = orjson.loads(in_value)
            row = [
                (float(event[name]) - m) / s
                for name, m, s in zip(model.spec.names, mean, std, strict=True)
            ]
            assert doc["score"] == pytest.approx(model.predict_one(row), abs=1e-9, rel=0)
            assert key == in_key, "outputs are keyed by the input key"

    def test_the_committed_offsets_equal_the_end_of_each_input_partition(
        self, clean_run: Run
    ) -> None:
        ends = end_offsets(clean_run.produced)

        assert clean_run.committed == ends
        assert clean_run.report.committed == {
            (clean_run.topics.input, p): end for p, end in ends.items()
        }


@pytest.mark.parametrize("client", BACKENDS)
def test_a_second_member_joining_mid_stream_loses_nothing(
    client: str, cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    records = 4000
    topics = cluster.new_topics(partitions=PARTITIONS)
    rng = random.Random(11)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(records)])
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
        lambda: sum(first.consumer_status()["watermarks"].values()) > 0,
        PROCESS_TIMEOUT_S,
        "the first member to make progress",
    )

    second = start_pipeline(settings, model=SlowModel(load_linear(None), delay_s=0.02))
    wait_for(
        lambda: len(first.consumer_status()["assigned"]) < PARTITIONS,
        PROCESS_TIMEOUT_S,
        "the first member to give up partitions",
    )
    assert sum(first.consumer_status()["watermarks"].values()) < records, (
        "the first member finished before the rebalance: nothing moved mid-stream"
    )
    with cluster.committed_reader(topics.group) as committed:
        wait_for(
            lambda: all(committed(topics.input, p) == end for p, end in ends.items()),
            PROCESS_TIMEOUT_S,
            f"the group's commits to reach {ends}",
            interval_s=0.2,
        )
    assert second.stop().exit_code == 0
    assert first.stop().exit_code == 0

    result = reconcile(
        cluster.read(topics.input), cluster.read(topics.output), cluster.read(topics.dead_letter)
    )
    assert result.lost == []
    assert result.scored == records
    assert cluster.committed(topics.group, topics.input, PARTITIONS) == ends

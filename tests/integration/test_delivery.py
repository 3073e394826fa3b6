"""A clean run end to end: one output per input, the right scores, commits at the end, order."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.core.demo_data import make_event, make_record
from streamer.core.models.linear import load_linear
from streamer.devtools.verify import Reconciliation, TopicDump, reconcile
from streamer.topology import Pipeline, ShutdownReport

from .helpers import (
    ASSIGN_TIMEOUT_S,
    BACKENDS,
    Cluster,
    PipelineStarter,
    Produced,
    Topics,
    end_offsets,
    wait_until_delivered,
)

pytestmark = pytest.mark.integration

EVENTS = 5000
PARTITIONS = 4
ISO_MILLIS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@dataclass
class Run:
    """What one clean pipeline run over 5,000 valid events left behind."""

    client: str
    topics: Topics
    produced: Produced
    report: ShutdownReport
    inputs: TopicDump
    outputs: TopicDump
    dead_letters: TopicDump
    committed: dict[int, int | None]
    streamed: Reconciliation


@pytest.fixture(scope="module", params=BACKENDS)
def clean_run(request: pytest.FixtureRequest, cluster: Cluster) -> Run:
    """Produce 5,000 valid events into 4 partitions, score them all with one client
    backend, stop, read everything back."""
    client: str = request.param
    topics = cluster.new_topics(partitions=PARTITIONS)
    rng = random.Random(20261125)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(EVENTS)])
    assert len(produced) == EVENTS
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
        streamed=cluster.reconcile(topics, client=client),
    )


def _sources(outputs: TopicDump) -> list[tuple[int, int]]:
    sources = []
    for _key, value, _headers in outputs.records.values():
        doc = orjson.loads(value or b"null")
        sources.append((doc["partition"], doc["offset"]))
    return sources


class TestACleanRunOfFiveThousandEvents:
    def test_the_pipeline_stops_cleanly_after_draining(self, clean_run: Run) -> None:
        assert clean_run.report.exit_code == 0, clean_run.report.failure
        assert clean_run.report.drained

    def test_every_input_has_exactly_one_output_and_nothing_is_dead_lettered(
        self, clean_run: Run
    ) -> None:
        assert set(clean_run.inputs.records) == set(clean_run.produced)
        sources = _sources(clean_run.outputs)

        assert len(sources) == EVENTS
        assert len(set(sources)) == len(sources), "an input was scored twice"
        assert set(sources) == set(clean_run.inputs.records)
        assert len(clean_run.dead_letters) == 0
        result = reconcile(clean_run.inputs, clean_run.outputs, clean_run.dead_letters)
        assert (result.scored, result.dead_lettered, result.duplicates, result.lost) == (
            EVENTS,
            0,
            0,
            0,
        )

    def test_streaming_the_topics_with_the_same_backend_reconciles_to_the_same_counts(
        self, clean_run: Run
    ) -> None:
        dumped = reconcile(clean_run.inputs, clean_run.outputs, clean_run.dead_letters)
        assert clean_run.streamed == dumped
        assert clean_run.streamed.inputs == EVENTS

    def test_each_score_equals_the_demo_model_applied_offline(self, clean_run: Run) -> None:
        model = load_linear(None)
        mean, std = model.spec.mean.tolist(), model.spec.std.tolist()
        for _key, value, _headers in clean_run.outputs.records.values():
            doc = orjson.loads(value or b"null")
            _in_key, in_value = clean_run.produced[(doc["partition"], doc["offset"])]
            event = orjson.loads(in_value)
            row = [
                (float(event[name]) - m) / s
                for name, m, s in zip(model.spec.names, mean, std, strict=True)
            ]
            assert doc["score"] == pytest.approx(model.predict_one(row), abs=1e-9, rel=0)

    def test_each_output_names_its_input_and_the_model_that_scored_it(self, clean_run: Run) -> None:
        model = load_linear(None)
        for key, value, _headers in clean_run.outputs.records.values():
            doc = orjson.loads(value or b"null")
            in_key, _in_value = clean_run.produced[(doc["partition"], doc["offset"])]
            assert set(doc) == {
                "key",
                "topic",
                "partition",
                "offset",
                "score",
                "model",
                "scored_at",
            }
            assert key == in_key, "outputs are keyed by the input key"
            assert doc["key"] == in_key.decode()
            assert doc["topic"] == clean_run.topics.input
            assert doc["model"] == {"name": model.name, "version": model.version}
            assert ISO_MILLIS.match(doc["scored_at"]), doc["scored_at"]

    def test_the_committed_offsets_equal_the_end_of_each_input_partition(
        self, clean_run: Run
    ) -> None:
        ends = end_offsets(clean_run.produced)

        assert clean_run.committed == ends
        assert clean_run.report.committed == {
            (clean_run.topics.input, p): end for p, end in ends.items()
        }


def _keyed_events(rng: random.Random, count: int, keys: int) -> list[tuple[bytes, bytes]]:
    records = []
    for _ in range(count):
        event = make_event(rng)
        event["card_id"] = f"card-{rng.randrange(keys):03d}"
        records.append((event["card_id"].encode(), orjson.dumps(event)))
    return records


@pytest.mark.parametrize("client", BACKENDS)
def test_records_sharing_a_key_come_out_in_input_offset_order_across_parallel_workers(
    client: str, cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=PARTITIONS)
    settings = cluster.settings(
        topics,
        kafka={"client": client},
        preprocess={"workers": 3},
        model={"workers": 3},
        batch={"max_records": 7},
    )
    rng = random.Random(7)
    pipeline = start_pipeline(settings)
    # Produced while the pipeline runs, so that batches race through the workers.
    produced = cluster.produce(topics.input, _keyed_events(rng, 3000, keys=40))
    wait_until_delivered(pipeline, topics.input, produced)
    assert pipeline.stop().exit_code == 0

    outputs = cluster.read(topics.output)
    by_key: dict[bytes | None, list[tuple[int, int, int]]] = defaultdict(list)
    for (out_partition, _out_offset), (key, value, _headers) in sorted(outputs.records.items()):
        doc = orjson.loads(value or b"null")
        by_key[key].append((out_partition, doc["partition"], doc["offset"]))
    assert sum(len(v) for v in by_key.values()) == len(produced)
    for key, seen in by_key.items():
        assert len({out_p for out_p, _, _ in seen}) == 1, f"{key!r} spread over output partitions"
        assert len({in_p for _, in_p, _ in seen}) == 1, f"{key!r} spread over input partitions"
        offsets = [offset for _, _, offset in seen]
        assert offsets == sorted(set(offsets)), f"{key!r} out of input order: {offsets}"

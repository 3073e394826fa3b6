"""Shadow (challenger) models on the real broker: agreement, failures and the skip policy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.clients.kafka_python import ensure_topics
from streamer.core.demo_data import make_record
from streamer.core.features import prepare_batch
from streamer.core.models import load_model
from streamer.settings import KafkaSettings, Settings, build_settings
from streamer.topology import Pipeline

from .helpers import Cluster, PipelineStarter, Topics, wait_for, wait_until_delivered

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "streamer" / "core" / "models" / "demo_fraud.json"
FEATURES = [
    "amount",
    "distance_from_home_km",
    "transactions_last_hour",
    "account_age_days",
    "merchant_risk",
]
RECORDS = 2000


def challenger_settings(cluster: Cluster, topics: Topics, **challenger: object) -> Settings:
    """The test's settings with one [[challenger]] table."""
    document = {
        "kafka": cluster.kafka_section(topics),
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": 20.0},
        "batch": {"max_records": 100},
        "challenger": [{"output_topic": f"{topics.output}.challenger", **challenger}],
    }
    return build_settings(document, environ={})


def sample(pipeline: Pipeline, name: str, **labels: str) -> float:
    value = pipeline.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exposed"
    return value


def new_topics(cluster: Cluster) -> Topics:
    """Fresh topics, and the challenger's output topic."""
    topics = cluster.new_topics(partitions=2)
    ensure_topics(
        KafkaSettings(bootstrap_servers=cluster.bootstrap_servers),
        {f"{topics.output}.challenger": 2},
    )
    return topics


def test_a_challenger_that_differs_gives_the_flip_count_computed_offline(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    doc = json.loads(DEMO.read_text())
    doc.update(name="demo-challenger", version="2", bias=doc["bias"] + 1.5)
    path = tmp_path / "challenger.json"
    path.write_text(json.dumps(doc))
    topics = new_topics(cluster)
    settings = challenger_settings(
        cluster, topics, name="bias", kind="linear", path=str(path), max_pending_batches=1000
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(41)
    records = [make_record(rng) for _ in range(RECORDS)]
    produced = cluster.produce(topics.input, records)
    wait_until_delivered(pipeline, topics.input, produced)
    labels = {"challenger": "bias", "version": "2"}
    wait_for(
        lambda: (
            pipeline.registry.get_sample_value("streamer_challenger_compared_records_total", labels)
            == RECORDS
        ),
        30,
        "the challenger to compare every record",
        describe=lambda: str(pipeline.challengers[0].agreement.snapshot()),
    )
    # Offline: both models on the same prepared rows, decision at 0.5.
    champion = load_model("linear", "")
    challenger = load_model("linear", str(path))
    prepared = prepare_batch([value for _, value in records], champion.spec)
    expected = int(
        np.count_nonzero(
            (champion.predict(prepared.features) >= 0.5)
            != (challenger.predict(prepared.features) >= 0.5)
        )
    )
    assert expected > 0
    assert sample(pipeline, "streamer_challenger_flips_total", **labels) == expected
    assert sample(pipeline, "streamer_challenger_batches_total", **labels, result="failed") == 0
    assert (
        sample(pipeline, "streamer_challenger_score_delta_bucket", **labels, le="+Inf") == RECORDS
    )
    outputs = cluster.read(f"{topics.output}.challenger")
    assert len(outputs) == RECORDS
    first = orjson.loads(next(iter(outputs.records.values()))[1])
    assert first["model"] == {"name": "bias", "version": "2"}  # the challenger name


RAISING = """
def score(frame):
    if (frame["amount"] > 0).any():  # the load-time probe row is all zeros
        raise RuntimeError("this challenger is broken")
    return frame["amount"] * 0.0


score.features = {features!r}
"""

SLOW = """
import time


def score(frame):
    time.sleep(0.02)
    return frame["amount"] * 0.0 + 0.5


score.features = {features!r}
"""


def _python_model(tmp_path: Path, source: str) -> str:
    path = tmp_path / "challenger_model.py"
    path.write_text(source.format(features=FEATURES))
    return f"{path}:score"


def test_a_challenger_that_raises_on_every_batch_costs_the_champion_nothing(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    topics = new_topics(cluster)
    settings = challenger_settings(
        cluster,
        topics,
        name="broken",
        version="x",
        kind="python",
        path=_python_model(tmp_path, RAISING),
        max_pending_batches=1000,
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(42)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(RECORDS)])
    wait_until_delivered(pipeline, topics.input, produced)
    labels = {"challenger": "broken", "version": "x"}
    batches = sample(pipeline, "streamer_batches_total")
    wait_for(
        lambda: (
            sample(pipeline, "streamer_challenger_batches_total", **labels, result="failed")
            == batches
        ),
        30,
        "the challenger to fail on every batch",
    )
    pipeline.stop(timeout_s=10)
    result = cluster.reconcile(topics)
    assert (result.scored, result.dead_lettered, result.lost) == (RECORDS, 0, 0)
    assert pipeline.restarts == {}
    assert sample(pipeline, "streamer_challenger_batches_total", **labels, result="scored") == 0
    assert len(cluster.read(f"{topics.output}.challenger")) == 0


def test_a_slow_challenger_skips_batches_instead_of_slowing_the_champion(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    topics = new_topics(cluster)
    settings = challenger_settings(
        cluster,
        topics,
        name="slow",
        version="s",
        kind="python",
        path=_python_model(tmp_path, SLOW),
        max_pending_batches=1,
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(43)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(RECORDS * 2)])
    wait_until_delivered(pipeline, topics.input, produced)
    batches = sample(pipeline, "streamer_batches_total")
    link = pipeline.challengers[0]
    wait_for(lambda: link.slots.taken == 0, 30, "the challenger to finish its last batch")
    labels = {"challenger": "slow", "version": "s"}
    scored = sample(pipeline, "streamer_challenger_batches_total", **labels, result="scored")
    skipped = sample(pipeline, "streamer_challenger_batches_total", **labels, result="skipped")
    # Every champion batch was offered once: taken (at most one waiting) or skipped.
    assert scored + skipped == batches
    assert skipped > 0
    assert scored >= 1
    # The champion answered everything; the consumer was never held by the challenger.
    assert sample(pipeline, "streamer_records_produced_total") == RECORDS * 2


def test_a_challenger_file_replaced_on_disk_is_reloaded_and_labelled_with_its_version(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    doc = json.loads(DEMO.read_text())
    path = tmp_path / "challenger.json"
    path.write_text(json.dumps({**doc, "name": "c", "version": "1"}))
    topics = new_topics(cluster)
    settings = challenger_settings(
        cluster, topics, name="c", path=str(path), max_pending_batches=1000
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(44)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(300)])
    wait_until_delivered(pipeline, topics.input, produced)
    link = pipeline.challengers[0]
    # The same weights: no flips. Version 2 raises the bias: flips from then on.
    path.write_text(json.dumps({**doc, "name": "c", "version": "2", "bias": doc["bias"] + 3}))
    wait_for(lambda: link.version == "2", 30, "the challenger to be reloaded")
    produced.update(cluster.produce(topics.input, [make_record(rng) for _ in range(300)]))
    wait_until_delivered(pipeline, topics.input, produced)
    wait_for(lambda: link.slots.taken == 0, 30, "the challenger to finish")
    labels = {"challenger": "c", "version": "2"}
    assert sample(pipeline, "streamer_challenger_compared_records_total", **labels) == 600
    assert sample(pipeline, "streamer_challenger_flips_total", **labels) > 0
    assert pipeline.restarts == {}


def test_a_challenger_without_an_output_topic_only_measures_agreement(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    doc = json.loads(DEMO.read_text())
    path = tmp_path / "challenger.json"
    path.write_text(json.dumps({**doc, "version": "q", "bias": doc["bias"] + 1.5}))
    topics = cluster.new_topics(partitions=2)
    settings = challenger_settings(
        cluster, topics, name="quiet", path=str(path), max_pending_batches=1000, output_topic=""
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(45)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(500)])
    wait_until_delivered(pipeline, topics.input, produced)
    link = pipeline.challengers[0]
    wait_for(lambda: link.slots.taken == 0, 30, "the challenger to finish")
    labels = {"challenger": "quiet", "version": "q"}
    assert sample(pipeline, "streamer_challenger_compared_records_total", **labels) == 500
    assert sample(pipeline, "streamer_challenger_batches_total", **labels, result="failed") == 0
    assert sample(pipeline, "streamer_records_produced_total") == 500

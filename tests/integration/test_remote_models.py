"""``model.kind = "remote"`` against a real MLServer (Open Inference Protocol V2) on loopback.

The server (tests/integration/conftest.py, ``oip_server``) serves the model
zoo's scikit-learn models with MLServer's own scikit-learn runtime; no part of
the protocol is mocked. The outage test kills its own server with SIGKILL and
starts it again on the same port ten seconds later.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.clients.kafka_python import ensure_topics
from streamer.devtools.oip_server import OipServer
from streamer.settings import KafkaSettings, build_settings
from streamer.topology import Pipeline
from tests import model_zoo as zoo

from .helpers import (
    Cluster,
    PipelineStarter,
    Produced,
    Topics,
    end_offsets,
    wait_for,
    wait_until_delivered,
)

pytestmark = pytest.mark.integration

FEATURES = ",".join(zoo.feature_names())
MAGIC = 4242.0


def remote(server: OipServer, path: str, **extra: Any) -> dict[str, Any]:
    """A [model] table for ``path`` on ``server``."""
    return {
        "kind": "remote",
        "path": path,
        "remote_url": server.url,
        "outputs": "predict_proba",
        "max_concurrent_requests": 4,
        **extra,
    }


def outputs_by_key(cluster: Cluster, topic: str) -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for _key, value, _headers in cluster.read(topic).records.values():
        doc = orjson.loads(value)
        assert doc["key"] not in docs, f"{doc['key']} was answered twice"
        docs[doc["key"]] = doc
    return docs


def assert_in_input_order(cluster: Cluster, topics: Topics) -> None:
    """In each output partition, the answers of each input partition follow its offsets."""
    seen: dict[tuple[int, int], list[int]] = {}
    for (out_partition, _), (_, value, _) in sorted(cluster.read(topics.output).records.items()):
        doc = orjson.loads(value)
        seen.setdefault((out_partition, doc["partition"]), []).append(doc["offset"])
    assert seen
    for where, offsets in seen.items():
        assert offsets == sorted(offsets), f"(output, input) partitions {where} are out of order"


def scores_in_key_order(docs: dict[str, dict[str, Any]], count: int) -> np.ndarray:
    return np.array([docs[f"r{i}"]["score"] for i in range(count)])


def stream(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    model: dict[str, Any],
    values: list[bytes],
    *,
    partitions: int,
    max_records: int,
) -> tuple[Pipeline, Topics, Produced]:
    """Produce ``values`` keyed r0, r1, ...; score them with ``model`` until all are committed."""
    topics = cluster.new_topics(partitions=partitions)
    produced = cluster.produce(topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values)])
    settings = cluster.settings(
        topics, model=model, preprocess={"features": FEATURES}, batch={"max_records": max_records}
    )
    pipeline = start_pipeline(settings)
    wait_until_delivered(pipeline, topics.input, produced)
    return pipeline, topics, produced


def test_remote_scores_equal_the_local_predict_proba_of_the_same_model(
    cluster: Cluster, start_pipeline: PipelineStarter, oip_server: OipServer
) -> None:
    count = 1200
    model = remote(oip_server, "forest")
    values = zoo.record_values()[:count]
    pipeline, topics, produced = stream(
        cluster, start_pipeline, model, values, partitions=2, max_records=64
    )
    docs = outputs_by_key(cluster, topics.output)
    assert len(docs) == count
    assert len(cluster.read(topics.dead_letter)) == 0
    frame = zoo.records()[:count]
    # Trees add no floats in a batch-dependent order and FP64 JSON is exact: bit for bit.
    expected = zoo.estimator("forest").predict_proba(frame)[:, 1]
    assert np.array_equal(scores_in_key_order(docs, count), expected)
    assert_in_input_order(cluster, topics)
    assert {doc["model"]["name"] for doc in docs.values()} == {"forest"}
    assert pipeline.readiness()[0]
    assert pipeline.reload_model() == "unchanged"  # SIGHUP with the same server model
    registry = pipeline.registry
    label = {"server": oip_server.url.removeprefix("http://"), "model": "forest"}
    assert registry.get_sample_value("streamer_remote_breaker_open", label) == 0.0
    ok = registry.get_sample_value("streamer_remote_requests_total", {**label, "outcome": "ok"})
    assert ok is not None
    assert ok >= len({(p, o // 64) for p, o in produced})  # at least one request per batch


def test_a_linear_model_through_the_server_is_within_two_ulp_of_the_local_one(
    cluster: Cluster, start_pipeline: PipelineStarter, oip_server: OipServer
) -> None:
    count = 400
    model = remote(oip_server, "logreg", remote_datatype="FP64")
    values = zoo.record_values()[:count]
    _, topics, _ = stream(cluster, start_pipeline, model, values, partitions=1, max_records=100)
    got = scores_in_key_order(outputs_by_key(cluster, topics.output), count)
    expected = zoo.estimator("logreg").predict_proba(zoo.records()[:count])[:, 1]
    # The server's numpy codec gives scikit-learn a row-major array where the local
    # call gives a column-major DataFrame block: OpenBLAS sums the dot product in
    # another order (docs/models.md, "remote"); the JSON transport itself is exact.
    np.testing.assert_allclose(got, expected, rtol=0, atol=4.5e-16)


def test_rows_the_server_refuses_with_400_are_dead_lettered_and_the_others_scored(
    cluster: Cluster, start_pipeline: PipelineStarter, oip_server: OipServer
) -> None:
    count = 300
    frame = zoo.records()[:count].copy()
    bad = [5, 6, 130, 299]
    frame.loc[bad, "mean radius"] = MAGIC
    values = zoo.record_values(frame)
    pipeline, topics, _ = stream(
        cluster, start_pipeline, remote(oip_server, "magic"), values, partitions=1, max_records=50
    )
    dead = cluster.read(topics.dead_letter).records.values()
    assert sorted(key for key, _, _ in dead) == sorted(f"r{i}".encode() for i in bad)
    for _key, _value, headers in dead:
        h = dict(headers)
        assert h["streamer.reason"] == b"model_error"
        assert b"HTTP 400" in h["streamer.error"]
    docs = outputs_by_key(cluster, topics.output)
    assert sorted(docs) == sorted(f"r{i}" for i in range(count) if i not in bad)
    good = [i for i in range(count) if i not in bad]
    expected = zoo.estimator("logreg").predict_proba(frame.iloc[good])[:, 1]
    np.testing.assert_allclose([docs[f"r{i}"]["score"] for i in good], expected, atol=4.5e-16)
    label = {
        "server": oip_server.url.removeprefix("http://"),
        "model": "magic",
        "outcome": "bad_input",
    }
    assert pipeline.registry.get_sample_value("streamer_remote_requests_total", label)


def test_a_server_slower_than_the_input_holds_the_stream_within_the_credits(
    cluster: Cluster, start_pipeline: PipelineStarter, oip_server: OipServer
) -> None:
    count, max_records, max_in_flight = 1500, 50, 4
    topics = cluster.new_topics(partitions=2)
    values = zoo.record_values()[:count]
    produced = cluster.produce(topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values)])
    settings = cluster.settings(
        topics,
        model=remote(oip_server, "slow", max_concurrent_requests=2),
        preprocess={"features": FEATURES},
        batch={"max_records": max_records, "max_in_flight": max_in_flight},
    )
    pipeline = start_pipeline(settings)
    label = {"server": oip_server.url.removeprefix("http://"), "model": "slow"}
    wanted = {(topics.input, p): end for p, end in end_offsets(produced).items()}
    statuses, in_flight_requests = [], []
    while (status := pipeline.consumer_status()).watermarks != wanted:
        statuses.append(status)
        in_flight_requests.append(
            pipeline.registry.get_sample_value("streamer_remote_in_flight_requests", label)
        )
        time.sleep(0.05)
    # 30 batches of 100 ms, 2 at a time: the input waits in Kafka, not in memory.
    assert len(statuses) > 10
    # The credits: max_in_flight batches, and a partial batch per partition at most
    # (core/ledger.py's Unacknowledged).
    bound = max_in_flight + topics.partitions
    assert max(s.batches_in_flight for s in statuses) <= bound
    assert max(s.records_in_flight for s in statuses) <= bound * max_records
    assert any(s.paused for s in statuses)
    assert max(r or 0 for r in in_flight_requests) <= 2
    docs = outputs_by_key(cluster, topics.output)
    assert len(docs) == count
    assert len(cluster.read(topics.dead_letter)) == 0
    assert_in_input_order(cluster, topics)


@pytest.mark.parametrize("champion_kind", ["remote", "sklearn"])
def test_a_remote_model_can_be_the_champion_or_the_challenger_of_a_local_one(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    oip_server: OipServer,
    oip_models: dict[str, Path],
    champion_kind: str,
) -> None:
    count = 600
    topics = cluster.new_topics(partitions=2)
    challenger_topic = f"{topics.output}.challenger"
    ensure_topics(KafkaSettings(bootstrap_servers=cluster.bootstrap_servers), {challenger_topic: 2})
    local = {"kind": "sklearn", "path": str(oip_models["forest"])}
    served = remote(oip_server, "forest")
    champion, challenger = (served, local) if champion_kind == "remote" else (local, served)
    challenger = {**challenger, "name": "shadow", "output_topic": challenger_topic}
    challenger.pop("max_concurrent_requests", None)
    # A remote champion's challenger uses its server; a remote challenger of a local
    # champion names its own (the champion's model.remote_url is a dead port, unused).
    challenger.pop("remote_url" if champion_kind == "remote" else "", None)
    dead = "http://127.0.0.1:9"
    model = champion if champion_kind == "remote" else {**champion, "remote_url": dead}
    values = zoo.record_values()[:count]
    produced = cluster.produce(topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values)])
    document = {
        "kafka": cluster.kafka_section(topics),
        "metrics": {"enabled": False},
        "model": model,
        "preprocess": {"features": FEATURES},
        "batch": {"max_records": 100},
        "challenger": [challenger],
    }
    settings = build_settings(document, environ={})
    pipeline = start_pipeline(settings)
    wait_until_delivered(pipeline, topics.input, produced)
    expected = zoo.estimator("forest").predict_proba(zoo.records()[:count])[:, 1]
    assert np.array_equal(
        scores_in_key_order(outputs_by_key(cluster, topics.output), count), expected
    )
    link = pipeline.challengers[0]
    wait_for(lambda: link.agreement.snapshot().compared > 0, 20, "the challenger to compare")
    snapshot = link.agreement.snapshot()
    assert snapshot.flips == 0  # the same forest on both sides
    assert snapshot.failed == 0
    dead_server = {"server": dead.removeprefix("http://"), "model": "forest"}
    assert pipeline.registry.get_sample_value("streamer_remote_breaker_open", dead_server) is None
    assert snapshot.delta_sum == 0.0
    shadow = outputs_by_key(cluster, challenger_topic)
    for key, doc in shadow.items():
        assert doc["score"] == expected[int(key[1:])]


def test_an_outage_of_the_server_pauses_the_pipeline_and_loses_nothing(
    cluster: Cluster,
    oip_venv: Path,
    oip_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Down at start (the pipeline starts, not ready), then killed mid-stream for 10 s."""
    count = 3000
    server = OipServer(oip_venv, tmp_path, {"forest": (oip_models["forest"], {})})
    pipeline: Pipeline | None = None
    try:
        topics = cluster.new_topics(partitions=2)
        values = zoo.record_values(zoo.records(count))
        records = [(f"r{i}".encode(), v) for i, v in enumerate(values)]
        settings = cluster.settings(
            topics,
            model=remote(
                server,
                "forest",
                remote_timeout_s=2.0,
                remote_backoff_max_s=0.5,
                remote_probe_interval_s=0.5,
            ),
            preprocess={"features": FEATURES},
            batch={"max_records": 50, "max_in_flight": 8},
        )
        first = cluster.produce(topics.input, records[:1000])
        pipeline = Pipeline(settings, registry=CollectorRegistry())  # the server is not up
        starting = threading.Thread(target=pipeline.start, daemon=True)
        starting.start()
        label = {"server": server.url.removeprefix("http://"), "model": "forest"}
        registry = pipeline.registry
        wait_for(
            lambda: registry.get_sample_value("streamer_remote_breaker_open", label) == 1.0,
            20,
            "the breaker to open while the server is down at start",
        )
        ready, details = pipeline.readiness()
        assert not ready
        assert details["checks"]["model_loaded"] is False
        assert details["checks"]["model_reachable"] is False
        assert pipeline.consumer_ref is None  # nothing read, so nothing committed
        server.start()
        starting.join(60)
        assert not starting.is_alive()
        assert pipeline.wait_until_assigned(30)
        wait_until_delivered(pipeline, topics.input, first)
        assert pipeline.readiness()[0]
        assert pipeline.model.version  # the real model, loaded once the server answered
        readiness: list[bool] = []
        sampling = threading.Event()

        def sample_readiness() -> None:
            while not sampling.wait(0.1):
                readiness.append(pipeline.readiness()[0])

        sampler = threading.Thread(target=sample_readiness, daemon=True)
        sampler.start()
        server.kill()
        killed_at = time.monotonic()
        rest = cluster.produce(topics.input, records[1000:])
        wait_for(lambda: not pipeline.readiness()[0], 20, "readiness to turn false")
        assert pipeline.readiness()[1]["checks"]["model_reachable"] is False
        assert pipeline.registry.get_sample_value("streamer_remote_breaker_open", label) == 1.0
        time.sleep(max(0.0, 10.0 - (time.monotonic() - killed_at)))
        during = pipeline.consumer_status().watermarks
        assert during != {
            (topics.input, p): end for p, end in end_offsets({**first, **rest}).items()
        }
        assert len(cluster.read(topics.dead_letter)) == 0
        server.start()
        wait_until_delivered(pipeline, topics.input, {**first, **rest}, timeout_s=60)
        sampling.set()
        sampler.join(5)
        docs = outputs_by_key(cluster, topics.output)
        assert len(docs) == count  # 0 lost, none twice
        assert len(cluster.read(topics.dead_letter)) == 0  # 0 dead-lettered for the outage
        assert_in_input_order(cluster, topics)
        expected = zoo.estimator("forest").predict_proba(zoo.records(count))[:, 1]
        assert np.array_equal(scores_in_key_order(docs, count), expected)
        assert False in readiness
        assert readiness[-1] is True
        assert pipeline.registry.get_sample_value("streamer_remote_breaker_open", label) == 0.0
        opened = pipeline.registry.get_sample_value("streamer_remote_breaker_opened_total", label)
        assert opened is not None
        assert opened >= 2  # down at start, then killed
        print(
            f"outage: {count} records, {len(docs)} scored, "
            f"{len(cluster.read(topics.dead_letter))} dead-lettered, "
            f"readiness false in {readiness.count(False)} of {len(readiness)} samples"
        )
    finally:
        if pipeline is not None:
            pipeline.stop(timeout_s=10)
        server.kill()

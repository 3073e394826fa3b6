"""Real models through the real broker: every prediction equals the offline one.

A scikit-learn LogisticRegression pipeline and a 100-tree RandomForest (saved
with joblib), their skl2onnx conversions, and a Python callable score 2,000
events from the breast cancer data set that ships with scikit-learn. Each
output is matched to its input by key and compared with the offline
prediction; then the model file is replaced under a running pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamer.core.models import ModelOptions, load_model
from tests import model_zoo as zoo

from .helpers import Cluster, PipelineStarter, wait_for, wait_until_delivered

pytestmark = pytest.mark.integration

FEATURES = ",".join(zoo.feature_names())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("models")
    out = {
        "logreg": zoo.save_joblib(zoo.estimator("logreg"), directory / "logreg.joblib"),
        "forest": zoo.save_joblib(zoo.estimator("forest"), directory / "forest.joblib"),
        "python": zoo.write_python_model(directory),
    }
    for kind in ("logreg", "forest"):
        out[f"{kind}-onnx"] = directory / f"{kind}.onnx"
        out[f"{kind}-onnx"].write_bytes(zoo.onnx_bytes(kind))
    return out


def stream(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    model: dict[str, Any],
    count: int = zoo.RECORDS,
    **sections: dict[str, Any],
) -> list[dict[str, Any]]:
    """Produce the records, score them, and return the outputs in record order."""
    topics = cluster.new_topics(partitions=2)
    values = zoo.record_values()[:count]
    produced = cluster.produce(topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values)])
    settings = cluster.settings(topics, model=model, batch={"max_records": 64}, **sections)
    pipeline = start_pipeline(settings)
    wait_until_delivered(pipeline, topics.input, produced)
    outputs = cluster.read(topics.output).records.values()
    by_key = {orjson.loads(value)["key"]: orjson.loads(value) for _key, value, _h in outputs}
    assert len(cluster.read(topics.dead_letter)) == 0
    assert sorted(by_key) == sorted(f"r{i}" for i in range(count))
    return [by_key[f"r{i}"] for i in range(count)]


def scores(outputs: list[dict[str, Any]]) -> np.ndarray:
    return np.array([doc["score"] for doc in outputs])


@pytest.mark.parametrize("name", ["logreg", "forest"])
def test_a_joblib_model_scores_every_event_like_its_offline_predict_proba(
    cluster: Cluster, start_pipeline: PipelineStarter, models: dict[str, Path], name: str
) -> None:
    outputs = stream(cluster, start_pipeline, {"kind": "sklearn", "path": str(models[name])})
    expected = zoo.estimator(name).predict_proba(zoo.records())[:, 1]
    offline = load_model("sklearn", str(models[name])).predict(zoo.records().to_numpy())
    assert np.array_equal(scores(outputs), offline)  # bit-identical, batch size 64 or not
    if name == "forest":
        assert np.array_equal(scores(outputs), expected)
    else:
        np.testing.assert_allclose(scores(outputs), expected, rtol=0, atol=1e-12)
    assert {doc["model"]["name"] for doc in outputs} == {name}


@pytest.mark.parametrize("name", ["logreg", "forest"])
def test_an_onnx_model_scores_every_event_like_onnxruntime_and_close_to_sklearn(
    cluster: Cluster, start_pipeline: PipelineStarter, models: dict[str, Path], name: str
) -> None:
    path = models[f"{name}-onnx"]
    outputs = stream(
        cluster,
        start_pipeline,
        {"kind": "onnx", "path": str(path)},
        preprocess={"features": FEATURES},
    )
    offline = load_model("onnx", str(path), ModelOptions(features=tuple(zoo.feature_names())))
    assert np.array_equal(scores(outputs), offline.predict(zoo.records().to_numpy()))
    expected = zoo.estimator(name).predict_proba(zoo.records())[:, 1]
    np.testing.assert_allclose(scores(outputs), expected, atol=1e-5)  # float32 inside


def test_a_python_callable_scores_every_event_like_calling_it_offline(
    cluster: Cluster, start_pipeline: PipelineStarter, models: dict[str, Path]
) -> None:
    outputs = stream(
        cluster, start_pipeline, {"kind": "python", "path": f"{models['python']}:score"}
    )
    frame = zoo.records()
    z = -0.9 * frame["mean radius"] - 0.4 * frame["mean texture"] + 0.3
    assert np.array_equal(scores(outputs), (1.0 / (1.0 + np.exp(-z))).to_numpy())


def test_replacing_the_model_file_switches_models_between_batches_without_losing_a_record(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    models: dict[str, Path],
    tmp_path: Path,
) -> None:
    live = tmp_path / "live.joblib"
    live.write_bytes(models["logreg"].read_bytes())
    topics = cluster.new_topics(partitions=2)
    settings = cluster.settings(
        topics,
        model={"kind": "sklearn", "path": str(live), "name": "live", "watch_interval_s": 0.1},
        batch={"max_records": 64},
    )
    pipeline = start_pipeline(settings)
    first_version = pipeline.model.version
    values = zoo.record_values()
    first = cluster.produce(
        topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values[:1000])]
    )
    wait_until_delivered(pipeline, topics.input, first)
    # Write the new model aside and rename it over the old one: never half written.
    staged = tmp_path / "staged.joblib"
    staged.write_bytes(models["forest"].read_bytes())
    os.replace(staged, live)
    wait_for(lambda: pipeline.model.version != first_version, 30, "the watcher to reload")
    second = cluster.produce(
        topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values[1000:], start=1000)]
    )
    wait_until_delivered(pipeline, topics.input, {**first, **second})
    outputs = {}
    for _key, value, _headers in cluster.read(topics.output).records.values():
        doc = orjson.loads(value)
        assert doc["key"] not in outputs, "a record was scored twice"
        outputs[doc["key"]] = doc
    assert len(outputs) == zoo.RECORDS
    frame = zoo.records()
    old = zoo.estimator("logreg").predict_proba(frame)[:, 1]
    new = zoo.estimator("forest").predict_proba(frame)[:, 1]
    for i in range(zoo.RECORDS):
        doc = outputs[f"r{i}"]
        if i < 1000:
            assert doc["model"]["version"] == first_version
            assert doc["score"] == pytest.approx(old[i], abs=1e-12)
        else:
            assert doc["model"]["version"] == pipeline.model.version
            assert doc["score"] == new[i]

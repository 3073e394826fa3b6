"""A real ``mlflow server`` (SQLite backend, local artifact root) and a moving alias.

A session fixture starts the server on a free 127.0.0.1 port. Two scikit-learn
versions of ``fraud`` are registered and ``champion`` names v1; records stream
through the real broker while the alias moves to v2. Then the registry is
stopped (scoring goes on, the poll retries), started again, and the alias moved
to a broken v3, which is refused while v2 keeps scoring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.devtools.broker import free_port
from tests import model_zoo as zoo

from .helpers import Cluster, PipelineStarter, wait_for, wait_until_delivered

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip("mlflow")

SERVER_START_TIMEOUT_S = 90.0
"""Measured: the server answers /health in ~6-10 s here (two cores shared)."""


class RegistryServer:
    """``mlflow server`` in a subprocess, stoppable and restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def start(self) -> None:
        started = time.monotonic()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self._directory}/mlflow.db",
                "--default-artifact-root",
                str(self._directory / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self._directory / "server.log").open("ab"),
            # No job runner: its Huey consumers (eight more interpreters) serve no test here.
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": "",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
        )
        deadline = started + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process.poll() is None, (self._directory / "server.log").read_text()
            health = f"{self.uri}/health"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(health, timeout=1) as answer,  # noqa: S310 - http only
            ):
                if answer.status == 200:
                    self.startup_s = time.monotonic() - started
                    return
            time.sleep(0.2)
        msg = f"mlflow server did not answer within {SERVER_START_TIMEOUT_S} s"
        raise AssertionError(msg)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    logging.getLogger(__name__).warning("mlflow server started in %.1f s", server.startup_s)
    yield server
    server.stop()


def _register(uri: str, estimator: Any) -> str:
    import mlflow.sklearn as mlflow_sklearn
    from mlflow.models import infer_signature

    train, _ = zoo.dataset()
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("fraud") or client.get_experiment(
        client.create_experiment("fraud")
    )
    mlflow.set_tracking_uri(uri)
    try:
        with warnings.catch_warnings(), mlflow.start_run(experiment_id=experiment.experiment_id):
            warnings.simplefilter("ignore")
            info = mlflow_sklearn.log_model(
                estimator,
                name="model",
                # skops refuses a forest's tree arrays unless trusted one by one.
                serialization_format="cloudpickle",
                signature=infer_signature(train.iloc[:5]),
                registered_model_name="fraud",
                # Declared: mlflow otherwise infers them in a subprocess (~8 s a version).
                pip_requirements=mlflow_sklearn.get_default_pip_requirements(
                    include_cloudpickle=True
                ),
            )
    finally:
        mlflow.set_tracking_uri("")
    return str(info.registered_model_version)


def _outputs(cluster: Cluster, topic: str) -> dict[str, dict[str, Any]]:
    outputs: dict[str, dict[str, Any]] = {}
    for (_partition, _offset), (_key, value, _headers) in cluster.read(topic).records.items():
        doc = orjson.loads(value)
        assert doc["key"] not in outputs, "a record was scored twice"
        outputs[doc["key"]] = doc
    return outputs


def test_a_moved_alias_switches_versions_in_process_without_losing_a_record(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    registry_server: RegistryServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client retries a dead server with backoff for minutes by default: keep
    # each poll short here (docs/models.md says how to bound it in production).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    uri = registry_server.uri
    first = _register(uri, zoo.estimator("logreg"))
    second = _register(uri, zoo.estimator("forest"))
    third = _register(uri, zoo.estimator("logreg"))  # broken below, before the alias names it
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    client.set_registered_model_alias("fraud", "champion", first)
    topics = cluster.new_topics(partitions=2)
    settings = cluster.settings(
        topics,
        model={
            "kind": "mlflow",
            "path": "models:/fraud@champion",
            "tracking_uri": uri,
            "watch_interval_s": 0.2,
        },
        preprocess={"features": ",".join(zoo.feature_names())},
        batch={"max_records": 64},
    )
    pipeline = start_pipeline(settings)
    assert (pipeline.model.name, pipeline.model.version) == ("fraud", f"{first}@champion")
    values = zoo.record_values()
    half = len(values) // 2
    produced = cluster.produce(
        topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values[:half])]
    )
    client.set_registered_model_alias("fraud", "champion", second)  # mid-stream
    wait_for(lambda: pipeline.model.version == f"{second}@champion", 60, "the alias to be followed")
    produced |= cluster.produce(
        topics.input, [(f"r{i}".encode(), v) for i, v in enumerate(values[half:], start=half)]
    )
    wait_until_delivered(pipeline, topics.input, produced)
    outputs = _outputs(cluster, topics.output)
    assert sorted(outputs) == sorted(f"r{i}" for i in range(len(values)))
    frame = zoo.records()
    offline = {
        f"{first}@champion": zoo.estimator("logreg").predict_proba(frame)[:, 1],
        f"{second}@champion": zoo.estimator("forest").predict_proba(frame)[:, 1],
    }
    switches: dict[int, list[str]] = {}
    for i in range(len(values)):
        doc = outputs[f"r{i}"]
        assert doc["model"]["name"] == "fraud"
        version = doc["model"]["version"]
        assert doc["score"] == offline[version][i], f"r{i} under {version}"
        versions = switches.setdefault(doc["partition"], [])
        versions.append(version)
    for partition, versions in switches.items():
        order = [v for n, v in enumerate(versions) if n == 0 or versions[n - 1] != v]
        assert order in ([f"{second}@champion"], [f"{first}@champion", f"{second}@champion"]), (
            partition
        )
    assert any(versions[0] == f"{first}@champion" for versions in switches.values())
    reloads = pipeline.registry.get_sample_value
    assert reloads("streamer_model_reloads_total", {"result": "success"}) == 1
    info = {"name": "fraud", "version": f"{second}@champion"}
    wait_for(lambda: reloads("streamer_model_info", info) == 1, 10, "streamer_model_info")

    # The registry goes away: scoring goes on with v2, and the poll keeps retrying.
    registry_server.stop()
    more = cluster.produce(
        topics.input, [(f"s{i}".encode(), v) for i, v in enumerate(values[:300])]
    )
    wait_until_delivered(pipeline, topics.input, {**produced, **more})
    assert pipeline.model.version == f"{second}@champion"

    # Back, with a broken v3 under the alias: refused, v2 kept, one failure counted.
    registry_server.start()
    artifacts = Path(client.get_model_version_download_uri("fraud", third).removeprefix("file://"))
    for file in artifacts.rglob("model.pkl"):
        file.write_bytes(b"not a model")
    client.set_registered_model_alias("fraud", "champion", third)
    wait_for(
        lambda: reloads("streamer_model_reloads_total", {"result": "failure"}) == 1,
        60,
        "the broken version to be refused",
    )
    assert pipeline.model.version == f"{second}@champion"
    last = cluster.produce(
        topics.input, [(f"t{i}".encode(), v) for i, v in enumerate(values[:100])]
    )
    wait_until_delivered(pipeline, topics.input, {**produced, **more, **last})
    outputs = _outputs(cluster, topics.output)
    assert len(outputs) == len(values) + 400
    forest = offline[f"{second}@champion"]
    for i in range(100):
        assert outputs[f"t{i}"]["model"]["version"] == f"{second}@champion"
        assert outputs[f"t{i}"]["score"] == forest[i]
    assert len(cluster.read(topics.dead_letter)) == 0

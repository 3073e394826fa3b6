"""Fixtures for the integration tests: one embedded Tansu broker per session."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from prometheus_client import CollectorRegistry

from streamer.core.models import Model
from streamer.devtools.broker import EmbeddedBroker
from streamer.devtools.oip_server import OipServer, ensure_venv
from streamer.settings import Settings
from streamer.topology import Pipeline

from .helpers import ASSIGN_TIMEOUT_S, Cluster, DemoRun, PipelineStarter, streamer_command


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The one embedded Tansu broker of the session."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as embedded:
        yield embedded


@pytest.fixture(scope="session")
def cluster(broker: EmbeddedBroker) -> Cluster:
    """Helpers bound to the session broker."""
    assert broker.is_alive(), f"the embedded broker died; see {broker.log_path}"
    return Cluster(broker)


@pytest.fixture(scope="session")
def oip_venv() -> Path:
    """MLServer's own virtualenv, .venv-oip (``make test`` makes it; else made here once)."""
    return ensure_venv(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="session")
def oip_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model zoo's logreg and forest as joblib files, for a model server."""
    from tests import model_zoo as zoo

    directory = tmp_path_factory.mktemp("oip-models")
    models = {
        name: zoo.save_joblib(zoo.estimator(name), directory / f"{name}.joblib")
        for name in ("logreg", "forest")
    }
    models["demo"] = zoo.save_joblib(_demo_estimator(), directory / "demo.joblib")
    return models


DEMO_FEATURES = ("amount", "distance_from_home_km", "transactions_last_hour",
                 "account_age_days", "merchant_risk")  # fmt: skip
"""The packaged demo model's features, which the ``demo`` model of the server reads by name."""


def _demo_estimator() -> object:
    """A logistic regression on demo transactions' features (for a remote challenger)."""
    import random

    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from streamer.core.demo_data import make_event

    rng = random.Random(11)
    frame = pd.DataFrame([make_event(rng) for _ in range(2000)])[list(DEMO_FEATURES)]
    labels = (frame["amount"] > frame["amount"].median()).astype(int)
    return LogisticRegression(max_iter=1000).fit(frame, labels)


@pytest.fixture(scope="session")
def oip_server(
    oip_venv: Path, oip_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OipServer]:
    """One real MLServer of the session: logreg, forest, ``magic`` (logreg refusing 4242) and
    ``slow`` (forest answering after 100 ms), and ``demo`` (the demo features, named in
    its metadata)."""
    models = {
        "logreg": (oip_models["logreg"], {}),
        "forest": (oip_models["forest"], {}),
        "magic": (oip_models["logreg"], {"magic": 4242}),
        "slow": (oip_models["forest"], {"delay_s": 0.1}),
        "demo": (oip_models["demo"], {}),
    }
    inputs = {"demo": DEMO_FEATURES}
    with OipServer(oip_venv, tmp_path_factory.mktemp("mlserver"), models, inputs) as server:
        yield server


@pytest.fixture
def start_pipeline() -> Iterator[PipelineStarter]:
    """Start in-process pipelines; any still running at teardown is stopped."""
    started: list[Pipeline] = []

    def start(settings: Settings, *, model: Model | None = None) -> Pipeline:
        pipeline = Pipeline(settings, registry=CollectorRegistry(), model=model)
        started.append(pipeline)
        pipeline.start()
        assert pipeline.wait_until_assigned(ASSIGN_TIMEOUT_S), "no partitions were assigned"
        return pipeline

    yield start
    for pipeline in started:
        if pipeline.consumer_ref is not None and pipeline.consumer_ref.is_alive():
            pipeline.stop(timeout_s=10)
    leaked = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    assert not leaked, f"actors still running after the pipelines stopped: {leaked}"


DEMO_DURATION_S = 25
DEMO_RATE = 8000
DEMO_DRIFT_AFTER_S = 2


@pytest.fixture(scope="session")
def drifting_demo() -> DemoRun:
    """One ``streamer demo`` of about 200,000 records (25 s at 8,000/s) on its own broker,
    whose ``amount`` drifts after 2 s: the checks of the demo's summary, labels and drift
    lines (test_cli.py, test_model_health.py) read the same run, started once."""
    started = time.monotonic()
    done = subprocess.run(
        [
            *streamer_command(),
            "demo",
            "--duration",
            str(DEMO_DURATION_S),
            "--rate",
            str(DEMO_RATE),
            "--metrics-port",
            "0",
            "--drift",
            "amount",
            "--drift-after",
            str(DEMO_DRIFT_AFTER_S),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    return DemoRun(done, time.monotonic() - started)

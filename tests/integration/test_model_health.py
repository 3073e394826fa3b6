"""Model health on the real broker: drift gauges against a profile made by `streamer profile`."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.utils import floatToGoString

from streamer.core.demo_data import make_event, make_record
from streamer.core.features import prepare_batch
from streamer.core.models import load_model
from streamer.core.monitoring.drift import psi
from streamer.core.monitoring.profile import load_profile
from streamer.topology import Pipeline

from .helpers import Cluster, DemoRun, PipelineStarter, wait_until_delivered

pytestmark = pytest.mark.integration

FEATURES = (
    "amount",
    "distance_from_home_km",
    "transactions_last_hour",
    "account_age_days",
    "merchant_risk",
)
REFERENCE_ROWS = 20_000
WINDOW = 4000


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profile of the demo model over reference transactions, made by the CLI."""
    folder = tmp_path_factory.mktemp("profile")
    train = folder / "train.jsonl"
    rng = random.Random(11)
    train.write_bytes(
        b"".join(orjson.dumps(make_event(rng)) + b"\n" for _ in range(REFERENCE_ROWS))
    )
    out = folder / "profile.json"
    done = subprocess.run(
        [sys.executable, "-m", "streamer", "profile", str(train), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def gauge(pipeline: Pipeline, name: str, **labels: str) -> float | None:
    return pipeline.registry.get_sample_value(
        name, {**labels, "model_version": pipeline.model.version}
    )


def feature_psi(pipeline: Pipeline) -> dict[str, float | None]:
    return {f: gauge(pipeline, "streamer_feature_psi", feature=f) for f in FEATURES}


def test_reference_traffic_stays_under_0_05_and_a_shifted_amount_rises_above_0_2(
    cluster: Cluster, start_pipeline: PipelineStarter, profile_path: Path
) -> None:
    topics = cluster.new_topics(partitions=2)
    settings = cluster.settings(
        topics,
        monitoring={"profile_path": str(profile_path), "window_records": WINDOW},
        batch={"max_records": 250},
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(23)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(WINDOW)])
    wait_until_delivered(pipeline, topics.input, produced)
    reference = feature_psi(pipeline)
    assert gauge(pipeline, "streamer_drift_window_records") == WINDOW
    assert all(value is not None and value < 0.05 for value in reference.values()), str(reference)
    reference_score_psi = gauge(pipeline, "streamer_score_psi")
    assert reference_score_psi is not None
    assert reference_score_psi < 0.05
    assert gauge(pipeline, "streamer_score_bucket", le="+Inf") == WINDOW
    assert gauge(pipeline, "streamer_feature_out_of_range_ratio", feature="amount") == 0.0

    shifted = [make_record(rng, amount_scale=3.0) for _ in range(WINDOW)]
    produced.update(cluster.produce(topics.input, shifted))
    wait_until_delivered(pipeline, topics.input, produced)
    drifted = feature_psi(pipeline)
    assert drifted["amount"] is not None
    assert drifted["amount"] > 0.2, drifted
    others = {f: v for f, v in drifted.items() if f != "amount"}
    assert all(v is not None and v < 0.05 for v in others.values()), others
    score_psi = gauge(pipeline, "streamer_score_psi")
    assert score_psi is not None
    assert score_psi > 0.2
    print(  # the figures the closing note quotes (pytest -s)
        f"\nreference window: {reference}, score PSI {reference_score_psi:.4f}"
        f"\nshifted window:   {drifted}, score PSI {score_psi:.4f}"
    )


def test_records_dead_lettered_for_a_missing_feature_raise_its_missing_ratio(
    cluster: Cluster, start_pipeline: PipelineStarter, profile_path: Path
) -> None:
    topics = cluster.new_topics(partitions=1)
    settings = cluster.settings(
        topics, monitoring={"profile_path": str(profile_path), "window_records": 1000}
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(3)
    records = []
    for index in range(400):
        event = make_event(rng)
        if index % 4 == 0:
            del event["merchant_risk"]
        records.append((event["card_id"].encode(), orjson.dumps(event)))
    produced = cluster.produce(topics.input, records)
    wait_until_delivered(pipeline, topics.input, produced)
    assert gauge(pipeline, "streamer_feature_missing_ratio", feature="merchant_risk") == 0.25
    assert gauge(pipeline, "streamer_feature_missing_ratio", feature="amount") == 0.0
    assert gauge(pipeline, "streamer_drift_window_records") == 400


def test_the_score_gauges_cover_the_feature_window_when_a_third_of_it_is_dead_lettered(
    cluster: Cluster, start_pipeline: PipelineStarter, profile_path: Path
) -> None:
    window = 600
    topics = cluster.new_topics(partitions=1)
    settings = cluster.settings(
        topics,
        monitoring={"profile_path": str(profile_path), "window_records": window},
        batch={"max_records": 100},
    )
    pipeline = start_pipeline(settings)
    rng = random.Random(29)
    produced = cluster.produce(topics.input, [make_record(rng) for _ in range(window)])
    wait_until_delivered(pipeline, topics.input, produced)
    # The window: a drift of the amount, every third record without a feature (dead-lettered).
    events = [make_event(rng, amount_scale=3.0) for _ in range(window)]
    for event in events[::3]:
        del event["merchant_risk"]
    values = [orjson.dumps(event) for event in events]
    keys = [event["card_id"].encode() for event in events]
    produced.update(cluster.produce(topics.input, list(zip(keys, values, strict=True))))
    wait_until_delivered(pipeline, topics.input, produced)
    assert gauge(pipeline, "streamer_drift_window_records") == window
    # Offline: the demo model's scores of the window's records it could score, binned.
    model = load_model("linear", "")
    prepared = prepare_batch(values, model.spec)
    assert len(prepared.valid_rows) == window - window // 3
    profile = load_profile(profile_path)
    edges = profile.score.edges
    codes = np.searchsorted(edges[1:-1], model.predict(prepared.features), side="right")
    counts = np.bincount(codes, minlength=profile.score.bins)
    bounds = [floatToGoString(edge) for edge in edges[1:-1]] + ["+Inf"]
    live = {le: gauge(pipeline, "streamer_score_bucket", le=le) for le in bounds}
    assert live == dict(zip(bounds, np.cumsum(counts).astype(float).tolist(), strict=True))
    assert gauge(pipeline, "streamer_score_psi") == psi(counts, profile.score.fractions)


def test_the_demo_with_drift_names_the_drifted_feature_in_its_summary(
    drifting_demo: DemoRun,
) -> None:
    done = drifting_demo.done
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any("worst PSI" in line for line in lines), lines[-5:]
    (drift,) = [line for line in lines if line.startswith("drift: ")]
    assert drift.startswith("drift: amount drifted (PSI "), drift

"""Challenger agreement, the skip policy, [[challenger]] settings and a mismatched profile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamer.actors.metrics import ChallengerCollector, DriftCollector
from streamer.actors.routing import ChallengerLink
from streamer.core.models import ModelOptions, load_model
from streamer.core.monitoring.agreement import Agreement, PendingSlots, flips
from streamer.core.monitoring.drift import DriftMonitor
from streamer.core.monitoring.profile import Binned, Profile
from streamer.errors import ConfigError
from streamer.settings import build_settings
from streamer.topology.monitoring import build_monitor

KAFKA = {"input_topic": "in", "output_topic": "out"}


def test_flips_count_the_decisions_that_differ_at_the_threshold() -> None:
    champion = np.array([0.1, 0.5, 0.49, 0.9])
    challenger = np.array([0.6, 0.49, 0.5, 0.95])
    assert flips(champion, challenger, 0.5) == 3


def test_agreement_counts_deltas_flips_and_latency() -> None:
    agreement = Agreement(0.5)
    agreement.scored(np.array([0.1, 0.6]), np.array([0.7, 0.6]), 0.003)
    agreement.skipped()
    agreement.failed(0.02)
    snap = agreement.snapshot()
    assert (snap.scored, snap.skipped, snap.failed) == (1, 1, 1)
    assert (snap.compared, snap.flips) == (2, 1)
    assert snap.delta_sum == pytest.approx(0.6)
    # 0.0 falls in le=0.0 (index 5 of the bounds), 0.6 above le=0.5 (+Inf)
    assert snap.delta_counts.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert int(snap.latency_counts.sum()) == 2


def test_pending_slots_bound_the_batches_waiting_for_a_challenger() -> None:
    slots = PendingSlots(2)
    assert slots.take()
    assert slots.take()
    assert not slots.take()
    slots.give_back()
    assert slots.take()
    assert slots.taken == 2


def _profile(features: tuple[str, ...]) -> Profile:
    binned = Binned(np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.5]))
    return Profile(features, (binned,) * len(features), binned, "score", "m", "1", 10)


def test_label_sets_stay_bounded_by_the_profile_and_the_challengers() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(_profile(("a", "b")), window_records=50)
    for version in ("1", "2", "3"):  # hot reloads: one version at a time, never all
        monitor.observe(np.ones((10, 2)), np.arange(10), [], np.full(10, 0.5), 0.0, version)
    registry.register(DriftCollector(monitor))
    agreement = Agreement(0.5)
    agreement.scored(np.array([0.2]), np.array([0.8]), 0.01)
    model = load_model("linear", "", ModelOptions(version="2"))
    link = ChallengerLink("c", model, None, PendingSlots(1), agreement)  # type: ignore[arg-type]
    registry.register(ChallengerCollector([link]))
    series = {
        (sample.name, tuple(sorted(sample.labels.items())))
        for metric in registry.collect()
        for sample in metric.samples
    }
    psi = [labels for name, labels in series if name == "streamer_feature_psi"]
    assert sorted(psi) == [
        (("feature", "a"), ("model_version", "3")),
        (("feature", "b"), ("model_version", "3")),
    ]
    buckets = [labels for name, labels in series if name == "streamer_score_bucket"]
    assert len(buckets) == 2  # the profile's two score bins
    assert (
        registry.get_sample_value(
            "streamer_challenger_flips_total", {"challenger": "c", "version": "2"}
        )
        == 1
    )


def test_the_score_delta_histogram_exposes_its_sum_and_count() -> None:
    agreement = Agreement(0.5)
    agreement.scored(np.array([0.2, 0.9, 0.4]), np.array([0.8, 0.6, 0.4]), 0.01)
    model = load_model("linear", "", ModelOptions(version="2"))
    link = ChallengerLink("c", model, None, PendingSlots(1), agreement)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    registry.register(ChallengerCollector([link]))
    labels = {"challenger": "c", "version": "2"}

    def value(name: str) -> float | None:
        return registry.get_sample_value(f"streamer_challenger_score_delta{name}", labels)

    # rate(_sum) / rate(_count) is the mean delta: here (0.6 - 0.3 + 0.0) / 3.
    assert value("_count") == 3
    assert value("_sum") == pytest.approx(0.3)
    assert value("_count") == registry.get_sample_value(
        "streamer_challenger_score_delta_bucket", {**labels, "le": "+Inf"}
    )


def test_challenger_tables_are_validated_like_sections() -> None:
    settings = build_settings(
        {"kafka": KAFKA, "challenger": [{"name": "x", "output_topic": "out.x", "chunk_rows": 5}]}
    )
    (challenger,) = settings.challengers
    assert challenger.max_pending_batches == 2
    assert settings.challenger_options(challenger).chunk_rows == 5
    with pytest.raises(ConfigError, match=r"challenger\.name is required"):
        build_settings({"kafka": KAFKA, "challenger": [{"output_topic": "x"}]})
    # No output topic: agreement metrics only.
    assert build_settings({"kafka": KAFKA, "challenger": [{"name": "x"}]}).challengers
    with pytest.raises(ConfigError, match="unique"):
        build_settings(
            {
                "kafka": KAFKA,
                "challenger": [
                    {"name": "x", "output_topic": "a"},
                    {"name": "x", "output_topic": "b"},
                ],
            }
        )
    with pytest.raises(ConfigError, match=r"unknown key challenger\.colour"):
        build_settings(
            {"kafka": KAFKA, "challenger": [{"name": "x", "output_topic": "a", "colour": 1}]}
        )
    with pytest.raises(ConfigError, match="must differ"):
        build_settings({"kafka": KAFKA, "challenger": [{"name": "x", "output_topic": "out"}]})


def test_a_profile_of_other_features_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_bytes(_profile(("a", "b")).to_json())
    settings = build_settings({"kafka": KAFKA, "monitoring": {"profile_path": str(path)}})
    with pytest.raises(ConfigError, match="profiles features \\['a', 'b'\\] but the model reads"):
        build_monitor(settings, load_model("linear", ""))


def test_streamer_run_exits_2_with_one_line_for_a_mismatched_profile(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_bytes(_profile(("a", "b")).to_json())
    config = tmp_path / "streamer.toml"
    config.write_text(
        '[kafka]\ninput_topic = "in"\noutput_topic = "out"\n'
        'bootstrap_servers = "127.0.0.1:1"\n'
        f'[monitoring]\nprofile_path = "{profile}"\n'
        "[metrics]\nenabled = false\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "streamer", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "monitoring.profile_path" in lines[0]


def test_a_challenger_that_cannot_load_is_named_with_its_own_keys() -> None:
    from streamer.errors import ModelLoadError
    from streamer.topology.monitoring import load_challenger

    settings = build_settings(
        {
            "kafka": {"input_topic": "in", "output_topic": "out"},
            "challenger": [{"name": "cand", "kind": "linear", "path": "/nonexistent/model.json"}],
        },
        environ={},
    )
    with pytest.raises(ModelLoadError) as caught:
        load_challenger(settings, settings.challengers[0])
    assert str(caught.value) == (
        "model error: challenger 'cand': cannot read challenger.path=/nonexistent/model.json: "
        "No such file or directory"
    )

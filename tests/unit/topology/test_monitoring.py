"""The topology's model health: the Challengers role (load, start, reload, stop) and drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamer.core.models import load_model
from streamer.errors import ModelLoadError
from streamer.settings import Settings, build_settings
from streamer.topology.monitoring import Challengers, drift_monitor
from streamer.topology.terminator import Terminator
from tests.unit.fakes import FakeKafka, wait_until
from tests.unit.topology.test_terminator import STOPS, Scripted, Shutdown

DEMO = Path(__file__).resolve().parents[3] / "streamer" / "core" / "models" / "demo_fraud.json"
KAFKA = {"input_topic": "in", "output_topic": "out"}


def _challenger_settings(path: Path, watch_interval_s: float = 0.0) -> Settings:
    return build_settings(
        {
            "kafka": KAFKA,
            "model": {"watch_interval_s": watch_interval_s},
            "challenger": [
                {"name": "c", "kind": "linear", "path": str(path), "output_topic": "out.c"}
            ],
        },
        environ={},
    )


def _write_model(path: Path, version: str) -> None:
    doc = json.loads(DEMO.read_text())
    doc["version"] = version
    path.write_text(json.dumps(doc))


def test_challengers_load_start_reload_and_stop_their_reloads(tmp_path: Path) -> None:
    path = tmp_path / "challenger.json"
    _write_model(path, "1")
    registry = CollectorRegistry()
    challengers = Challengers(
        _challenger_settings(path), FakeKafka({}, ["in", "out"]).producer_factory, registry
    )
    assert challengers.links == ()  # loaded, not started
    (link,) = challengers.start(None)
    try:
        assert challengers.refs() == [link.ref]
        assert (link.name, link.version) == ("c", "1")
        labels = {"challenger": "c", "version": "1"}
        assert registry.get_sample_value("streamer_challenger_compared_records_total", labels) == 0
        _write_model(path, "2")
        challengers.request_reload()
        wait_until(lambda: link.version == "2")
        assert (
            registry.get_sample_value(
                "streamer_challenger_compared_records_total", {**labels, "version": "2"}
            )
            == 0
        )
    finally:
        challengers.stop_reloading()
        link.ref.stop()


def test_a_challenger_that_cannot_load_stops_the_start(tmp_path: Path) -> None:
    settings = _challenger_settings(tmp_path / "missing.json")
    with pytest.raises(ModelLoadError, match=r"challenger 'c': .*challenger\.path"):
        Challengers(settings, FakeKafka({}, ["in", "out"]).producer_factory, CollectorRegistry())


def test_no_profile_means_no_drift_monitor_and_no_gauges() -> None:
    registry = CollectorRegistry()
    settings = build_settings({"kafka": KAFKA}, environ={})
    assert drift_monitor(settings, load_model("linear", ""), registry) is None
    assert list(registry.collect()) == []


def test_the_terminator_stops_the_challengers_after_the_stages_and_before_metrics() -> None:
    s = Shutdown()
    challenger = Scripted.start("challenger-c", s.journal)
    terminator = Terminator(
        s.routes,
        lambda: None,
        before_stop=lambda: s.journal.put(("supervisor", "closed")),
        challengers=lambda: [challenger],
    )
    terminator.shutdown(5.0, s.metrics)
    stops = [entry for entry in s.steps() if entry[1] in ("stopped", "closed")]
    assert stops == [*STOPS[:-1], ("challenger-c", "stopped"), STOPS[-1]]

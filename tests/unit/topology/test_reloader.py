"""Hot reload: the watcher, the reloader, and the switch between two batches."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.actors.model import ModelActor
from streamer.actors.preprocess import PreprocessorActor
from streamer.core.models import preparation_key
from streamer.core.models.linear import LinearModel, load_linear
from streamer.errors import ModelLoadError
from streamer.messages import (
    FeatureBatch,
    ModelReloaded,
    ScoreBatch,
    ScoredBatch,
    SourceBatch,
    SwapModel,
)
from streamer.settings import BatchSettings, PreprocessSettings, build_settings
from streamer.topology import Pipeline
from streamer.topology.reloader import ModelReloader, file_signature
from tests.unit.fakes import FakeKafka, Mailbox, make_records, start_recorder, wait_until

DOC: dict[str, Any] = {
    "name": "tiny",
    "features": ["a", "b"],
    "mean": [1.0, 2.0],
    "std": [2.0, 4.0],
    "weights": [0.5, -0.25],
    "bias": 0.1,
}


def write(path: Path, **changes: Any) -> Path:
    path.write_bytes(orjson.dumps({**DOC, **changes}))
    return path


def source(values: list[bytes | None]) -> SourceBatch:
    return SourceBatch(
        batch_id=0,
        topic="events",
        partition=0,
        seq=0,
        offsets=list(range(len(values))),
        keys=[None] * len(values),
        values=values,
        timestamps_ms=[0] * len(values),
        dispatched_at=time.monotonic(),
    )


class Events:
    def __init__(self) -> None:
        self.mailbox = Mailbox()

    def __call__(self, event: ModelReloaded) -> None:
        self.mailbox.put(event)


def reloader(
    path: Path, interval_s: float = 0.0
) -> tuple[ModelReloader, list[LinearModel], Events]:
    installed = [load_linear(path)]
    events = Events()
    return (
        ModelReloader(
            load=lambda: load_linear(path),
            current=lambda: installed[-1],
            install=installed.append,
            notify=events,
            interval_s=interval_s,
            paths=lambda: [path],
        ),
        installed,
        events,
    )


class TestReloader:
    def test_a_changed_file_is_loaded_and_installed(self, tmp_path: Path) -> None:
        path = write(tmp_path / "m.json", version="1")
        subject, installed, events = reloader(path)
        write(path, version="2", weights=[1.0, 1.0])
        assert subject.reload_now("test") == "success"
        assert [m.version for m in installed] == ["1", "2"]
        assert events.mailbox.items() == [ModelReloaded("success", "tiny", "2")]

    def test_a_failed_load_keeps_the_old_model_and_says_why(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = write(tmp_path / "m.json", version="1")
        subject, installed, events = reloader(path)
        path.write_text("{half a model")
        assert subject.reload_now("test") == "failure"
        assert [m.version for m in installed] == ["1"]
        (event,) = events.mailbox.items()
        assert (event.result, event.version) == ("failure", "1")
        assert event.error.startswith(f"model error: {path} is not valid JSON")
        assert "model reload (test) failed; still scoring with tiny 1" in caplog.text

    def test_the_same_bytes_are_unchanged(self, tmp_path: Path) -> None:
        path = write(tmp_path / "m.json")
        subject, installed, events = reloader(path)
        path.touch()
        assert subject.reload_now("test") == "unchanged"
        assert len(installed) == 1
        assert events.mailbox.items()[0].result == "unchanged"

    def test_the_watcher_reloads_after_the_file_changes_and_settles(self, tmp_path: Path) -> None:
        path = write(tmp_path / "m.json", version="1")
        subject, installed, events = reloader(path, interval_s=0.02)
        subject.start()
        try:
            staged = write(tmp_path / "staged.json", version="2")
            staged.replace(path)  # the safe way: a rename, never a half-written file
            (event,) = events.mailbox.wait_for(1)
            assert event == ModelReloaded("success", "tiny", "2")
            assert installed[-1].version == "2"
        finally:
            subject.stop()

    def test_a_request_reloads_even_without_polling(self, tmp_path: Path) -> None:
        path = write(tmp_path / "m.json", version="1")
        subject, installed, events = reloader(path, interval_s=0)
        subject.start()
        try:
            write(path, version="3")
            subject.request()
            events.mailbox.wait_for(1)
            assert installed[-1].version == "3"
        finally:
            subject.stop()

    def test_a_missing_file_has_its_own_signature(self, tmp_path: Path) -> None:
        path = tmp_path / "gone.json"
        assert file_signature([path]) == ((str(path),),)


class TestSwitchingBetweenBatches:
    def test_a_preprocessor_uses_the_new_spec_from_the_next_batch(self, tmp_path: Path) -> None:
        old = load_linear(write(tmp_path / "a.json"))
        new = load_linear(write(tmp_path / "b.json", mean=[0.0, 0.0], std=[1.0, 1.0]))
        model_ref, mailbox = start_recorder()
        actor = PreprocessorActor.start(
            PreprocessSettings(), BatchSettings(), old.spec, [model_ref]
        )
        value = orjson.dumps({"a": 3.0, "b": 6.0})
        actor.tell(ScoreBatch(source([value])))
        actor.tell(SwapModel(new))
        actor.tell(ScoreBatch(source([value])))
        first, second = mailbox.wait_for(2)
        assert first.features.tolist() == [[1.0, 1.0]]
        assert first.spec_key == preparation_key(old.spec)
        assert second.features.tolist() == [[3.0, 6.0]]
        assert second.spec_key == preparation_key(new.spec)

    def test_a_model_prepares_a_batch_again_when_it_was_made_for_another_spec(
        self, tmp_path: Path
    ) -> None:
        old = load_linear(write(tmp_path / "a.json", version="1"))
        new = load_linear(write(tmp_path / "b.json", version="2", mean=[0.0, 0.0], std=[1.0, 1.0]))
        producer_ref, mailbox = start_recorder()
        actor = ModelActor.start(old, producer_ref)
        value = orjson.dumps({"a": 3.0, "b": 6.0})
        stale = FeatureBatch(
            source=source([value]),
            features=np.array([[1.0, 1.0]]),  # standardized with the old statistics
            valid_rows=np.array([0]),
            rejections=(),
            spec_key=preparation_key(old.spec),
        )
        actor.tell(stale)
        actor.tell(SwapModel(new))
        actor.tell(stale)
        first, second = mailbox.wait_for(2)
        assert isinstance(first, ScoredBatch)
        assert (first.model_version, second.model_version) == ("1", "2")
        assert first.predictions.tolist() == old.predict(np.array([[1.0, 1.0]])).tolist()
        assert second.predictions.tolist() == new.predict(np.array([[3.0, 6.0]])).tolist()

    def test_a_batch_without_a_spec_key_is_scored_as_it_is(self, tmp_path: Path) -> None:
        model = load_linear(write(tmp_path / "a.json"))
        producer_ref, mailbox = start_recorder()
        actor = ModelActor.start(model, producer_ref)
        batch = FeatureBatch(
            source=source([b"x"]),
            features=np.array([[0.5, 0.5]]),
            valid_rows=np.array([0]),
            rejections=(),
        )
        actor.tell(batch)
        (message,) = mailbox.wait_for(1)
        assert message.predictions.tolist() == model.predict(np.array([[0.5, 0.5]])).tolist()


class TestPipelineReload:
    def test_reload_model_swaps_the_model_and_later_outputs_carry_its_version(
        self, tmp_path: Path
    ) -> None:
        path = write(tmp_path / "m.json", version="1")
        settings = build_settings(
            {
                "kafka": {"input_topic": "events", "output_topic": "scores"},
                "model": {"path": str(path), "watch_interval_s": 0.0, "workers": 2},
                "metrics": {"enabled": False},
            },
            environ={},
        )
        value = orjson.dumps({"a": 3.0, "b": 6.0})
        kafka = FakeKafka({("events", 0): make_records([value] * 5)}, ["scores", "events.dlq"])
        metrics = CollectorRegistry()
        pipeline = Pipeline(
            settings,
            registry=metrics,
            consumer_factory=kafka.consumer_factory,
            producer_factory=kafka.producer_factory,
        )
        pipeline.start()
        try:
            wait_until(lambda: len(kafka.producer.records()) == 5)
            write(path, version="2", weights=[2.0, 2.0])
            assert pipeline.reload_model() == "success"
            assert pipeline.model.version == "2"
            kafka.consumer.append(("events", 0), make_records([value] * 3, offsets=range(5, 8)))
            wait_until(lambda: len(kafka.producer.records()) == 8)
            versions = [orjson.loads(r.value)["model"]["version"] for r in kafka.producer.records()]
            assert versions == ["1"] * 5 + ["2"] * 3
            path.write_text("broken")
            assert pipeline.reload_model() == "failure"
            assert pipeline.model.version == "2"
        finally:
            assert pipeline.stop().exit_code == 0

    def test_loading_errors_at_start_are_model_load_errors(self, tmp_path: Path) -> None:
        settings = build_settings(
            {
                "kafka": {"input_topic": "events", "output_topic": "scores"},
                "model": {"kind": "sklearn", "path": str(tmp_path / "none.joblib")},
            },
            environ={},
        )
        with pytest.raises(ModelLoadError) as info:
            Pipeline(settings)
        assert info.value.exit_code == 2


class TestPolledSource:
    """A registry alias: ``poll`` says which version would load; a move reloads."""

    def test_a_moved_alias_reloads_once_and_a_failed_load_keeps_the_old_model(
        self, tmp_path: Path
    ) -> None:
        path = write(tmp_path / "m.json", version="1")
        alias = ["1"]
        installed = [load_linear(path)]
        events = Events()

        def load() -> LinearModel:
            if alias[0] == "broken":
                msg = "model error: version 3 cannot be loaded"
                raise ModelLoadError(msg)
            return load_linear(write(path, version=alias[0]))

        subject = ModelReloader(
            load=load,
            current=lambda: installed[-1],
            install=installed.append,
            notify=events,
            interval_s=0.02,
            paths=lambda: (),
            poll=lambda: alias[0],
        )
        subject.start()
        try:
            alias[0] = "2"
            (event,) = events.mailbox.wait_for(1)
            assert event == ModelReloaded("success", "tiny", "2")
            alias[0] = "broken"
            _, failed = events.mailbox.wait_for(2)
            assert (failed.result, failed.version) == ("failure", "2")
            time.sleep(0.2)  # the same alias is not retried on every poll
            assert len(events.mailbox.items()) == 2
            assert [m.version for m in installed] == ["1", "2"]
        finally:
            subject.stop()

"""ModelActor with an asynchronous (remote) model: many batches in flight, answers in any order."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field

import numpy as np
import pytest

from streamer.actors.model import ModelActor
from streamer.core.models import ModelDefaults
from streamer.core.models.linear import LinearModel, load_linear
from streamer.core.scoring import ScoreOutcome
from streamer.messages import FeatureBatch, Rejection, ScoredBatch
from tests.unit.fakes import start_recorder, sync, wait_until
from tests.unit.test_stage_actors import source


@dataclass
class AsyncModel(ModelDefaults):
    """The demo model behind ``submit``: the test decides when each batch is answered."""

    inner: LinearModel
    submitted: list[tuple[np.ndarray, concurrent.futures.Future[ScoreOutcome]]] = field(
        default_factory=list
    )
    name: str = "remote-demo"
    version: str = "1"
    kind: str = "remote"

    @property
    def spec(self):  # type: ignore[no-untyped-def]
        return self.inner.spec

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.inner.output_names

    digest = ""
    watch_paths = ()  # type: ignore[var-annotated]

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.inner.predict(features)

    def submit(self, features: np.ndarray) -> concurrent.futures.Future[ScoreOutcome]:
        future: concurrent.futures.Future[ScoreOutcome] = concurrent.futures.Future()
        self.submitted.append((features, future))
        return future

    def answer(self, index: int, failed: tuple[int, ...] = ()) -> None:
        features, future = self.submitted[index]
        keep = [i for i in range(features.shape[0]) if i not in failed]
        future.set_result(
            ScoreOutcome(
                self.inner.predict(features[keep]), [(i, "BadInputError: HTTP 400") for i in failed]
            )
        )


@pytest.fixture
def demo_model() -> LinearModel:
    return load_linear(None)


def batch(seq: int, rows: np.ndarray) -> FeatureBatch:
    count = rows.shape[0]
    return FeatureBatch(
        source=source([b"x"] * count, batch_id=seq, seq=seq, first_offset=seq * count),
        features=rows,
        valid_rows=np.arange(count),
        rejections=(),
        dropped_rows=(),
    )


def test_batches_are_all_in_flight_at_once_and_forwarded_as_they_are_answered(
    demo_model: LinearModel,
) -> None:
    producer_ref, mailbox = start_recorder()
    model = AsyncModel(demo_model)
    actor = ModelActor.start(model, producer_ref)
    rows = np.random.default_rng(1).normal(size=(3, 4, 5))
    for seq in range(3):
        actor.tell(batch(seq, rows[seq]))
    sync(actor)
    assert len(model.submitted) == 3  # none waited for an answer
    assert mailbox.items() == []
    model.answer(2)
    model.answer(0, failed=(1, 3))
    model.answer(1)
    messages = mailbox.wait_for(3)
    assert all(isinstance(m, ScoredBatch) for m in messages)
    assert [m.source.seq for m in messages] == [2, 0, 1]  # the producer reorders
    first = messages[1]
    assert first.valid_rows.tolist() == [0, 2]
    assert np.array_equal(first.predictions, demo_model.predict(rows[0][[0, 2]]))
    assert first.rejections == (
        Rejection(1, "model_error", "BadInputError: HTTP 400", "model"),
        Rejection(3, "model_error", "BadInputError: HTTP 400", "model"),
    )
    assert first.model_name == "remote-demo"
    actor.stop()


def test_stopping_the_actor_abandons_the_requests_in_flight(demo_model: LinearModel) -> None:
    producer_ref, mailbox = start_recorder()
    model = AsyncModel(demo_model)
    actor = ModelActor.start(model, producer_ref)
    actor.tell(batch(0, np.zeros((2, 5))))
    wait_until(lambda: len(model.submitted) == 1)
    actor.stop()
    assert model.submitted[0][1].cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        model.submitted[0][1].result(0)
    assert mailbox.items() == []

"""(p) of `make bench --peers`: how a peer's output is checked; the peers' batched scores."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import orjson

from streamer.core.demo_data import make_event

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
DEMO_MODEL = (
    Path(__file__).resolve().parents[2] / "streamer" / "core" / "models" / "demo_fraud.json"
)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # bench.py's dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


EXPECTED = {"card-1": [0.25, 0.5], "card-2": [0.125]}


def answers(*docs: tuple[bytes | None, dict[str, object]]) -> Iterator[tuple[bytes | None, bytes]]:
    return ((key, orjson.dumps(doc)) for key, doc in docs)


def test_every_record_answered_with_its_score_in_any_order_passes() -> None:
    problems = load("bench").peer_answer_problems(
        EXPECTED,
        answers(
            (b"card-1", {"key": "card-1", "offset": 7, "score": 0.5}),
            (None, {"key": "card-2", "offset": 3, "score": 0.125}),
            # quix per record writes only the score, keyed by the input's key.
            (b"card-1", {"score": 0.25}),
        ),
    )
    assert problems == []


def test_a_duplicate_in_place_of_a_missing_answer_is_reported() -> None:
    problems = load("bench").peer_answer_problems(
        EXPECTED,
        answers(
            (b"card-1", {"score": 0.5}),
            (b"card-1", {"score": 0.5}),
            (b"card-2", {"score": 0.125}),
        ),
    )
    assert problems == ["1 keys with missing, extra or wrong scores, e.g. ['card-1']"]


def test_a_missing_answer_and_a_wrong_score_are_reported() -> None:
    problems = load("bench").peer_answer_problems(
        EXPECTED,
        answers((b"card-1", {"score": 0.25}), (b"card-2", {"score": 0.12500001})),
    )
    assert problems[0] == "2 answers to 3 records"
    assert problems[1].startswith("2 keys with missing, extra or wrong scores")


def test_the_batched_scores_of_the_peers_equal_their_per_record_scores() -> None:
    peers = load("peers")
    model = peers.Model(str(DEMO_MODEL))
    rng = random.Random(11)
    events = [make_event(rng) for _ in range(50)]
    one_by_one = [model.one(event) for event in events]
    columns = [[event[name] for event in events] for name in model.names]
    for batched in (model.many(events), model.many_columns(columns)):
        assert len(batched) == len(one_by_one)
        assert all(
            math.isclose(b, o, rel_tol=1e-12) for b, o in zip(batched, one_by_one, strict=True)
        )

"""The demo leaves transactions_last_hour to streamer: its events and its declaration."""

from __future__ import annotations

import random
import statistics

import orjson

from streamer import demo
from streamer.core.demo_data import EVENT_MS, DemoClock, make_event, make_record
from streamer.statefile import StateApplier


def test_demo_events_carry_their_time_and_not_the_declared_feature() -> None:
    rng = random.Random(3)
    clock = DemoClock(start_ms=1_000_000)
    events = [make_event(rng, clock=clock) for _ in range(3)]
    assert [e["ts"] for e in events] == [1_000_000 + EVENT_MS * i for i in (1, 2, 3)]
    assert all("transactions_last_hour" not in e for e in events)
    key, value = make_record(rng, clock=clock)
    assert orjson.loads(value)["card_id"].encode() == key
    # Without a clock (every other generator user), the field is still sent.
    assert "transactions_last_hour" in make_event(rng)


def test_the_demo_declares_the_count_and_it_looks_like_what_the_model_was_made_for() -> None:
    settings = demo._settings("127.0.0.1:1", 0)
    assert [f.name for f in settings.state_features] == ["transactions_last_hour"]
    rng = random.Random(11)
    clock = DemoClock(start_ms=1_767_225_600_000)
    values = [orjson.dumps(make_event(rng, clock=clock)) for _ in range(20_000)]
    applier = StateApplier(settings, "transactions")
    results = applier.apply(list(range(len(values))), [None] * len(values), values, [0] * 20_000)
    counts = {"normal": [], "compromised": []}
    for value, result in zip(values, results, strict=True):
        card = orjson.loads(value)["card_id"]
        counts["compromised" if card.startswith("card-9") else "normal"].append(result.features[0])
    assert statistics.median(counts["normal"]) == 1.0
    assert max(counts["normal"]) <= 8.0
    assert statistics.median(counts["compromised"]) >= 6.0

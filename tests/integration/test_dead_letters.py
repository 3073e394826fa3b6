"""Malformed records go to the dead-letter topic with the reason; the good ones are scored."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from streamer.core import dead_letters as reasons
from streamer.core.demo_data import make_event

from .helpers import Cluster, PipelineStarter, wait_for, wait_until_delivered

pytestmark = pytest.mark.integration

MAX_RECORD_BYTES = 1024


def _event(rng: random.Random, **changes: object) -> dict[str, object]:
    event = make_event(rng)
    event.update(changes)
    return event


def _malformed(rng: random.Random) -> list[tuple[str, bytes]]:
    """One record of each kind the preprocessor rejects, with the reason it must give."""
    without_age = _event(rng)
    del without_age["account_age_days"]
    return [
        (reasons.INVALID_JSON, b'{"amount": 12.5, "distance_from_home_km": '),
        (reasons.NOT_UTF8, b"\xff\xfe not utf-8 \xc3\x28"),
        (reasons.NOT_OBJECT, b"[1, 2, 3]"),
        (reasons.MISSING_FEATURE, orjson.dumps(without_age)),
        (reasons.NON_NUMERIC_FEATURE, orjson.dumps(_event(rng, amount="lots"))),
        (reasons.NON_NUMERIC_FEATURE, orjson.dumps(_event(rng, merchant_risk=[0.1]))),
        (reasons.MISSING_FEATURE, orjson.dumps(_event(rng, account_age_days=None))),
        (reasons.NON_FINITE, orjson.dumps(_event(rng, amount="NaN"))),
        (reasons.NON_FINITE, orjson.dumps(_event(rng, distance_from_home_km="-Infinity"))),
        (reasons.OVERSIZED, orjson.dumps(_event(rng, note="x" * (2 * MAX_RECORD_BYTES)))),
        (reasons.EMPTY_VALUE, b""),
    ]


def test_every_malformed_record_is_dead_lettered_with_its_reason_and_the_rest_is_scored(
    cluster: Cluster, start_pipeline: PipelineStarter
) -> None:
    topics = cluster.new_topics(partitions=2)
    rng = random.Random(11)
    # Each malformed kind several times, spread among valid events and over both partitions.
    plan: list[tuple[str | None, bytes]] = [(None, orjson.dumps(_event(rng))) for _ in range(600)]
    for _ in range(3):
        for reason, value in _malformed(rng):
            plan.insert(rng.randrange(len(plan) + 1), (reason, value))
    produced = cluster.produce(
        topics.input, [(f"key-{i % 50:02d}".encode(), value) for i, (_, value) in enumerate(plan)]
    )
    # Valid events are unique (a random transaction id); a repeated malformed value
    # always has the same reason.
    reason_of = {value: reason for reason, value in plan if reason is not None}
    reason_at = {
        where: reason_of[value] for where, (_, value) in produced.items() if value in reason_of
    }
    assert len(reason_at) == 33

    pipeline = start_pipeline(
        cluster.settings(topics, batch={"max_records": 50, "max_record_bytes": MAX_RECORD_BYTES})
    )
    wait_until_delivered(pipeline, topics.input, produced)
    expected_counts = Counter(reason_at.values())
    registry = pipeline.registry

    def dead_letter_counts() -> dict[str, float]:
        return {
            reason: registry.get_sample_value("streamer_dead_letters_total", {"reason": reason})
            or 0.0
            for reason in reasons.REASONS
        }

    wait_for(
        lambda: sum(dead_letter_counts().values()) >= len(reason_at),
        10,
        "the dead-letter counters to catch up",
    )
    assert pipeline.stop().exit_code == 0

    inputs = cluster.read(topics.input)
    outputs = cluster.read(topics.output)
    dead_letters = cluster.read(topics.dead_letter)

    dead_sources = set()
    for key, value, headers in dead_letters.records.values():
        h = dict(headers)
        source = (int(h["streamer.source.partition"]), int(h["streamer.source.offset"]))
        assert source not in dead_sources, f"{source} dead-lettered twice"
        dead_sources.add(source)
        assert source in reason_at, f"valid record {source} was dead-lettered: {h}"
        assert h["streamer.reason"].decode() == reason_at[source]
        assert h["streamer.source.topic"].decode() == topics.input
        assert h["streamer.stage"] == b"preprocess"
        assert h["streamer.error"], "the header should explain the reason"
        assert (key, value or b"") == produced[source], "the original key and bytes are kept"
    assert dead_sources == set(reason_at)

    scored_sources = []
    for _key, value, _headers in outputs.records.values():
        doc = orjson.loads(value or b"null")
        scored_sources.append((doc["partition"], doc["offset"]))
    assert len(scored_sources) == len(set(scored_sources)), "an input was scored twice"
    assert set(scored_sources) == set(produced) - set(reason_at)
    assert not set(scored_sources) & dead_sources
    assert set(inputs.records) == set(scored_sources) | dead_sources

    assert dead_letter_counts() == {
        reason: float(expected_counts.get(reason, 0)) for reason in reasons.REASONS
    }
    assert registry.get_sample_value("streamer_records_produced_total") == len(scored_sources)

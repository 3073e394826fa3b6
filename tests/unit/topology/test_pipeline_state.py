"""The daemon computes declared [[state.features]]: live values equal `streamer features`'.

Over fake clients, several preprocessors and models, and a producer restart
caused by a failed changelog record (the batch is not acknowledged and goes
again): every output's served features and score equal the offline ones.
"""

from __future__ import annotations

import dataclasses
import random
import threading

import numpy as np
import orjson
import pytest

from streamer.core.models.linear import LinearModel
from streamer.core.records import TP
from streamer.core.state.codec import META_KEY
from streamer.core.state.declared import parse_features
from streamer.settings import StateSettings
from streamer.statefile import StateApplier
from streamer.topology.state import changelog_topic_name
from tests.unit.fakes import FakeProducer, Sent, make_records, wait_until
from tests.unit.topology.helpers import DLQ, INPUT, OUTPUT, Dataset, settings, source_of, start

PARTITIONS, PER_PARTITION = 2, 300
DECLARED = parse_features(
    [
        {
            "name": "transactions_last_hour",
            "key": "card_id",
            "agg": "count",
            "window": "1h",
            "time": "ts",
        }
    ]
)


def card_events(spec_names: tuple[str, ...]) -> Dataset:
    """Transactions of a few cards a minute apart, without the declared feature; a few bad."""
    records = {}
    reasons: dict[tuple[TP, int], str] = {}
    for p in range(PARTITIONS):
        rng = random.Random(p)
        values: list[bytes | None] = []
        for i in range(PER_PARTITION):
            doc: dict[str, object] = {
                name: round(rng.uniform(1, 50), 2)
                for name in spec_names
                if name != "transactions_last_hour"
            }
            doc["card_id"] = f"card-{rng.randint(0, 6)}"
            doc["ts"] = 1_700_000_000_000 + i * 60_000
            if i % 97 == 5:
                del doc["card_id"]
                reasons[((INPUT, p), i)] = "missing_key"
            values.append(orjson.dumps(doc))
        records[(INPUT, p)] = make_records(values)
    return Dataset(records, reasons, {})


def offline(data: Dataset, config: object) -> dict[tuple[TP, int], tuple[float, ...] | None]:
    """Each record's features as `streamer features` computes them, partition by partition."""
    values: dict[tuple[TP, int], tuple[float, ...] | None] = {}
    for tp, recs in data.records.items():
        applier = StateApplier(config, tp[0], partition=tp[1])  # type: ignore[arg-type]
        results = applier.apply(
            [r.offset for r in recs],
            [r.key for r in recs],
            [r.value for r in recs],
            [r.timestamp for r in recs],
        )
        for result in results:
            values[(tp, result.offset)] = result.features if result.enriched else None
    return values


@pytest.mark.parametrize("interval_s", [0.0, 1.0], ids=["per-batch", "gathered"])
def test_outputs_carry_the_offline_features_through_a_failed_changelog_write(
    demo: LinearModel, interval_s: float
) -> None:
    data = card_events(demo.spec.names)
    config = dataclasses.replace(
        settings(max_records=40),
        state=StateSettings(log_features=True, changelog_interval_s=interval_s),
        state_features=DECLARED,
    )
    changelog = changelog_topic_name(config)
    failed = threading.Event()

    def fail_one_changelog_record(sent: Sent) -> BaseException | None:
        if sent.topic == changelog and not failed.is_set():
            failed.set()
            return RuntimeError("fake broker: changelog partition unavailable")
        return None

    producer = FakeProducer(fail_when=fail_one_changelog_record)
    pipeline, kafka, registry = start(data, config, model=demo, producer=producer)
    ends = dict.fromkeys(data.records, PER_PARTITION)
    wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=20)
    status = pipeline.consumer_status()
    report = pipeline.stop()
    assert (report.exit_code, report.committed) == (0, ends)
    assert status.state_keys == 2 * 7  # seven cards in each partition
    assert registry.get_sample_value("streamer_actor_restarts_total", {"actor": "producer"}) == 1

    expected = offline(data, config)
    sent = kafka.producer.records()
    answers = [s for s in sent if s.topic in (OUTPUT, DLQ)]
    by_source: dict[tuple[TP, int], list[Sent]] = {}
    for s in answers:
        by_source.setdefault(source_of(s), []).append(s)
    assert set(by_source) == set(expected)  # every record answered (some twice: the rewind)
    mean, std = demo.spec.mean, demo.spec.std
    names = list(demo.spec.names)
    for source, copies in by_source.items():
        features = expected[source]
        for s in copies:
            if features is None:
                assert s.topic == DLQ
                assert s.header_map["streamer.reason"] == b"missing_key"
                assert s.header_map["streamer.stage"] == b"state"
                continue
            doc = orjson.loads(s.value)
            assert doc["state_features"] == {"transactions_last_hour": features[0]}
            record = orjson.loads(data.records[source[0]][source[1]].value or b"")
            row = np.array([[features[0] if n == "transactions_last_hour" else record[n]
                             for n in names]])  # fmt: skip
            assert doc["score"] == float(demo.predict((row - mean) / std)[0])
    assert max(f[0] for f in expected.values() if f) > 5.0  # the windows really count

    # The changelog got every batch's changes, each ending with its meta record.
    logged = [s for s in sent if s.topic == changelog]
    assert logged[-1].key == META_KEY
    assert sum(1 for s in logged if s.future.exception is not None) == 1


@pytest.mark.parametrize("interval_s", [0.0, 1.0], ids=["per-batch", "gathered"])
def test_the_changelog_counter_counts_the_acknowledged_changelog_records(
    demo: LinearModel, interval_s: float
) -> None:
    data = card_events(demo.spec.names)
    config = dataclasses.replace(
        settings(max_records=40),
        state=StateSettings(changelog_interval_s=interval_s),
        state_features=DECLARED,
    )
    pipeline, kafka, registry = start(data, config, model=demo)
    ends = dict.fromkeys(data.records, PER_PARTITION)
    wait_until(lambda: pipeline.consumer_status().watermarks == ends, timeout=20)
    report = pipeline.stop()
    assert (report.exit_code, report.committed) == (0, ends)
    changelog = changelog_topic_name(config)
    logged = [s for s in kafka.producer.records() if s.topic == changelog]
    metas = [s for s in logged if s.key == META_KEY]
    batches = registry.get_sample_value("streamer_batches_total")
    if interval_s:
        # Gathered: far fewer changes than one set per batch, each flush ending with its meta;
        # a key (7 cards per partition) is sent at most once per flush.
        assert 2 <= len(metas) < batches
        flush: list[bytes] = []
        for s in logged:
            if s.key == META_KEY:
                assert len(flush) == len(set(flush))
                flush = []
            else:
                flush.append(s.key)
        assert flush == []
    else:
        assert len(metas) == batches  # one per batch
    assert registry.get_sample_value("streamer_state_changelog_records_total") == len(logged)
    # A record's output has no state_features unless state.log_features is on.
    output = next(s for s in kafka.producer.records() if s.topic == OUTPUT)
    assert "state_features" not in orjson.loads(output.value)

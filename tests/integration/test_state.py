"""Declared [[state.features]] in `streamer run` on the broker: kill -9, restore, offline parity.

A daemon (a subprocess) is killed with SIGKILL mid-stream and started again:
every output's served features (``state.log_features``) equal what
`streamer features`' code (StateApplier) computes for the same records in
offset order, so no record counted twice and none was missed; nothing is
lost. On the confluent backend the local state directory is deleted between
the runs too, so the second run restores from the changelog topic alone.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.core.state.codec import META_KEY
from streamer.settings import build_settings, to_toml
from streamer.statefile import StateApplier
from streamer.topology.state import changelog_topic_name
from tests.integration.helpers import (
    BACKENDS,
    PROCESS_TIMEOUT_S,
    Cluster,
    Produced,
    Topics,
    running_daemon,
    wait_for,
)

pytestmark = pytest.mark.integration

RECORDS = 2000
PARTITIONS = 2
FEATURES = [
    {"name": "card_count_1h", "key": "card_id", "agg": "count", "window": "1h", "time": "ts"},
    {
        "name": "card_amount_sum_1h",
        "key": "card_id",
        "agg": "sum",
        "field": "amount",
        "window": "1h",
        "time": "ts",
    },
]


def transactions(seed: int) -> list[tuple[bytes | None, bytes]]:
    """Card transactions keyed by card id, a minute apart in event time; a few without a card."""
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(RECORDS):
        card = f"card-{rng.randint(0, 40):03d}"
        doc: dict[str, Any] = {
            "card_id": card,
            "amount": round(rng.lognormvariate(3.7, 0.7), 2),
            "distance_from_home_km": round(rng.uniform(0, 50), 1),
            "transactions_last_hour": 1,
            "account_age_days": rng.randint(1, 3000),
            "merchant_risk": 0.1,
            "ts": 1_767_225_600_000 + i * 20_000,
        }
        if i % 211 == 17:
            del doc["card_id"]  # a missing_key dead letter
        out.append((card.encode(), orjson.dumps(doc)))
    return out


def document(cluster: Cluster, topics: Topics, client: str, state_dir: Path) -> dict[str, Any]:
    return {
        "kafka": {**cluster.kafka_section(topics), "client": client, "client_id": "state"},
        # Small batches, one in flight: slow enough to be killed mid-stream.
        "batch": {"max_records": 50, "max_in_flight": 1},
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": 15.0},
        "state": {"dir": str(state_dir), "log_features": True},
    }


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    features = "".join(
        "\n[[state.features]]\n"
        + "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in f.items())
        for f in FEATURES
    )
    path.write_text(to_toml(doc) + features)
    return path


def committed_total(cluster: Cluster, topics: Topics) -> int:
    committed = cluster.committed(topics.group, topics.input, topics.partitions)
    return sum(o or 0 for o in committed.values())


@pytest.mark.parametrize("client", BACKENDS)
def test_kill_9_and_restart_serve_the_offline_features_once_per_record(
    cluster: Cluster, tmp_path: Path, client: str
) -> None:
    """kafka-python: two instances, one killed, then back; confluent: one, its state deleted."""
    topics = cluster.new_topics(partitions=PARTITIONS)
    produced = cluster.produce(topics.input, transactions(seed=5))
    doc = document(cluster, topics, client, tmp_path / "state-a")
    config_a = write_config(tmp_path / "a.toml", doc)
    log_a = tmp_path / "a.log"
    if client == "confluent":
        with running_daemon(config_a, log_a) as first:
            wait_for(
                lambda: committed_total(cluster, topics) >= 400,
                PROCESS_TIMEOUT_S,
                "the first run to commit 400 records",
                describe=lambda: log_a.read_text()[-2000:],
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        assert 0 < committed_total(cluster, topics) < RECORDS
        shutil.rmtree(tmp_path / "state-a")  # restored from the changelog topic alone
        with running_daemon(config_a, log_a) as second:
            wait_until_committed(cluster, topics, len(produced), log_a)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, log_a.read_text()[-3000:]
        assert "no local store; restoring from" in log_a.read_text()
    else:
        # Two members, each with its own state directory (two machines); one is killed,
        # the survivor takes its partition with its state; the killed one comes back.
        doc_b = document(cluster, topics, client, tmp_path / "state-b")
        doc_b["kafka"]["client_id"] = "state-b"
        config_b = write_config(tmp_path / "b.toml", doc_b)
        log_b = tmp_path / "b.log"
        with running_daemon(config_b, log_b) as survivor:
            with running_daemon(config_a, log_a) as killed:
                wait_for(
                    lambda: (
                        committed_total(cluster, topics) >= 400
                        and f"state of {topics.input}/" in log_a.read_text()
                    ),
                    PROCESS_TIMEOUT_S,
                    "both members to apply state and 400 records committed",
                    describe=lambda: log_a.read_text()[-2000:],
                )
                killed.send_signal(signal.SIGKILL)
                killed.wait(timeout=10)
            assert 0 < committed_total(cluster, topics) < RECORDS
            log_back = tmp_path / "a-back.log"
            with running_daemon(config_a, log_back) as back:
                wait_until_committed(cluster, topics, len(produced), log_b)
                wait_for(
                    lambda: "pipeline started" in log_back.read_text(),
                    PROCESS_TIMEOUT_S,
                    "the killed member to be back",
                )
                back.send_signal(signal.SIGTERM)
                assert back.wait(timeout=30) == 0, log_back.read_text()[-3000:]
            survivor.send_signal(signal.SIGTERM)
            assert survivor.wait(timeout=30) == 0, log_b.read_text()[-3000:]
        # The killed member's partition went on with its state where it landed next: the
        # survivor (restored from the changelog) or the member back (its local store).
        moved = re.findall(rf"state of {topics.input}/(\d+):", log_a.read_text())
        after = log_b.read_text() + log_back.read_text()
        assert moved
        assert any(f"state of {topics.input}/{p}:" in after for p in moved), moved
    check_parity(cluster, topics, doc, produced)


def wait_until_committed(cluster: Cluster, topics: Topics, total: int, log: Path) -> None:
    wait_for(
        lambda: committed_total(cluster, topics) == total,
        90,
        f"every one of the {total} records committed",
        describe=lambda: log.read_text()[-2000:],
    )


def check_parity(cluster: Cluster, topics: Topics, doc: dict[str, Any], produced: Produced) -> None:
    """Every output's served features equal the offline ones; state dead letters; 0 lost."""
    # Offline: the records of each partition, in offset order, through `streamer features`' code.
    settings = build_settings({**doc, "state": {"features": FEATURES}}, environ={})
    expected: dict[tuple[int, int], tuple[float, ...] | None] = {}
    for partition in range(PARTITIONS):
        offsets = sorted(o for p, o in produced if p == partition)
        applier = StateApplier(settings, topics.input, partition=partition)
        results = applier.apply(
            offsets,
            [produced[(partition, o)][0] for o in offsets],
            [produced[(partition, o)][1] for o in offsets],
            [0] * len(offsets),
        )
        expected.update(
            ((partition, r.offset), r.features if r.enriched is not None else None) for r in results
        )
    names = [f["name"] for f in FEATURES]
    answered: dict[tuple[int, int], int] = {}
    for _key, value, _headers in cluster.read(topics.output).records.values():
        out = orjson.loads(value or b"")
        source = (out["partition"], out["offset"])
        served = expected[source]
        assert served is not None, source
        assert out["state_features"] == dict(zip(names, served, strict=True)), source
        answered[source] = answered.get(source, 0) + 1
    for _key, _value, headers in cluster.read(topics.dead_letter).records.values():
        meta = dict(headers)
        source = (int(meta["streamer.source.partition"]), int(meta["streamer.source.offset"]))
        assert (meta["streamer.reason"], meta["streamer.stage"]) == (b"missing_key", b"state")
        assert expected[source] is None
        answered[source] = answered.get(source, 0) + 1
    assert set(answered) == set(expected)  # 0 lost
    repeated = sum(n - 1 for n in answered.values())
    assert repeated <= (1 + PARTITIONS) * 50  # at least once: at most the work in flight
    assert max(f[0] for f in expected.values() if f) >= 3.0  # the windows really count

    # The changelog: compacted, one partition per input partition, a meta record last.
    changelog = cluster.read(changelog_topic_name(settings)).records
    assert {p for p, _o in changelog} == set(range(PARTITIONS))
    for partition in range(PARTITIONS):
        last = max(o for p, o in changelog if p == partition)
        assert changelog[(partition, last)][0] == META_KEY

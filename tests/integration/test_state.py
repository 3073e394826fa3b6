"""Declared [[state.features]] in `streamer run` on the broker: crashes, rebalances, parity.

One story per backend, each step one failure of issue 22, in one group on one
topic, so that member starts, joins and the session expiry are paid once:

1. **Join, actor restarts.** A member in this process (its model actor killed
   twice: two restarts, each rewinding its kept batches) and a daemon join
   the group, one partition each; the daemon applies its partition's first
   records without committing them (``commit_interval_s`` longer than the
   phase).
2. **kill -9 of one of two members.** The survivor takes the daemon's partition
   with its state, restored from the changelog topic alone, and every record
   of it comes again: a replay, served what it was served the first time.
3. **Restart with a deleted store, a member leaves.** The daemon comes back
   with its local store of its old partition (current: used as it is) and the
   other partition's store deleted (restored from the changelog); the
   in-process member leaves, the daemon takes everything and the stream goes
   on.

Every output's served features (``state.log_features``) equal what
`streamer features`' code (StateApplier) computes for the same records in
offset order, bit for bit: no record's state applied twice, none missed, every
record answered, the replays exactly the killed member's uncommitted records.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.core.models.linear import load_linear
from streamer.core.state.codec import META_KEY
from streamer.settings import Settings, build_settings, to_toml
from streamer.statefile import StateApplier
from streamer.topology.state import changelog_topic_name
from tests.integration.helpers import (
    BACKENDS,
    PROCESS_TIMEOUT_S,
    Cluster,
    FlakyModel,
    PipelineStarter,
    Produced,
    Topics,
    end_offsets,
    running_daemon,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
CHUNK = 400
"""Records produced in each of the story's three steps."""
BATCH = 50
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


def transactions(seed: int, first: int) -> list[tuple[bytes | None, bytes]]:
    """Card transactions keyed by card id, 20 s apart in event time; a few without a card."""
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(first, first + CHUNK):
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


def document(
    cluster: Cluster, topics: Topics, client: str, state_dir: Path, **kafka: Any
) -> dict[str, Any]:
    return {
        "kafka": {**cluster.kafka_section(topics), "client": client, **kafka},
        "batch": {"max_records": BATCH},
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


def with_features(doc: dict[str, Any]) -> Settings:
    return build_settings({**doc, "state": {**doc["state"], "features": FEATURES}}, environ={})


def answered(cluster: Cluster, topics: Topics) -> Counter[tuple[int, int]]:
    """How many answers (outputs and dead letters) each input record has."""
    counts: Counter[tuple[int, int]] = Counter()
    for _key, value, _headers in cluster.read(topics.output).records.values():
        out = orjson.loads(value or b"")
        counts[(out["partition"], out["offset"])] += 1
    for _key, _value, headers in cluster.read(topics.dead_letter).records.values():
        meta = dict(headers)
        counts[(int(meta["streamer.source.partition"]), int(meta["streamer.source.offset"]))] += 1
    return counts


def assigned(log: Path, topic: str) -> set[int]:
    """The daemon's partitions now, from the assignments and revocations in its log."""
    owned: set[int] = set()
    for event, named in re.findall(r"partitions (assigned|revoked): ([^\n]*)", log.read_text()):
        partitions = {int(p) for p in re.findall(rf"{topic}/(\d+)", named)}
        owned = owned | partitions if event == "assigned" else owned - partitions
    return owned


def committed(cluster: Cluster, topics: Topics) -> dict[int, int | None]:
    return cluster.committed(topics.group, topics.input, topics.partitions)


@pytest.mark.parametrize("client", BACKENDS)
def test_kill_9_restarts_and_rebalances_serve_the_offline_features_once_per_record(
    cluster: Cluster,
    start_pipeline: PipelineStarter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    client: str,
) -> None:
    caplog.set_level(logging.INFO, logger="streamer.topology.state")
    topics = cluster.new_topics(partitions=PARTITIONS)
    # The daemon: no commit before it is killed, so every record it applied comes again.
    daemon_doc = document(
        cluster, topics, client, tmp_path / "state-d", client_id="daemon", commit_interval_s=120.0
    )
    first_config = write_config(tmp_path / "first.toml", daemon_doc)
    back_doc = {**daemon_doc, "kafka": {**daemon_doc["kafka"], "commit_interval_s": 0.0}}
    back_config = write_config(tmp_path / "back.toml", back_doc)
    member_doc = document(cluster, topics, client, tmp_path / "state-m", client_id="member")
    settings = with_features(member_doc)
    changelog = changelog_topic_name(settings)
    first_log, back_log = tmp_path / "first.log", tmp_path / "back.log"

    # 1. The daemon and the member join (the daemon's start overlaps the member's join).
    with running_daemon(first_config, first_log) as daemon:
        member = start_pipeline(settings, model=FlakyModel(load_linear(None), {2, 5}))
        wait_for(
            lambda: (
                len(assigned(first_log, topics.input)) == 1
                and len(member.consumer_status().assigned) == 1
            ),
            PROCESS_TIMEOUT_S,
            "the daemon to join and take one partition",
            describe=lambda: first_log.read_text()[-2000:],
        )
        (killed,) = assigned(first_log, topics.input)
        (kept,) = {p for _t, p in member.consumer_status().assigned}
        produced = cluster.produce(topics.input, transactions(seed=5, first=0))
        first = dict(produced)
        wait_for(
            lambda: set(answered(cluster, topics)) == set(produced),
            PROCESS_TIMEOUT_S,
            "every record of the first step answered",
            describe=lambda: first_log.read_text()[-2000:],
        )
        assert committed(cluster, topics)[killed] in (None, 0)  # its records all come again
        # 2. kill -9: the member takes the partition, restored from the changelog alone.
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    logged = cluster.read(changelog).records
    changelog_records = 1 + max(o for p, o in logged if p == killed)
    assert logged[(killed, changelog_records - 1)][0] == META_KEY
    produced.update(
        cluster.produce(
            topics.input, transactions(seed=6, first=CHUNK), partition_of=lambda _i: kept
        )
    )
    wait_for(
        lambda: committed(cluster, topics) == end_offsets(produced),
        PROCESS_TIMEOUT_S,
        "the member to take the killed daemon's partition and commit everything",
    )
    assert member.restarts == {"model": 2}
    moved = f"state of {topics.input}/{killed}"
    restoring = f"{moved}: no local store; restoring from {changelog} ({changelog_records} records)"
    assert restoring in caplog.text
    assert f"{moved} restored: {changelog_records} changelog records\n" in caplog.text

    # 3. The daemon back with its store of the partition it had, the other one deleted.
    group_dir = tmp_path / "state-d" / topics.group
    assert (group_dir / f"{topics.input}-{killed}").is_dir()
    shutil.rmtree(group_dir / f"{topics.input}-{kept}", ignore_errors=True)
    with running_daemon(back_config, back_log) as daemon:
        wait_for(
            lambda: assigned(back_log, topics.input),
            PROCESS_TIMEOUT_S,
            "the daemon to join again",
            describe=lambda: back_log.read_text()[-2000:],
        )
        report = member.stop()
        assert (report.exit_code, report.failure) == (0, None)
        wait_for(
            lambda: assigned(back_log, topics.input) == {killed, kept},
            PROCESS_TIMEOUT_S,
            "the daemon to take every partition once the member left",
            describe=lambda: back_log.read_text()[-2000:],
        )
        produced.update(cluster.produce(topics.input, transactions(seed=7, first=2 * CHUNK)))
        wait_for(
            lambda: committed(cluster, topics) == end_offsets(produced),
            PROCESS_TIMEOUT_S,
            "every record committed",
            describe=lambda: back_log.read_text()[-2000:],
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, back_log.read_text()[-3000:]
    text = back_log.read_text()
    last_first = max(o for p, o in first if p == killed)
    current = f"local store current at {last_first}: using the local store"
    assert f"state of {topics.input}/{killed}: {current}" in text
    assert f"state of {topics.input}/{kept}: no local store; restoring from {changelog} (" in text

    counts = check_parity(cluster, topics, settings, produced)
    # The replays: exactly the killed daemon's records, each answered by it and by the member.
    replayed = {source for source, n in counts.items() if n > 1}
    killed_first = {source for source in first if source[0] == killed}
    assert killed_first <= replayed
    assert len(replayed - killed_first) <= 2 * 16  # the rewinds: at most what was in flight


def check_parity(
    cluster: Cluster, topics: Topics, settings: Settings, produced: Produced
) -> Counter[tuple[int, int]]:
    """Every output's served features equal the offline ones; state dead letters; 0 lost."""
    # Offline: the records of each partition, in offset order, through `streamer features`' code.
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
    counts: Counter[tuple[int, int]] = Counter()
    for _key, value, _headers in cluster.read(topics.output).records.values():
        out = orjson.loads(value or b"")
        source = (out["partition"], out["offset"])
        served = expected[source]
        assert served is not None, source
        assert out["state_features"] == dict(zip(names, served, strict=True)), source
        counts[source] += 1
    for _key, _value, headers in cluster.read(topics.dead_letter).records.values():
        meta = dict(headers)
        source = (int(meta["streamer.source.partition"]), int(meta["streamer.source.offset"]))
        assert (meta["streamer.reason"], meta["streamer.stage"]) == (b"missing_key", b"state")
        assert expected[source] is None
        counts[source] += 1
    assert set(counts) == set(expected)  # 0 lost
    missing_key = sum(1 for i in range(len(produced)) if i % 211 == 17)
    assert sum(1 for f in expected.values() if f is None) == missing_key == 6
    assert max(f[0] for f in expected.values() if f) >= 3.0  # the windows really count

    # The changelog: compacted, one partition per input partition, a meta record last.
    changelog = cluster.read(changelog_topic_name(settings)).records
    assert {p for p, _o in changelog} == set(range(PARTITIONS))
    for partition in range(PARTITIONS):
        last = max(o for p, o in changelog if p == partition)
        assert changelog[(partition, last)][0] == META_KEY
    return counts

"""Delayed labels in `streamer run` on the broker: kill -9, restore, every label joined once.

A daemon (a subprocess) scores a stream with a champion and a challenger,
labels arrive on the labels topic after their records were scored, and the
daemon is killed with SIGKILL while it scores and joins; a second run goes on
(on confluent from the ledger changelog alone: its local stores are deleted).
Read back from the ledger changelog topic, every valid label joined exactly
once (the ledger's counts are exact), each joined prediction holds the scores
the output topics got, and the window's metrics equal scikit-learn's on the
same records.
"""

from __future__ import annotations

import itertools
import random
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from streamer.clients.kafka_python import ensure_topics
from streamer.core.demo_data import make_record
from streamer.core.labels.join import coordinates_identity
from streamer.core.labels.ledger import Joined, PredictionLedger, labelled
from streamer.core.labels.ledger_log import rebuild
from streamer.core.labels.metrics import window_report
from streamer.core.state.changelog import RestoreCount, acknowledged_changes
from streamer.core.state.store import MemoryStore
from streamer.settings import KafkaSettings, to_toml
from tests.integration.helpers import (
    BACKENDS,
    PROCESS_TIMEOUT_S,
    Cluster,
    Topics,
    running_daemon,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
FIRST, SECOND = 600, 2500  # the second stream: ~250 one-in-flight batches to kill within
DEMO = Path(__file__).resolve().parents[2] / "streamer" / "core" / "models" / "demo_fraud.json"


def document(cluster: Cluster, topics: Topics, client: str, tmp_path: Path) -> dict[str, Any]:
    challenger = orjson.loads(DEMO.read_bytes())
    challenger.update(name="demo-challenger", version="2", bias=challenger["bias"] + 1.0)
    path = tmp_path / "challenger.json"
    path.write_bytes(orjson.dumps(challenger))
    return {
        "kafka": {**cluster.kafka_section(topics), "client": client, "client_id": "labels"},
        # Small batches, one in flight: slow enough to be killed mid-stream.
        "batch": {"max_records": 10, "max_in_flight": 1},
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": 15.0},
        "state": {"dir": str(tmp_path / "state")},
        "labels": {"topic": labels_topic(topics), "time_field": "labelled_at"},
        "challenger": [
            {
                "name": "candidate",
                "kind": "linear",
                "path": str(path),
                "output_topic": f"{topics.output}.candidate",
                "max_pending_batches": 1000,
            }
        ],
    }


def labels_topic(topics: Topics) -> str:
    return f"{topics.input}.labels"


def committed_total(cluster: Cluster, topics: Topics, topic: str) -> int:
    return sum(o or 0 for o in cluster.committed(topics.group, topic, PARTITIONS).values())


def label(produced_at: tuple[int, int], topic: str, value: int, minutes: int) -> dict[str, Any]:
    partition, offset = produced_at
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "label": value,
        "labelled_at": int(time.time() * 1000) + minutes * 60_000,
    }


def produce_labels(cluster: Cluster, topics: Topics, labels: list[dict[str, Any]]) -> None:
    """Each label to its record's partition (bad ones to the partition they name)."""
    cluster.produce(
        labels_topic(topics),
        [(None, orjson.dumps(doc) if isinstance(doc, dict) else doc) for doc in labels],
        partition_of=lambda index: int(labels[index].get("to", labels[index]["partition"])),
    )


@pytest.mark.parametrize("client", BACKENDS)
def test_kill_9_and_restart_join_every_label_once_and_the_metrics_equal_sklearn(
    cluster: Cluster, tmp_path: Path, client: str
) -> None:
    topics = cluster.new_topics(partitions=PARTITIONS)
    ensure_topics(
        KafkaSettings(bootstrap_servers=cluster.bootstrap_servers),
        {labels_topic(topics): PARTITIONS, f"{topics.output}.candidate": PARTITIONS},
    )
    rng = random.Random(23)
    first = cluster.produce(topics.input, [make_record(rng) for _ in range(FIRST)])
    doc = document(cluster, topics, client, tmp_path)
    config = tmp_path / "labels.toml"
    challengers = doc.pop("challenger")

    def write_config(path: Path = config, **sections: Any) -> None:
        path.write_text(
            to_toml({**doc, **sections})
            + "".join(
                "\n[[challenger]]\n"
                + "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in c.items())
                for c in challengers
            )
        )

    write_config()
    log = tmp_path / "labels.log"
    describe = lambda: log.read_text()[-3000:]  # noqa: E731

    def truth(where: tuple[int, int]) -> int:
        return random.Random(f"{where}").random() < 0.3  # type: ignore[return-value]

    # Labels of the first records, sent once they were scored (a delay): one for every
    # other record, and a duplicate, an unknown record, a misrouted and a malformed one.
    first_labels = [
        label(at, topics.input, int(truth(at)), i) for i, at in enumerate(sorted(first)) if i % 2
    ]
    extra = first_labels[0]
    bad: list[Any] = [
        {**extra, "label": 1 - extra["label"]},  # duplicate: the first label stays
        {**extra, "offset": 10**9},  # unmatched
        {**extra, "partition": 1 - extra["partition"], "to": extra["partition"]},  # misrouted
    ]
    with running_daemon(config, log) as daemon:
        wait_for(
            lambda: committed_total(cluster, topics, topics.input) == FIRST,
            PROCESS_TIMEOUT_S,
            "the first records committed",
            describe=describe,
        )
        produce_labels(cluster, topics, [*first_labels, *bad])
        cluster.produce(labels_topic(topics), [(None, b"not json")], partition_of=lambda _i: 0)
        with cluster.committed_reader(topics.group) as committed:  # one client: a quick probe
            second = cluster.produce(topics.input, [make_record(rng) for _ in range(SECOND)])
            wait_for(
                lambda: (
                    sum(committed(topics.input, p) or 0 for p in range(PARTITIONS)) >= FIRST + 20
                ),
                PROCESS_TIMEOUT_S,
                "the second records to be scored",
                describe=describe,
            )
            daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    assert committed_total(cluster, topics, topics.input) < FIRST + SECOND
    if client == "confluent":
        shutil.rmtree(tmp_path / "state")  # restored from the ledger changelog alone
    doc["batch"] = {"max_records": 200, "max_in_flight": 4}  # no kill to wait for now
    write_config()
    labels_total = len(first_labels) + len(bad) + 1
    second_labels = [
        label(at, topics.input, int(truth(at)), 1000 + i)
        for i, at in enumerate(sorted(second))
        if i % 3 == 0
    ]
    # A second member joins once every record is scored: a partition moves to it with its
    # ledger, restored there from the changelog, and the second labels join there the
    # predictions made before the move.
    member_config, member_log = tmp_path / "member.toml", tmp_path / "member.log"
    write_config(
        member_config,
        state={"dir": str(tmp_path / "member-state")},
        kafka={**doc["kafka"], "client_id": "labels-member"},
    )
    with running_daemon(config, log) as daemon:
        wait_for(
            lambda: (
                committed_total(cluster, topics, topics.input) == FIRST + SECOND
                and committed_total(cluster, topics, labels_topic(topics)) == labels_total
            ),
            PROCESS_TIMEOUT_S,
            "every record and label committed",
            describe=describe,
        )
        with running_daemon(member_config, member_log) as member:
            wait_for(
                lambda: "partitions assigned: " in member_log.read_text(),
                PROCESS_TIMEOUT_S,
                "the second member's partitions",
                describe=lambda: member_log.read_text()[-3000:],
            )
            produce_labels(cluster, topics, second_labels)
            wait_for(
                lambda: (
                    committed_total(cluster, topics, labels_topic(topics))
                    == labels_total + len(second_labels)
                ),
                PROCESS_TIMEOUT_S,
                "the second labels committed",
                describe=describe,
            )
            for process in (member, daemon):
                process.send_signal(signal.SIGTERM)
            assert member.wait(timeout=30) == 0, member_log.read_text()[-3000:]
        assert daemon.wait(timeout=30) == 0, describe()
    if client == "confluent":
        assert "restored from" in log.read_text()  # the ledger, from its changelog
    moved = re.findall(
        rf"prediction ledger of {re.escape(topics.input)}/(\d) restored from .*: (\d+) records",
        member_log.read_text(),
    )
    assert len(moved) == 1, member_log.read_text()[-3000:]  # one partition, rebuilt
    assert int(moved[0][1]) > 0

    joined, counts = read_ledger(cluster, topics)
    expected = {
        coordinates_identity(topics.input, *at): (doc["label"], at)
        for doc, at in ((d, (d["partition"], d["offset"])) for d in [*first_labels, *second_labels])
    }
    # Every valid label joined exactly once; the bad ones counted or dead-lettered.
    assert {j.identity for j in joined} == set(expected)
    assert sum(c["joined"] for c in counts) == len(expected)
    assert sum(c["labels"].get("duplicate", 0) for c in counts) == 1
    assert sum(c["labels"].get("unmatched", 0) for c in counts) == 1
    assert sum(c["labels"].get("past_horizon", 0) for c in counts) == 0
    for record in joined:
        assert record.label.value == expected[record.identity][0]
    reasons = {
        dict(headers)["streamer.reason"]
        for _k, _v, headers in cluster.read(topics.dead_letter).records.values()
    }
    assert reasons == {b"misrouted", b"malformed"}

    # The ledger holds the scores the output topics got, for the champion and the challenger.
    champion = scores_of(cluster, topics.output)
    candidate = scores_of(cluster, f"{topics.output}.candidate")
    challenged = 0
    for record in joined:
        at = expected[record.identity][1]
        prediction = record.prediction
        assert prediction.champion is not None
        assert prediction.champion.score in champion[at], at
        for score in prediction.challengers:
            assert (score.name, score.version) == ("candidate", "2")
            assert score.score in candidate[at], at
            challenged += 1
    assert challenged > len(joined) // 2  # best effort, but most of them

    # The window's metrics equal scikit-learn's on the same records.
    report = window_report(joined, task="classification", threshold=0.5, buckets=10)
    model = report["models"][0]
    assert (model["role"], model["records"]) == ("champion", len(joined))
    labels = np.array([r.label.value for r in joined])
    scores = np.array([r.prediction.champion.score for r in joined])  # type: ignore[union-attr]
    predicted = scores >= 0.5
    assert model["precision"] == precision_score(labels, predicted)
    assert model["recall"] == recall_score(labels, predicted)
    assert model["f1"] == f1_score(labels, predicted)
    assert model["roc_auc"] == roc_auc_score(labels, scores)
    assert model["pr_auc"] == average_precision_score(labels, scores)
    assert model["log_loss"] == log_loss(labels, scores)
    assert model["brier"] == brier_score_loss(labels, scores)


def read_ledger(cluster: Cluster, topics: Topics) -> tuple[list[Joined], list[dict[str, Any]]]:
    """The labelled predictions and counts of each partition's ledger, from its changelog."""
    records = cluster.read(f"{topics.group}.{topics.input}.ledger-changelog").records
    joined: list[Joined] = []
    counts: list[dict[str, Any]] = []
    for partition in range(PARTITIONS):
        chunk = [
            (offset, key, value)
            for (p, offset), (key, value, _headers) in sorted(records.items())
            if p == partition
        ]
        store = MemoryStore()
        acknowledged = acknowledged_changes([chunk], RestoreCount())  # type: ignore[list-item]
        for _done in rebuild(
            store, itertools.chain.from_iterable(acknowledged), (topics.input, partition)
        ):
            pass
        ledger = PredictionLedger(store, 30 * 86_400_000_000, (topics.input, partition))
        joined += labelled(store)
        counts.append({"joined": ledger.counts.joined, "labels": dict(ledger.counts.labels)})
    return joined, counts


def scores_of(cluster: Cluster, topic: str) -> dict[tuple[int, int], set[float]]:
    """Every score an output topic holds for each source record (a replay may add one)."""
    scores: dict[tuple[int, int], set[float]] = {}
    for _key, value, _headers in cluster.read(topic).records.values():
        out = orjson.loads(value or b"")
        scores.setdefault((out["partition"], out["offset"]), set()).add(out["score"])
    return scores

"""Monitoring end to end: a real Prometheus scrapes a pipeline on the embedded broker.

Every PromQL expression of the Grafana dashboard and of the alert rules is run
against that server and must return data; the counters must equal the records
actually fed; ``/healthz`` and ``/readyz`` are checked healthy and failing.

Prometheus is Debian's ``prometheus`` package (``.ci/run`` installs it), started
here by hand on loopback with a 1 s scrape interval.
"""

from __future__ import annotations

import collections
import json
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pykka
import pytest
import yaml
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamer.clients.kafka_python import ensure_topics
from streamer.core.dead_letters import REASONS
from streamer.core.demo_data import make_event, make_transaction
from streamer.devtools.oip_server import OipServer
from streamer.settings import KafkaSettings, build_settings
from streamer.topology import Pipeline
from streamer.topology.specs import Stage

from .helpers import (
    ASSIGN_TIMEOUT_S,
    Cluster,
    Produced,
    Topics,
    end_offsets,
    wait_for,
    wait_until_delivered,
)

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
if PROMETHEUS is None:
    pytest.skip(
        "the prometheus binary is not installed (Debian: apt-get install prometheus; "
        ".ci/run does it)",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamer.json"
ALERTS = ROOT / "deploy" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
DEMO_MODEL = ROOT / "streamer" / "core" / "models" / "demo_fraud.json"

JOB = "streamer"
# What Grafana puts in for the dashboard's variables.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$job": JOB}
BAD_VALUE = b"{not json"
BAD_EVERY = 20
FEED_PER_TICK = 40  # every 0.1 s: 400 records/s
# The first sample arrives about 6 s after Prometheus is ready; rate() needs two.
DATA_TIMEOUT_S = 40.0
HTTP_TIMEOUT_S = 5.0
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
LABEL_EVERY = 5  # the feeder labels one good record in 5, LABEL_DELAY_S after sending it
LABEL_DELAY_S = 1.0


# --- helpers -----------------------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET, whatever the status."""
    try:
        with DIRECT.open(url, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def get_json(url: str) -> tuple[int, Any]:
    status, body = get(url)
    return status, json.loads(body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


def with_bool(expr: str) -> str:
    """``expr`` with ``bool`` after every comparison outside label matchers and strings.

    An alert expression returns nothing while its condition is false. With
    ``bool`` each comparison returns 0 or 1 instead of filtering, so the
    expression returns data exactly when every series it reads exists.
    """
    out: list[str] = []
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(expr):
        char = expr[i]
        if quote is not None:
            out.append(char)
            if char == "\\":
                out.append(expr[i + 1])
                i += 1
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
            out.append(char)
        elif char == "{":
            depth += 1
            out.append(char)
        elif char == "}":
            depth -= 1
            out.append(char)
        elif depth == 0 and (match := _COMPARISON.match(expr, i)):
            out.append(match.group())
            i = match.end()
            if not re.match(r"\s*bool\b", expr[i:]):
                out.append(" bool" if expr[i : i + 1].isspace() else " bool ")
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def dashboard_queries() -> dict[str, str]:
    """'panel title / refId' -> the panel's PromQL with the variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):  # a row has none
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[f"panel {panel['title']!r} / {target['refId']}"] = expr
    for variable in dashboard["templating"]["list"]:
        # label_values(M, L) lists the values of L on the series of M.
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: unexpected query {variable['query']}"
        selector = match.group(1)
        for name, value in GRAFANA_VARIABLES.items():
            selector = selector.replace(name, value)
        queries[f"variable ${variable['name']}"] = f"count by ({match.group(2)}) ({selector})"
    return queries


def alert_rules() -> dict[str, str]:
    """alert name -> expression."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {
        rule["alert"]: rule["expr"]
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


class PrometheusServer:
    """A Prometheus process on loopback that scrapes one target every second."""

    def __init__(self, target_port: int, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        assert PROMETHEUS is not None
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"prometheus exited; see {self.log_path}"
            try:
                return get(f"{self.url}/-/ready")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout_s, "prometheus to be ready", interval_s=0.2)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query; fails the test on a query error."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, doc = get_json(url)
        assert status == 200, f"{expr}: HTTP {status}: {doc.get('error')}"
        assert doc["status"] == "success", f"{expr}: {doc}"
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of a query, or None while it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class Feeder:
    """Produces records at a steady rate on its own thread; every 20th is not JSON.

    One good record in ``LABEL_EVERY`` gets its label in ``labels_topic``,
    ``LABEL_DELAY_S`` later, keyed like it (so on its partition).
    """

    def __init__(self, bootstrap_servers: str, topic: str, labels_topic: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._labels_topic = labels_topic
        self.produced: Produced = {}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            producer = KafkaProducer(
                bootstrap_servers=self._bootstrap_servers.split(","), acks="all", linger_ms=5
            )
        except BaseException as exc:
            self._error = exc
            return
        rng = random.Random(5)
        index = 0
        waiting: collections.deque[tuple[float, bytes, bytes]] = collections.deque()
        try:
            while not self._stop.wait(0.1):
                sent = []
                for _ in range(FEED_PER_TICK):
                    if index % BAD_EVERY == 0:
                        key, value = f"bad-{index}".encode(), BAD_VALUE
                    else:
                        made = make_transaction(rng)
                        key, value = made.key, made.value
                        if index % LABEL_EVERY == 1:
                            label = {"transaction_id": made.transaction_id}
                            label["label"] = int(bool(made.fraudulent))
                            due = time.time() + LABEL_DELAY_S
                            label["labelled_at"] = round(due * 1000)
                            waiting.append((due, key, orjson.dumps(label)))
                    sent.append((key, value, producer.send(self._topic, key=key, value=value)))
                    index += 1
                while waiting and waiting[0][0] <= time.time():
                    _due, key, label_value = waiting.popleft()
                    producer.send(self._labels_topic, key=key, value=label_value)
                producer.flush(timeout=10)
                for key, value, future in sent:
                    metadata = future.get(timeout=10)
                    self.produced[(metadata.partition, metadata.offset)] = (key, value)
        except BaseException as exc:
            self._error = exc
        finally:
            producer.close(timeout=5)

    def stop(self) -> Produced:
        """Stop feeding; returns every acknowledged record."""
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the feeder did not stop"
        if self._error is not None:
            raise self._error
        return self.produced


@dataclass
class Monitored:
    """The running pipeline, its feeder, and the Prometheus that scrapes it."""

    pipeline: Pipeline
    registry: CollectorRegistry
    topics: Topics
    feeder: Feeder
    prometheus: PrometheusServer
    metrics_url: str


@pytest.fixture(scope="module")
def monitored(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, oip_server: OipServer
) -> Iterator[Monitored]:
    topics = cluster.new_topics(partitions=2)
    challenger_topic = f"{topics.output}.challenger"
    labels_topic = f"{topics.input}.labels"
    ensure_topics(
        KafkaSettings(bootstrap_servers=cluster.bootstrap_servers),
        {challenger_topic: 1, labels_topic: topics.partitions},
    )
    # The model-health panels need a profile and a challenger (the demo model, biased).
    folder = tmp_path_factory.mktemp("model-health")
    profile = _demo_profile(folder)
    challenger = folder / "challenger.json"
    demo = json.loads(DEMO_MODEL.read_text(encoding="utf-8"))
    challenger.write_text(json.dumps({**demo, "bias": demo["bias"] + 1.5}), encoding="utf-8")
    settings = build_settings(
        {
            "kafka": cluster.kafka_section(topics),
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "shutdown": {"timeout_s": 20.0},
            "batch": {"max_records": 100},
            "monitoring": {"profile_path": str(profile), "window_records": 2000},
            # The State row and the state alerts need declared features: the demo model's
            # transactions_last_hour, counted from each card's records (keyed by card id).
            "state": {
                "features": [
                    {
                        "name": "transactions_last_hour",
                        "key": "card_id",
                        "agg": "count",
                        "window": "1h",
                    }
                ]
            },
            # The remote-model panels need a remote model: a second challenger on a real
            # MLServer, whose metadata names the demo features.
            "model": {"remote_url": oip_server.url},
            # The Model quality row needs labels: the feeder's, joined by transaction_id.
            "labels": {
                "topic": labels_topic,
                "id_field": "transaction_id",
                "time_field": "labelled_at",
            },
            "challenger": [
                {"name": "biased", "output_topic": challenger_topic, "path": str(challenger)},
                {"name": "served", "kind": "remote", "path": "demo", "outputs": "predict_proba"},
            ],
        },
        environ={},
    )
    registry = CollectorRegistry()
    pipeline = Pipeline(settings, registry=registry)
    prometheus: PrometheusServer | None = None
    feeder: Feeder | None = None
    try:
        pipeline.start()
        assert pipeline.wait_until_assigned(ASSIGN_TIMEOUT_S), "no partitions were assigned"
        port = pipeline.metrics_port()
        assert port
        prometheus = PrometheusServer(port, tmp_path_factory.mktemp("prometheus"))
        feeder = Feeder(cluster.bootstrap_servers, topics.input, labels_topic)
        prometheus.wait_ready()
        yield Monitored(pipeline, registry, topics, feeder, prometheus, f"http://127.0.0.1:{port}")
    finally:
        if feeder is not None:
            feeder.stop()
        if prometheus is not None:
            prometheus.stop()
        pipeline.stop(timeout_s=10)
        leaked = pykka.ActorRegistry.get_all()
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
        assert not leaked, f"actors still running after the pipeline stopped: {leaked}"


def _demo_profile(folder: Path) -> Path:
    """`streamer profile` of the demo model over 5000 demo transactions."""
    rng = random.Random(9)
    train = folder / "train.jsonl"
    train.write_bytes(b"".join(orjson.dumps(make_event(rng)) + b"\n" for _ in range(5000)))
    out = folder / "profile.json"
    done = subprocess.run(
        [sys.executable, "-m", "streamer", "profile", str(train), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def wait_for_data(prometheus: PrometheusServer, queries: dict[str, str]) -> None:
    """Poll until every query returns at least one series; name the ones that never do."""
    missing = dict(queries)
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while missing and time.monotonic() < deadline:
        for name, expr in list(missing.items()):
            if prometheus.query(expr):
                del missing[name]
        if missing:
            time.sleep(0.5)
    assert not missing, "these queries returned no data from the real server:\n" + "\n".join(
        f"  {name}: {expr}" for name, expr in missing.items()
    )


# --- tests -------------------------------------------------------------------


def test_with_bool_turns_only_the_comparisons_into_bool_comparisons() -> None:
    assert with_bool('up{job="a", x!="b"} == 0 or absent(up{job=~"a"})') == (
        'up{job="a", x!="b"} == bool 0 or absent(up{job=~"a"})'
    )
    assert with_bool("a > bool 1 and on (x) b<=2") == "a > bool 1 and on (x) b<= bool 2"


def test_every_dashboard_query_returns_data_from_the_real_server(monitored: Monitored) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    wait_for_data(monitored.prometheus, queries)


def test_every_alert_expression_runs_and_returns_data_with_its_comparisons_as_bool(
    monitored: Monitored,
) -> None:
    rules = alert_rules()
    assert len(rules) >= 5
    for expr in rules.values():
        monitored.prometheus.query(expr)  # valid as written (empty while not firing)
    wait_for_data(
        monitored.prometheus,
        {f"alert {name}": with_bool(expr) for name, expr in rules.items()},
    )


def test_the_server_evaluates_every_loaded_rule_without_error(monitored: Monitored) -> None:
    url = f"{monitored.prometheus.url}/api/v1/rules"

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in get_json(url)[1]["data"]["groups"] for r in g["rules"]]
        if rules and all(r["health"] != "unknown" for r in rules):
            return rules
        return None

    rules = wait_for(evaluated, DATA_TIMEOUT_S, "one evaluation of every rule", interval_s=0.5)
    assert {r["name"] for r in rules} == set(alert_rules())
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert not firing, f"alerts fire on a healthy pipeline: {firing}"


def test_the_counters_equal_the_records_actually_processed(monitored: Monitored) -> None:
    produced = monitored.feeder.stop()
    total = len(produced)
    bad = sum(1 for _key, value in produced.values() if value == BAD_VALUE)
    assert total > 0
    assert bad > 0
    wait_until_delivered(monitored.pipeline, monitored.topics.input, produced)
    # (metric, labels, value) as counted in the process.
    expected: list[tuple[str, dict[str, str], float]] = [
        ("streamer_records_consumed_total", {}, total),
        ("streamer_records_produced_total", {}, total - bad),
        ("streamer_dead_letters_total", {"reason": "invalid_json"}, bad),
        ("streamer_records_dropped_total", {}, 0),
        ("streamer_end_to_end_latency_seconds_count", {}, total),  # one per record
        ("streamer_batch_size_records_sum", {}, total),
    ]
    registry = monitored.registry
    # BatchDelivered follows BatchAcked: give the metrics actor a moment to apply it.
    wait_for(
        lambda: all(registry.get_sample_value(m, labels) == v for m, labels, v in expected),
        10,
        "the registry to count every delivered record",
    )
    dead_letters = [
        registry.get_sample_value("streamer_dead_letters_total", {"reason": r}) for r in REASONS
    ]
    assert sum(v or 0.0 for v in dead_letters) == bad
    assert registry.get_sample_value("streamer_batches_total") == registry.get_sample_value(
        "streamer_batch_size_records_count"
    )

    # The same numbers through the real scrape, once it has caught up; plus the
    # committed offsets (the end of every partition), no lag and nothing in flight.
    def promql(metric: str, labels: dict[str, str]) -> str:
        matchers = ", ".join(f'{k}="{v}"' for k, v in {"job": JOB, **labels}.items())
        return f"sum({metric}{{{matchers}}})"

    wanted = {promql(m, labels): float(v) for m, labels, v in expected}
    # The input's offsets (the consumer reads the labels topic too).
    input_topic = {"topic": monitored.topics.input}
    wanted[promql("streamer_committed_offset", input_topic)] = float(
        sum(end_offsets(produced).values())
    )
    wanted[promql("streamer_consumer_lag", input_topic)] = 0.0
    wanted[promql("streamer_in_flight_batches", {})] = 0.0
    seen: dict[str, float | None] = {}

    def scraped() -> bool:
        seen.update({expr: monitored.prometheus.value(expr) for expr in wanted})
        return seen == wanted

    deadline = time.monotonic() + 15
    while not scraped() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen == wanted


def test_healthz_and_readyz_answer_200_while_the_pipeline_runs(monitored: Monitored) -> None:
    status, health = get_json(f"{monitored.metrics_url}/healthz")
    assert status == 200, health
    assert health["status"] == "ok"
    assert health["dead_actors"] == []
    status, readiness = get_json(f"{monitored.metrics_url}/readyz")
    assert status == 200, readiness
    assert readiness["status"] == "ready"
    assert readiness["failing"] == []
    up = monitored.prometheus.value(f'up{{job="{JOB}"}}')
    assert up == 1.0


def test_healthz_and_readyz_answer_503_saying_what_is_wrong(cluster: Cluster) -> None:
    """A separate pipeline: a dead actor, then a stop request, then a stopped pipeline."""
    topics = cluster.new_topics(partitions=1)
    settings = cluster.settings(topics, metrics={"enabled": True, "host": "127.0.0.1", "port": 0})
    pipeline = Pipeline(settings, registry=CollectorRegistry())
    try:
        pipeline.start()
        assert pipeline.wait_until_assigned(ASSIGN_TIMEOUT_S)
        base = f"http://127.0.0.1:{pipeline.metrics_port()}"
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/readyz")[0] == 200

        # A stopped actor is not a crash: nothing restarts it, and liveness fails.
        pipeline.stage_refs(Stage.MODEL)[0].stop(block=True, timeout=10)
        status, health = get_json(f"{base}/healthz")
        assert status == 503
        assert health["status"] == "failing"
        assert health["dead_actors"] == ["model-0"]
        status, readiness = get_json(f"{base}/readyz")
        assert status == 503
        assert readiness["status"] == "not ready"
        assert "actors_alive" in readiness["failing"]

        # After SIGTERM the pipeline drains: not ready, so traffic and rollouts wait.
        pipeline.request_stop()
        status, readiness = get_json(f"{base}/readyz")
        assert status == 503
        assert "not_stopping" in readiness["failing"]
    finally:
        pipeline.stop(timeout_s=10)
    # The HTTP server stopped with the metrics actor; the probes still answer directly.
    with pytest.raises(urllib.error.URLError):
        DIRECT.open(f"{base}/healthz", timeout=HTTP_TIMEOUT_S)
    ok, details = pipeline.health()
    assert not ok
    assert "consumer" in details["dead_actors"]
    ok, details = pipeline.readiness()
    assert not ok
    assert {"actors_alive", "broker_connected", "not_stopping"} <= set(details["failing"])


def test_promtool_accepts_the_rules_their_unit_tests_and_the_compose_config() -> None:
    assert PROMTOOL is not None, "promtool ships in the same Debian package as prometheus"
    for args in (
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERT_TESTS)],
        ["check", "config", str(PROMETHEUS_CONFIG)],
    ):
        result = subprocess.run(
            [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


M1 = {"model": "m", "version": "1"}
C2 = {"challenger": "c", "version": "2", "champion_version": "1"}
# Two replicas' quality series: a's window holds 300 records of m 1, b's 100, c's 50
# (with no ROC AUC: undefined there).
QUALITY_INPUT = [
    *(
        ("streamer_model_quality_confusion", {"instance": i, **M1, "cell": c}, v)
        for i, cells in (("a", (6, 2, 4)), ("b", (2, 0, 0)))
        for c, v in zip(("tp", "fp", "fn"), cells, strict=True)
    ),
    ("streamer_model_quality", {"instance": "a", **M1, "metric": "roc_auc"}, 0.8),
    ("streamer_model_quality", {"instance": "b", **M1, "metric": "roc_auc"}, 0.5),
    ("streamer_model_quality_records", {"instance": "a", **M1}, 300),
    ("streamer_model_quality_records", {"instance": "b", **M1}, 100),
    ("streamer_model_quality_records", {"instance": "c", **M1}, 50),
    ("streamer_challenger_quality_delta", {"instance": "a", **C2, "metric": "roc_auc"}, 0.1),
    ("streamer_challenger_quality_delta", {"instance": "b", **C2, "metric": "roc_auc"}, -0.2),
    ("streamer_challenger_quality_delta", {"instance": "a", **C2, "metric": "recall"}, 0.5),
    ("streamer_challenger_quality_records", {"instance": "a", **C2}, 300),
    ("streamer_challenger_quality_records", {"instance": "b", **C2}, 100),
    ("streamer_model_calibration", {"instance": "a", **M1, "bucket": "0.1", "stat": "records"}, 30),
    (
        "streamer_model_calibration",
        {"instance": "a", **M1, "bucket": "0.1", "stat": "observed_rate"},
        0.1,
    ),
    ("streamer_model_calibration", {"instance": "b", **M1, "bucket": "0.1", "stat": "records"}, 10),
    (
        "streamer_model_calibration",
        {"instance": "b", **M1, "bucket": "0.1", "stat": "observed_rate"},
        0.5,
    ),
    ("streamer_model_calibration", {"instance": "b", **M1, "bucket": "0.2", "stat": "records"}, 0),
]
# (panel, refId) -> the samples its query must give over both replicas.
QUALITY_PANEL_VALUES = {
    # Summed cells: tp 8, fp 2, fn 4.
    ("Precision, recall and F1", "A"): [(M1, 8 / 10)],
    ("Precision, recall and F1", "B"): [(M1, 8 / 12)],
    ("Precision, recall and F1", "C"): [(M1, 16 / 22)],
    # Weighted by records, over the replicas whose metric is defined (not c).
    ("ROC AUC and PR AUC", "A"): [(M1, (0.8 * 300 + 0.5 * 100) / 400)],
    ("Challenger minus champion", "A"): [
        ({**C2, "metric": "roc_auc"}, (0.1 * 300 - 0.2 * 100) / 400),
        ({**C2, "metric": "recall"}, 0.5),  # defined on a only
    ],
    ("Calibration: observed vs predicted", "B"): [
        ({**M1, "bucket": "0.1"}, (0.1 * 30 + 0.5 * 10) / 40)
    ],
}


def test_the_model_quality_panels_combine_the_replicas_as_documented(tmp_path: Path) -> None:
    """The panels' PromQL on two replicas' series: summed cells, AUCs weighted by records."""
    assert PROMTOOL is not None, "promtool ships in the same Debian package as prometheus"
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    rules, tests = [], []
    for (title, ref), samples in QUALITY_PANEL_VALUES.items():
        (panel,) = [p for p in dashboard["panels"] if p["title"] == title]
        (target,) = [t for t in panel["targets"] if t["refId"] == ref]
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        record = f"panel:{panel['id']}:{ref}"
        rules.append({"record": record, "expr": expr})
        exp = [{"labels": _series(record, labels), "value": value} for labels, value in samples]
        tests.append({"expr": record, "eval_time": "2m", "exp_samples": exp})
    (tmp_path / "panels.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}), encoding="utf-8"
    )
    suite = {
        "rule_files": ["panels.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": _series(name, {"job": JOB, **labels}), "values": f"{value}x3"}
                    for name, labels, value in QUALITY_INPUT
                ],
                "promql_expr_test": tests,
            }
        ],
    }
    (tmp_path / "panels_test.yml").write_text(yaml.safe_dump(suite), encoding="utf-8")
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / "panels_test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"

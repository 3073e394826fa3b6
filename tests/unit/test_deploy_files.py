"""Static checks of the deployment files: no network, no Docker (the docs: test_docs.py)."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from streamer.actors.metrics import (
    ChallengerCollector,
    DriftCollector,
    PipelineMetrics,
    live_quality,
)
from streamer.actors.routing import ChallengerLink
from streamer.clients.oip import client_for
from streamer.clients.oip_metrics import RemoteCollector
from streamer.core.dead_letters import LATE, STATE_REASONS
from streamer.core.demo_data import make_event
from streamer.core.labels.ledger import Joined, LedgerCounts, LedgerLabel, ModelScore, Prediction
from streamer.core.models import ModelOptions, RemoteOptions, load_model
from streamer.core.monitoring.agreement import Agreement, PendingSlots
from streamer.core.monitoring.drift import DriftMonitor
from streamer.core.monitoring.profile import Binned, Profile
from streamer.messages import ConsumerProgress, LabelsJoined
from streamer.settings import SECTIONS, LabelsSettings, Settings, build_settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "deploy" / "streamer.toml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "alerts_test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamer.json"
GRAFANA_DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = GRAFANA / "provisioning" / "dashboards" / "streamer.yml"
K8S = ROOT / "deploy" / "k8s"

# SIGTERM to exit is at most shutdown.timeout_s + 2 s (docs/delivery.md, "The bound");
# the shipped grace periods add a margin: timeout_s + 5 s.
SHUTDOWN_EXIT_SLACK_S = 5.0


def _load_yaml(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path.name} must hold a YAML mapping"
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    services = compose.get("services")
    assert isinstance(services, dict)
    return services


@pytest.fixture(scope="module")
def example_settings() -> Settings:
    return load_settings(EXAMPLE_CONFIG, environ={})


@pytest.fixture(scope="module")
def scrape_configs() -> list[dict[str, Any]]:
    configs = _load_yaml(PROMETHEUS)["scrape_configs"]
    assert configs
    return configs


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition (the short list form means service_started)."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount; named volumes are skipped."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/", "~")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def _instruction(name: str) -> list[str]:
    return [args for keyword, args in _dockerfile_instructions() if keyword == name]


def _created_topics(topics_service: dict[str, Any]) -> dict[str, int]:
    """Topic name -> partitions, from the kafka-topics.sh calls of the topics service."""
    script = " ".join(_command(topics_service))
    created = {}
    for call in script.split("kafka-topics.sh")[1:]:
        words = shlex.split(call.split(";")[0])
        assert "--create" in words, f"kafka-topics.sh call without --create: {call!r}"
        assert "--if-not-exists" in words, "topic creation must be repeatable"
        created[words[words.index("--topic") + 1]] = int(words[words.index("--partitions") + 1])
    return created


class TestCompose:
    def test_compose_file_defines_kafka_topics_generator_streamer_prometheus_and_grafana(
        self, services: dict[str, Any]
    ) -> None:
        assert {"kafka", "topics", "generator", "streamer", "prometheus", "grafana"} <= set(
            services
        )

    def test_kafka_runs_in_kraft_mode_as_broker_and_controller(
        self, services: dict[str, Any]
    ) -> None:
        kafka = services["kafka"]
        assert kafka["image"].startswith("apache/kafka:")
        env = _environment(kafka)
        roles = {role.strip() for role in env["KAFKA_PROCESS_ROLES"].split(",")}
        assert roles == {"broker", "controller"}
        assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
        assert env["CLUSTER_ID"], "the apache/kafka image formats KRaft storage with CLUSTER_ID"

    def test_nothing_in_the_compose_file_mentions_zookeeper(self) -> None:
        assert "zookeeper" not in COMPOSE.read_text(encoding="utf-8").lower()

    def test_kafka_does_not_create_topics_on_its_own(self, services: dict[str, Any]) -> None:
        env = _environment(services["kafka"])
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"

    def test_single_node_kafka_uses_replication_factor_one_for_internal_topics(
        self, services: dict[str, Any]
    ) -> None:
        env = _environment(services["kafka"])
        for key in (
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        ):
            assert env[key] == "1", key

    def test_kafka_advertises_the_address_the_streamer_connects_to(
        self, services: dict[str, Any]
    ) -> None:
        advertised = _environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
        bootstrap = _environment(services["streamer"])["STREAMER_KAFKA__BOOTSTRAP_SERVERS"]
        assert bootstrap == "kafka:9092"
        assert f"://{bootstrap}" in advertised

    def test_kafka_has_a_healthcheck_that_the_topics_job_waits_for(
        self, services: dict[str, Any]
    ) -> None:
        assert services["kafka"]["healthcheck"]["test"]
        assert _depends_on(services["topics"]) == {"kafka": "service_healthy"}

    def test_topics_job_uses_the_kafka_image(self, services: dict[str, Any]) -> None:
        assert services["topics"]["image"] == services["kafka"]["image"]

    def test_topics_job_creates_exactly_the_topics_of_the_example_config(
        self, services: dict[str, Any], example_settings: Settings
    ) -> None:
        kafka = example_settings.kafka
        created = _created_topics(services["topics"])
        assert set(created) == {
            kafka.input_topic,
            kafka.output_topic,
            kafka.dead_letter_topic_name,
        }
        assert created[kafka.input_topic] == 4
        assert created[kafka.output_topic] == 4
        assert created[kafka.dead_letter_topic_name] == 1

    def test_streamer_runs_two_replicas(self, services: dict[str, Any]) -> None:
        assert services["streamer"]["deploy"]["replicas"] == 2

    def test_streamer_and_generator_start_after_the_topics_exist(
        self, services: dict[str, Any]
    ) -> None:
        for name in ("streamer", "generator"):
            assert _depends_on(services[name]) == {"topics": "service_completed_successfully"}

    def test_streamer_reads_the_mounted_example_config(self, services: dict[str, Any]) -> None:
        streamer = services["streamer"]
        command = _command(streamer)
        config_path = command[command.index("--config") + 1]
        mounts = {target: source for source, target in _bind_mounts(streamer)}
        assert mounts[config_path] == "./deploy/streamer.toml"

    def test_streamer_grace_period_covers_the_measured_shutdown_bound(
        self, services: dict[str, Any], example_settings: Settings
    ) -> None:
        grace = services["streamer"]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) >= example_settings.shutdown.timeout_s + SHUTDOWN_EXIT_SLACK_S

    def test_generator_produces_forever_into_the_input_topic(
        self, services: dict[str, Any], example_settings: Settings
    ) -> None:
        command = _command(services["generator"])
        assert command[0] == "produce-demo"
        assert command[command.index("--topic") + 1] == example_settings.kafka.input_topic
        assert command[command.index("--bootstrap-servers") + 1] == "kafka:9092"
        assert command[command.index("--count") + 1] == "0"

    def test_generator_disables_the_image_healthcheck_because_it_serves_no_metrics(
        self, services: dict[str, Any]
    ) -> None:
        assert services["generator"]["healthcheck"]["disable"] is True

    def test_every_mounted_host_path_exists(self, services: dict[str, Any]) -> None:
        mounts = [
            (name, source) for name, svc in services.items() for source, _ in _bind_mounts(svc)
        ]
        assert mounts, "expected at least the config and prometheus mounts"
        for name, source in mounts:
            assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"

    def test_every_named_volume_is_declared(self, compose: dict[str, Any]) -> None:
        declared = set(compose.get("volumes") or {})
        for svc in compose["services"].values():
            for volume in svc.get("volumes") or []:
                if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                    assert volume.split(":")[0] in declared, volume

    def test_every_build_context_and_dockerfile_exists(self, services: dict[str, Any]) -> None:
        builds = {name: svc["build"] for name, svc in services.items() if "build" in svc}
        assert {"generator", "streamer"} <= set(builds)
        for name, build in builds.items():
            spec = {"context": build} if isinstance(build, str) else build
            context = ROOT / spec.get("context", ".")
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            dockerfile = context / spec.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"

    def test_prometheus_mounts_the_scrape_config_and_publishes_9090(
        self, services: dict[str, Any]
    ) -> None:
        prometheus = services["prometheus"]
        assert prometheus["image"].startswith("prom/prometheus")
        mounts = dict(_bind_mounts(prometheus))
        assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
        assert any(str(port).startswith("9090:") for port in prometheus["ports"])

    def test_prometheus_mounts_every_rule_file_that_its_config_names(
        self, services: dict[str, Any]
    ) -> None:
        targets = {target: source for source, target in _bind_mounts(services["prometheus"])}
        rule_files = _load_yaml(PROMETHEUS)["rule_files"]
        assert rule_files
        for name in rule_files:
            # Relative rule files are read from the directory of prometheus.yml.
            path = name if name.startswith("/") else f"/etc/prometheus/{name}"
            assert path in targets, f"prometheus.yml names {name}, which is not mounted"
        assert targets["/etc/prometheus/alerts.yml"] == "./deploy/alerts.yml"

    def test_grafana_mounts_its_provisioning_and_the_directory_its_provider_reads(
        self, services: dict[str, Any]
    ) -> None:
        grafana = services["grafana"]
        assert grafana["image"].startswith("grafana/grafana:")
        mounts = dict(_bind_mounts(grafana))
        assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
        (provider,) = _load_yaml(GRAFANA_DASHBOARDS)["providers"]
        assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
        home = _environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
        assert any(str(port).startswith("3000:") for port in grafana["ports"])
        assert "prometheus" in _depends_on(grafana)

    def test_grafana_reads_the_compose_prometheus_at_its_scrape_interval(
        self, services: dict[str, Any]
    ) -> None:
        (datasource,) = _load_yaml(GRAFANA_DATASOURCES)["datasources"]
        assert datasource["type"] == "prometheus"
        host_port = datasource["url"].removeprefix("http://")
        host, _, port = host_port.partition(":")
        assert host in services
        assert port == "9090"
        scrape_interval = _load_yaml(PROMETHEUS)["global"]["scrape_interval"]
        # Grafana's $__rate_interval is at least four times this interval.
        assert datasource["jsonData"]["timeInterval"] == scrape_interval


def test_example_config_passes_validation(example_settings: Settings) -> None:
    assert example_settings.kafka.input_topic
    assert example_settings.kafka.output_topic


def _uncommented_state_example(config: str) -> str:
    """The commented-out ``[[state.features]]`` table of a configuration, uncommented."""
    lines = config.splitlines()
    start = lines.index("# [[state.features]]")
    example = []
    for line in lines[start:]:
        if not re.match(r"# (\[\[state\.features\]\]|\w+ = )", line):
            break
        example.append(line.removeprefix("# "))
    return "\n".join(example)


def test_the_commented_state_example_declares_a_valid_feature_of_the_demo_events() -> None:
    (config_map,) = _k8s_documents("ConfigMap")
    for text in (EXAMPLE_CONFIG.read_text(encoding="utf-8"), config_map["data"]["streamer.toml"]):
        example = _uncommented_state_example(text)
        settings = build_settings(tomllib.loads(f"{text}\n{example}\n"), environ={})
        (feature,) = settings.state_features
        # The demo model's own input, from the field the demo generator keys its records by.
        assert feature.name == "transactions_last_hour"
        assert feature.name in load_model("linear", "", ModelOptions()).spec.names
        assert feature.key == "card_id"
        assert "card_id" in make_event(random.Random(0))


def test_example_config_sets_every_option_explicitly() -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for option in dataclasses.fields(cls):
            assert re.search(rf"^{option.name} = ", text, re.MULTILINE), f"{section}.{option.name}"


class TestPrometheus:
    def test_every_target_names_a_compose_service(
        self, scrape_configs: list[dict[str, Any]], services: dict[str, Any]
    ) -> None:
        hosts = []
        for job in scrape_configs:
            for static in job.get("static_configs", []):
                hosts += [target.rsplit(":", 1)[0] for target in static["targets"]]
            for dns in job.get("dns_sd_configs", []):
                hosts += dns["names"]
        assert hosts
        for host in hosts:
            assert host in services, f"prometheus scrapes {host}, which is not a compose service"

    def test_every_streamer_replica_is_scraped_on_the_metrics_port_every_5s(
        self, scrape_configs: list[dict[str, Any]], example_settings: Settings
    ) -> None:
        (job,) = [job for job in scrape_configs if job["job_name"] == "streamer"]
        (dns,) = job["dns_sd_configs"]
        assert dns["names"] == ["streamer"]
        assert dns["type"] == "A"  # one address per replica
        assert dns["port"] == example_settings.metrics.port
        interval = job.get("scrape_interval", _load_yaml(PROMETHEUS)["global"]["scrape_interval"])
        assert interval == "5s"


class TestDockerfile:
    def test_it_starts_from_python_3_11_slim(self) -> None:
        assert _instruction("FROM") == ["python:3.11-slim"]

    def test_it_runs_as_a_user_that_is_not_root(self) -> None:
        users = _instruction("USER")
        assert users
        user = users[-1].split(":")[0]
        assert user not in ("root", "0")

    def test_it_has_a_healthcheck_on_the_liveness_endpoint_without_curl(self) -> None:
        (check,) = _instruction("HEALTHCHECK")
        assert "urllib" in check
        assert "/healthz" in check
        assert "9400" in check
        assert "curl" not in check

    def test_its_entrypoint_is_the_streamer_command(self) -> None:
        (entrypoint,) = _instruction("ENTRYPOINT")
        assert json.loads(entrypoint) == ["streamer"]

    def test_its_default_command_runs_the_config_at_the_compose_mount_point(self) -> None:
        (cmd,) = _instruction("CMD")
        assert json.loads(cmd) == ["run", "--config", "/etc/streamer/streamer.toml"]

    def test_it_exposes_the_metrics_port(self) -> None:
        assert _instruction("EXPOSE") == ["9400"]

    def test_every_file_it_copies_exists_in_the_build_context(self) -> None:
        copies = _instruction("COPY")
        assert copies
        for args in copies:
            words = [w for w in args.split() if not w.startswith("--")]
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# --- monitoring: metric names, alert rules, the Grafana dashboard ---------------

# Series that Prometheus itself adds to every scrape.
SCRAPE_SERIES = {"up"}
_METRIC_NAME = re.compile(r"\b(streamer_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?!\s*\()")
REQUIRED_ALERTS = {
    "StreamerDown",  # the daemon down
    "StreamerStalled",  # lag rising while throughput is zero
    "StreamerLagHigh",  # lag above a threshold
    "StreamerDeadLetterRateHigh",  # the dead-letter rate
    "StreamerActorRestarting",  # the actor restart rate
    "StreamerStateRestoreSlow",  # a partition's state restore that takes too long
    "StreamerModelQualityLow",  # a quality metric below a floor over enough labels
    "StreamerChallengerBetter",  # a challenger better than the champion over enough labels
}
REQUIRED_PANELS = {
    "Throughput in and out",
    "Consumer lag per partition",
    "End-to-end latency p50 / p95 / p99",
    "Dead letters by reason",
    "Actor failures and restarts",
    "In flight",
    "Model version",
    "Keys in state per partition",
    "State bytes per partition",
    "Restore progress",
    "Last restore duration",
    "Changelog writes",
    "Late and state dead letters",
    "Precision, recall and F1",
    "ROC AUC and PR AUC",
    "Challenger minus champion",
    "Calibration: observed vs predicted",
    "Label latency",
    "Labels by result",
    "Prediction ledger",
}
# The live state path's series (docs/state.md, "Metrics and alerts").
STATE_SERIES_PREFIX = "streamer_state_"
# A dashboard query selects the variables first, then, optionally, labels of its own.
_DASHBOARD_SELECTOR = re.compile(r'job=~"\$job", instance=~"\$instance"(, \w+=~?"[^"$]*")*')


@pytest.fixture(scope="module")
def exposed_series() -> set[str]:
    """Every sample name the pipeline exposes, plus what Prometheus adds."""
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    # The per-partition series appear with the first assignment.
    metrics.apply(ConsumerProgress(0, 0, {("t", 0): 1}, {("t", 0): 1}, 0))
    # The model-health series, with a profile and a challenger that have seen one batch.
    edges = np.array([0.0, 1.0])
    binned = Binned(edges, np.array([1.0]))
    monitor = DriftMonitor(Profile(("x",), (binned,), binned, "score", "m", "1", 1))
    monitor.observe(np.array([[0.5]]), np.array([0]), [], np.array([0.5]), now=0.0)
    registry.register(DriftCollector(monitor))
    agreement = Agreement(0.5)
    agreement.scored(np.array([0.2]), np.array([0.7]), 0.01)
    model = load_model("linear", "", ModelOptions(version="2"))
    link = ChallengerLink("c", model, None, PendingSlots(1), agreement)  # type: ignore[arg-type]
    registry.register(ChallengerCollector([link]))
    # The model-quality series, with one labelled record that a challenger scored too.
    metrics.watch_labels(live_quality(LabelsSettings(topic="labels"), 0.5))
    scores = (ModelScore("m", "1", 0.7, 0), (ModelScore("c", "2", 0.4, 1),))
    labelled = Prediction(0, scores[0], scores[1], LedgerLabel(1.0, 5_000_000))
    metrics.apply(LabelsJoined(0, (Joined(b"id", labelled),), LedgerCounts(joined=1), held=1))
    # The remote-model series, with one client (no request is sent).
    client_for(RemoteOptions(url="http://127.0.0.1:9"), "m")
    registry.register(RemoteCollector())
    names = set()
    for metric in registry.collect():
        # A labelled series that nothing has set yet is declared all the same.
        names.add(metric.name + {"counter": "_total"}.get(metric.type, ""))
        names.update(sample.name for sample in metric.samples)
    return names | SCRAPE_SERIES


def _assert_exposed(reader: str, names: list[str], exposed: set[str]) -> None:
    """Every name is exposed; the state series are checked by their own test."""
    for name in names:
        if not name.startswith(STATE_SERIES_PREFIX):
            assert name in exposed, f"{reader} reads {name}, which nobody exposes"


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = _load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


class TestAlerts:
    def test_the_rules_cover_down_stalled_lag_dead_letters_and_restarts(
        self, rules: list[dict[str, Any]]
    ) -> None:
        assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS

    def test_every_rule_has_a_severity_a_summary_and_a_description(
        self, rules: list[dict[str, Any]]
    ) -> None:
        for rule in rules:
            assert rule["expr"].strip(), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"].strip(), rule["alert"]
            assert rule["annotations"]["description"].strip(), rule["alert"]

    def test_alert_names_are_unique(self, rules: list[dict[str, Any]]) -> None:
        names = [rule["alert"] for rule in rules]
        assert len(names) == len(set(names))

    def test_every_metric_a_rule_reads_is_exposed(
        self, rules: list[dict[str, Any]], exposed_series: set[str]
    ) -> None:
        for rule in rules:
            _assert_exposed(rule["alert"], _METRIC_NAME.findall(rule["expr"]), exposed_series)

    def test_rules_on_scrape_series_select_the_streamer_job_of_prometheus_yml(
        self, rules: list[dict[str, Any]], scrape_configs: list[dict[str, Any]]
    ) -> None:
        jobs = {job["job_name"] for job in scrape_configs}
        for rule in rules:
            expr = rule["expr"]
            if re.search(r"\b(up|process_\w+)\{", expr):
                for job in re.findall(r'job="([^"]+)"', expr):
                    assert job in jobs, f"{rule['alert']} selects job {job!r}"
                assert 'job="streamer"' in expr, rule["alert"]

    def test_every_alert_has_a_promtool_unit_test(self, rules: list[dict[str, Any]]) -> None:
        tests = _load_yaml(ALERT_TESTS)
        assert tests["rule_files"] == [ALERTS.name]
        tested = {
            case["alertname"]
            for test in tests["tests"]
            for case in test.get("alert_rule_test", [])
            if case.get("exp_alerts")
        }
        assert {rule["alert"] for rule in rules} == tested

    def test_the_kubernetes_prometheus_rule_holds_the_same_groups(self) -> None:
        (rule,) = _k8s_documents("PrometheusRule")
        assert rule["spec"] == _load_yaml(ALERTS)


class TestDashboard:
    def test_it_has_the_panels_the_operators_asked_for(self, dashboard: dict[str, Any]) -> None:
        assert {panel["title"] for panel in dashboard["panels"]} >= REQUIRED_PANELS

    def test_every_panel_has_a_query_on_the_provisioned_datasource(
        self, dashboard: dict[str, Any]
    ) -> None:
        (datasource,) = _load_yaml(GRAFANA_DATASOURCES)["datasources"]
        for panel in dashboard["panels"]:
            if panel["type"] == "row":  # a row only heads the panels below it
                continue
            assert panel["targets"], f"panel {panel['title']!r} has no query"
            assert panel["description"].strip(), f"panel {panel['title']!r} has no description"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].strip(), f"panel {panel['title']!r}: empty query"
                assert target["refId"], panel["title"]
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]

    def test_panel_ids_and_titles_are_unique(self, dashboard: dict[str, Any]) -> None:
        ids = [panel["id"] for panel in dashboard["panels"]]
        titles = [panel["title"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        assert len(titles) == len(set(titles))

    def test_panels_fit_the_grid_without_overlapping(self, dashboard: dict[str, Any]) -> None:
        taken: dict[tuple[int, int], str] = {}
        for panel in dashboard["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                    taken[(x, y)] = panel["title"]

    def test_every_metric_a_panel_reads_is_exposed(
        self, dashboard: dict[str, Any], exposed_series: set[str]
    ) -> None:
        for title, expr in _panel_exprs(dashboard):
            names = _METRIC_NAME.findall(expr)
            assert names, f"panel {title!r} reads no metric: {expr}"
            _assert_exposed(f"panel {title!r}", names, exposed_series)

    def test_every_state_series_the_panels_and_rules_read_is_exposed(
        self,
        dashboard: dict[str, Any],
        rules: list[dict[str, Any]],
        exposed_series: set[str],
    ) -> None:
        exprs = [expr for _, expr in _panel_exprs(dashboard)] + [rule["expr"] for rule in rules]
        read = {
            name
            for expr in exprs
            for name in _METRIC_NAME.findall(expr)
            if name.startswith(STATE_SERIES_PREFIX)
        }
        assert read >= {
            "streamer_state_keys",
            "streamer_state_bytes",
            "streamer_state_restore_records_total",
            "streamer_state_restore_seconds",
            "streamer_state_restoring",
            "streamer_state_changelog_records_total",
        }
        if not any(name.startswith(STATE_SERIES_PREFIX) for name in exposed_series):
            pytest.skip("the pipeline declares no state series: `streamer run` computes no state")
        assert read <= exposed_series, f"nobody exposes {sorted(read - exposed_series)}"

    def test_the_late_records_panel_and_alert_read_the_late_dead_letters(
        self, dashboard: dict[str, Any], rules: list[dict[str, Any]]
    ) -> None:
        selector = 'job=~"$job", instance=~"$instance"'
        (panel,) = [p for p in dashboard["panels"] if p["title"] == "Late and state dead letters"]
        late, others = (target["expr"] for target in panel["targets"])
        assert f'streamer_dead_letters_total{{{selector}, reason="{LATE}"}}' in late
        (alternatives,) = re.findall(r'reason=~"([^"]*)"', others)
        assert set(alternatives.split("|")) == set(STATE_REASONS) - {LATE}
        (rule,) = [r for r in rules if r["alert"] == "StreamerLateRecords"]
        assert f'streamer_dead_letters_total{{reason="{LATE}"}}' in rule["expr"]

    def test_every_query_follows_the_job_and_replica_selectors(
        self, dashboard: dict[str, Any]
    ) -> None:
        for title, expr in _panel_exprs(dashboard):
            selectors = re.findall(r"\b\w+\{([^}]*)\}", expr)
            assert selectors, f"panel {title!r}: {expr}"
            for selector in selectors:
                assert _DASHBOARD_SELECTOR.fullmatch(selector), f"{title}: {expr}"

    def test_every_variable_it_uses_is_defined(self, dashboard: dict[str, Any]) -> None:
        defined = {variable["name"] for variable in dashboard["templating"]["list"]}
        text = DASHBOARD.read_text(encoding="utf-8")
        for name in re.findall(r"\$(\w+)", text):
            assert name.startswith("__") or name in defined, f"${name} is not defined"

    def test_the_provider_serves_the_dashboard_with_a_stable_uid(
        self, dashboard: dict[str, Any]
    ) -> None:
        assert dashboard["uid"] == "streamer"
        assert "id" not in dashboard or dashboard["id"] is None


class TestKubernetes:
    def test_every_resource_of_the_kustomization_exists_and_parses(self) -> None:
        kustomization = _load_yaml(K8S / "kustomization.yaml")
        assert kustomization["kind"] == "Kustomization"
        on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
        assert set(kustomization["resources"]) == on_disk
        for doc in _k8s_documents():
            assert doc["apiVersion"]
            assert doc["kind"]
            assert doc["metadata"]["name"]

    def test_the_config_map_holds_a_valid_configuration(self, k8s_settings: Settings) -> None:
        assert k8s_settings.metrics.enabled
        assert k8s_settings.metrics.host == "0.0.0.0"

    def test_liveness_and_readiness_probe_the_health_endpoints_on_the_metrics_port(
        self, k8s_container: dict[str, Any], k8s_settings: Settings
    ) -> None:
        ports = {port["name"]: port["containerPort"] for port in k8s_container["ports"]}
        assert ports["metrics"] == k8s_settings.metrics.port
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            get = k8s_container[probe]["httpGet"]
            assert (get["path"], get["port"]) == (path, "metrics"), probe

    def test_the_container_has_requests_and_limits(self, k8s_container: dict[str, Any]) -> None:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(k8s_container["resources"][kind]), kind

    def test_it_runs_as_the_image_user_with_a_read_only_root(
        self, k8s_pod: dict[str, Any], k8s_container: dict[str, Any]
    ) -> None:
        uid = int(_instruction("USER")[-1].split(":")[0])
        assert k8s_pod["securityContext"]["runAsNonRoot"] is True
        assert k8s_pod["securityContext"]["runAsUser"] == uid
        assert k8s_container["securityContext"]["readOnlyRootFilesystem"] is True
        # The image's WORKDIR must stay writable.
        (workdir,) = _instruction("WORKDIR")
        assert workdir in {mount["mountPath"] for mount in k8s_container["volumeMounts"]}

    def test_the_grace_period_covers_the_measured_shutdown_bound(
        self, k8s_pod: dict[str, Any], k8s_settings: Settings
    ) -> None:
        grace = k8s_pod["terminationGracePeriodSeconds"]
        assert grace >= k8s_settings.shutdown.timeout_s + SHUTDOWN_EXIT_SLACK_S

    def test_it_runs_the_mounted_config_map(
        self, k8s_pod: dict[str, Any], k8s_container: dict[str, Any]
    ) -> None:
        args = k8s_container["args"]
        config_path = Path(args[args.index("--config") + 1])
        (config_map,) = _k8s_documents("ConfigMap")
        volumes = {v["name"]: v for v in k8s_pod["volumes"]}
        (mount,) = [
            m for m in k8s_container["volumeMounts"] if m["mountPath"] == str(config_path.parent)
        ]
        assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
        assert config_path.name in config_map["data"]

    def test_the_state_dir_is_a_writable_volume_of_the_pod(
        self, k8s_pod: dict[str, Any], k8s_container: dict[str, Any], k8s_settings: Settings
    ) -> None:
        state_dir = k8s_settings.state.dir
        assert state_dir.startswith("/")
        (mount,) = [m for m in k8s_container["volumeMounts"] if m["mountPath"] == state_dir]
        assert not mount.get("readOnly", False)
        volumes = {v["name"]: v for v in k8s_pod["volumes"]}
        # The changelog restores what an emptyDir loses; a claim keeps it.
        assert {"emptyDir", "persistentVolumeClaim"} & set(volumes[mount["name"]])

    def test_the_password_comes_from_a_secret(self, k8s_container: dict[str, Any]) -> None:
        env = {item["name"]: item for item in k8s_container["env"]}
        assert "secretKeyRef" in env["STREAMER_KAFKA__SASL_PASSWORD"]["valueFrom"]

    def test_pods_are_scraped_by_annotations_or_the_pod_monitor(
        self, k8s_pod_template: dict[str, Any], k8s_container: dict[str, Any]
    ) -> None:
        annotations = k8s_pod_template["metadata"]["annotations"]
        ports = {port["name"]: port["containerPort"] for port in k8s_container["ports"]}
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(ports["metrics"])
        assert annotations["prometheus.io/path"] == "/metrics"
        (monitor,) = _k8s_documents("PodMonitor")
        labels = k8s_pod_template["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        # The alert rules select job="streamer".
        assert labels[monitor["spec"]["jobLabel"]] == "streamer"

    def test_keda_scales_the_deployment_on_the_lag_of_its_group_and_topic(
        self, k8s_settings: Settings, services: dict[str, Any]
    ) -> None:
        (deployment,) = _k8s_documents("Deployment")
        (scaled,) = _k8s_documents("ScaledObject")
        assert scaled["apiVersion"].startswith("keda.sh/")
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["topic"] == k8s_settings.kafka.input_topic
        assert meta["consumerGroup"] == k8s_settings.kafka.group_id
        assert int(meta["lagThreshold"]) > 0
        # Replicas beyond the input partitions would stay idle.
        partitions = _created_topics(services["topics"])[k8s_settings.kafka.input_topic]
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        assert scaled["spec"]["maxReplicaCount"] <= partitions


def _k8s_documents(kind: str | None = None) -> list[dict[str, Any]]:
    docs = []
    for name in _load_yaml(K8S / "kustomization.yaml")["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]
    return [d for d in docs if kind is None or d["kind"] == kind]


@pytest.fixture(scope="module")
def k8s_pod_template() -> dict[str, Any]:
    (deployment,) = _k8s_documents("Deployment")
    template: dict[str, Any] = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        template["metadata"]["labels"].items()
    )
    return template


@pytest.fixture(scope="module")
def k8s_pod(k8s_pod_template: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = k8s_pod_template["spec"]
    return spec


@pytest.fixture(scope="module")
def k8s_container(k8s_pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = k8s_pod["containers"]
    assert isinstance(container, dict)
    return container


@pytest.fixture(scope="module")
def k8s_settings() -> Settings:
    (config_map,) = _k8s_documents("ConfigMap")
    return build_settings(tomllib.loads(config_map["data"]["streamer.toml"]), environ={})

"""Static checks of the deployment files and the README: no network, no Docker."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streamer.actors.metrics import PipelineMetrics
from streamer.cli import cmd_config_reference
from streamer.core.features import REASONS
from streamer.settings import SECTIONS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "deploy" / "streamer.toml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
README = ROOT / "README.md"


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


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


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
    def test_compose_file_defines_kafka_topics_generator_streamer_and_prometheus(
        self, services: dict[str, Any]
    ) -> None:
        assert {"kafka", "topics", "generator", "streamer", "prometheus"} <= set(services)

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

    def test_streamer_grace_period_is_longer_than_the_shutdown_budget(
        self, services: dict[str, Any], example_settings: Settings
    ) -> None:
        grace = services["streamer"]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) > example_settings.shutdown.timeout_s

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


def test_example_config_passes_validation(example_settings: Settings) -> None:
    assert example_settings.kafka.input_topic
    assert example_settings.kafka.output_topic


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

    def test_it_has_a_healthcheck_on_the_metrics_endpoint_without_curl(self) -> None:
        (check,) = _instruction("HEALTHCHECK")
        assert "urllib" in check
        assert "/metrics" in check
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


class TestReadme:
    @pytest.mark.parametrize(
        ("section", "key"),
        [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)],
    )
    def test_config_reference_mentions_every_option(
        self, readme: str, section: str, key: str
    ) -> None:
        start = readme.index(f"**[{section}]**")
        end = readme.find("**[", start + 1)
        table = readme[start : end if end != -1 else len(readme)]
        assert f"| `{key}` |" in table, f"README's [{section}] table lacks {key}"

    def test_config_reference_is_the_current_output_of_config_reference(
        self, readme: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cmd_config_reference(argparse.Namespace(markdown=True)) == 0
        reference = capsys.readouterr().out.strip()
        assert reference in readme, (
            "README's reference table is stale: paste the output of "
            "`streamer config-reference --markdown` under 'Reference'"
        )

    def test_it_lists_every_dead_letter_reason(self, readme: str) -> None:
        for reason in REASONS:
            assert f"`{reason}`" in readme, reason

    def test_it_lists_every_metric(self, readme: str) -> None:
        registry = CollectorRegistry()
        PipelineMetrics(registry)
        for metric in registry.collect():
            suffix = {"counter": "_total", "info": "_info"}.get(metric.type, "")
            assert f"`{metric.name}{suffix}`" in readme, metric.name

    def test_every_file_it_links_to_exists(self, readme: str) -> None:
        for target in re.findall(r"\]\(([^)#:]+)\)", readme):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"

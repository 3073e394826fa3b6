"""What the operator is promised at start and on stderr, on the real command.

Every bad setting exits 2 with one line before anything starts; a stop while
still waiting for the broker is a documented exit; ``--log-format json`` keeps
every stderr line JSON even when HTTP clients hang up mid-request.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.httpserver import free_port
from streamer.settings import to_toml

from .helpers import (
    PROCESS_TIMEOUT_S,
    Cluster,
    PipelineStarter,
    running_daemon,
    streamer_command,
    wait_for,
)

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, document: dict[str, dict[str, Any]]) -> Path:
    path = tmp_path / "streamer.toml"
    path.write_text(to_toml(document))
    return path


def _run(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*streamer_command(), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class TestEveryBadSettingExits2BeforeAnythingStarts:
    @pytest.fixture
    def document(self, cluster: Cluster) -> dict[str, dict[str, Any]]:
        topics = cluster.new_topics(partitions=1)
        return {
            "kafka": cluster.kafka_section(topics),
            "metrics": {"host": "127.0.0.1", "port": 0},
        }

    def test_a_metrics_port_in_use(self, document: dict[str, Any], tmp_path: Path) -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            document["metrics"]["port"] = port
            result = _run(_config(tmp_path, document))
        assert result.returncode == 2, result.stderr
        line = _one_line(result)
        assert line.startswith(
            f"streamer: config error: metrics.host:metrics.port 127.0.0.1:{port}"
        )
        assert "Address already in use" in line

    def test_a_metrics_port_out_of_range(self, document: dict[str, Any], tmp_path: Path) -> None:
        document["metrics"]["port"] = 70000
        result = _run(_config(tmp_path, document))
        assert result.returncode == 2, result.stderr
        assert _one_line(result) == (
            "streamer: config error: metrics.port must be at most 65535, got 70000"
        )

    @pytest.mark.parametrize("servers", ["", "kafka:notaport", "kafka:9092,"])
    def test_empty_or_malformed_bootstrap_servers(
        self, servers: str, document: dict[str, Any], tmp_path: Path
    ) -> None:
        document["kafka"]["bootstrap_servers"] = servers
        result = _run(_config(tmp_path, document))
        assert result.returncode == 2, result.stderr
        assert _one_line(result).startswith("streamer: config error: kafka.bootstrap_servers")

    def test_an_environment_variable_of_the_wrong_type_is_named(
        self, document: dict[str, Any], tmp_path: Path
    ) -> None:
        result = _run(_config(tmp_path, document), env={"STREAMER_BATCH__MAX_RECORDS": "abc"})
        assert result.returncode == 2, result.stderr
        assert _one_line(result) == (
            "streamer: config error: batch.max_records must be int, got 'abc' "
            "(set by the environment variable STREAMER_BATCH__MAX_RECORDS)"
        )


def test_sigterm_while_waiting_for_the_broker_at_start_exits_0(
    cluster: Cluster, tmp_path: Path
) -> None:
    topics = cluster.new_topics(partitions=1)
    kafka = {**cluster.kafka_section(topics), "bootstrap_servers": f"127.0.0.1:{free_port()}"}
    kafka["bootstrap_timeout_s"] = 1.0
    config = _config(
        tmp_path,
        {"kafka": kafka, "metrics": {"enabled": False}, "supervision": {"broker_retry_s": 1.0}},
    )
    log_path = tmp_path / "daemon.log"
    with running_daemon(config, log_path) as daemon:
        wait_for(
            lambda: daemon.poll() is not None or "broker not reachable" in log_path.read_text(),
            PROCESS_TIMEOUT_S,
            "the first retry",
        )
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=PROCESS_TIMEOUT_S)
    lines = log_path.read_text().strip().splitlines()
    assert code == 0, lines
    assert lines[-1].startswith("streamer: stopped while waiting for the broker"), lines[-1]


def _hang_up_mid_request(port: int, request: bytes) -> None:
    """Send ``request`` and reset the connection at once (SO_LINGER 0), as a killed client does."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(request)


def test_json_logs_stay_json_when_clients_hang_up_and_other_methods_get_405(
    cluster: Cluster, tmp_path: Path
) -> None:
    topics = cluster.new_topics(partitions=1)
    port = free_port()
    config = _config(
        tmp_path,
        {
            "kafka": cluster.kafka_section(topics),
            "metrics": {"host": "127.0.0.1", "port": port},
            "shutdown": {"timeout_s": 5.0},
        },
    )
    log_path = tmp_path / "daemon.log"
    with running_daemon(config, log_path, "--log-format", "json") as daemon:
        wait_for(
            lambda: daemon.poll() is not None or "pipeline started" in log_path.read_text(),
            PROCESS_TIMEOUT_S,
            "the daemon to start",
        )
        for _ in range(20):
            _hang_up_mid_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            _hang_up_mid_request(port, b"GET /heal")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)  # noqa: S310 - a loopback URL
        assert (refused.value.code, refused.value.headers["Allow"]) == (405, "GET")
        time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=PROCESS_TIMEOUT_S)
    lines = log_path.read_text().splitlines()
    assert code == 0, lines
    not_json = []
    for line in lines:
        try:
            assert isinstance(orjson.loads(line), dict)
        except (orjson.JSONDecodeError, AssertionError):
            not_json.append(line)
    assert not_json == [], not_json[:20]
    assert not [line for line in lines if '"level":"ERROR"' in line], lines


def test_the_dead_letter_breaker_names_the_reason_and_the_field_of_its_stop(
    cluster: Cluster, start_pipeline: PipelineStarter, tmp_path: Path
) -> None:
    model = tmp_path / "spaced.py"
    model.write_text(
        "import numpy as np\n\n"
        "def predict(frame):\n"
        "    return np.zeros(len(frame))\n\n"
        "predict.features = ['mean_radius', 'mean_texture']\n"
    )
    topics = cluster.new_topics(partitions=1)
    cluster.produce(
        topics.input,
        [(None, orjson.dumps({"mean radius": 1.0 + i, "mean_texture": 2.0})) for i in range(300)],
    )
    settings = cluster.settings(
        topics,
        model={"kind": "python", "path": f"{model}:predict"},
        preprocess={"standardize": False},
        batch={"max_records": 50},
        supervision={"dead_letter_window_records": 100, "dead_letter_max_ratio": 0.5},
    )
    pipeline = start_pipeline(settings)
    wait_for(lambda: pipeline.failure, PROCESS_TIMEOUT_S, "the breaker to trip")

    cause = "missing_feature 'mean_radius' in 100 of 100 records; the records carry 'mean radius'"
    assert cause in str(pipeline.failure), pipeline.failure
    trips = pipeline.registry.get_sample_value(
        "streamer_dead_letter_breaker_trips_total",
        {"reason": "missing_feature", "feature": "mean_radius"},
    )
    assert trips == 1.0
    report = pipeline.stop(timeout_s=5)
    assert report.exit_code == 1
    assert cause in str(report.failure)

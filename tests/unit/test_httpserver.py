"""EndpointServer: /metrics, the probes and a JSON 404, for the metrics actor and the workers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from streamer.httpserver import EndpointServer


@pytest.fixture
def server() -> Iterator[EndpointServer]:
    registry = CollectorRegistry()
    Counter("streamer_things", "Things.", registry=registry).inc(3)
    probes: dict[str, Any] = {"/healthz": lambda: (False, {"status": "failing"}), "/readyz": None}
    started = EndpointServer(("127.0.0.1", 0), registry, probes).start("test-http")
    yield started
    started.stop()


def get(server: EndpointServer, path: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_metrics_is_the_registry_in_the_text_format(server: EndpointServer) -> None:
    status, content_type, body = get(server, "/metrics")
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert b"streamer_things_total 3.0" in body


def test_a_failing_probe_is_503_with_its_details(server: EndpointServer) -> None:
    status, content_type, body = get(server, "/healthz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"status": "failing"}


def test_a_path_without_a_probe_answers_ok(server: EndpointServer) -> None:
    status, _type, body = get(server, "/readyz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_another_path_is_a_json_404_that_lists_the_endpoints(server: EndpointServer) -> None:
    status, _type, body = get(server, "/nope")
    assert status == 404
    assert json.loads(body)["endpoints"] == ["/metrics", "/healthz", "/readyz"]

"""EndpointServer: /metrics, the probes and a JSON 404, for the metrics actor and the workers."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from streamer.errors import ConfigError
from streamer.httpserver import EndpointServer, bind_endpoints


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


def test_another_method_is_a_405_that_allows_get(server: EndpointServer) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 - a loopback URL
    assert (refused.value.code, refused.value.headers["Allow"]) == (405, "GET")


def test_a_client_that_hangs_up_is_one_debug_line_and_nothing_on_stderr(
    server: EndpointServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the capture: another test's handler may hold a stream closed since.
    monkeypatch.setattr(logging.getLogger(), "handlers", [caplog.handler])
    caplog.set_level(logging.DEBUG, logger="streamer.httpserver")

    def hang_up() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    try:
        hang_up()
    except BrokenPipeError:
        server.handle_error(None, ("127.0.0.1", 5555))
    assert capsys.readouterr().err == ""
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "client ('127.0.0.1', 5555) hung up mid-request: [Errno 32] Broken pipe")
    ]


def test_a_port_in_use_is_a_config_error_naming_the_keys(server: EndpointServer) -> None:
    with pytest.raises(
        ConfigError, match=r"metrics.host:metrics.port 127.0.0.1:\d+ cannot be bound"
    ):
        bind_endpoints("127.0.0.1", server.port, CollectorRegistry(), {})

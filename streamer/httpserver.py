"""The HTTP endpoints of a metrics port: ``/metrics``, ``/healthz`` and ``/readyz``.

One server for the metrics actor of a pipeline and for the parent of
``streamer run --workers N``. ``/metrics`` is the Prometheus text exposition
of a registry. ``/healthz`` and ``/readyz`` call a probe that answers
``(ok, details)``: 200 when ok, 503 otherwise, with ``details`` as the JSON
body. Any other path is a JSON 404 that lists the endpoints; any other method
than GET a 405.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from streamer.errors import ConfigError

log = logging.getLogger(__name__)

BIND_RETRY_S = 0.5

# () -> (ok, details): details is a JSON-ready dict that says what is wrong.
HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bind_endpoints(
    host: str,
    port: int,
    registry: CollectorRegistry,
    probes: Mapping[str, HealthProbe | None],
    hint: str = "pick a free metrics.port (0 picks any), or stop what listens on it",
    wait_in_use_s: float = 0.0,
) -> EndpointServer:
    """Bind the endpoints' socket now, before anything starts; serve later with ``start``.

    A port in use is tried again for ``wait_in_use_s``: a worker of ``--workers``
    whose parent was killed waits so for its predecessor, which still serves
    that port while it drains.

    Raises:
        ConfigError: The address cannot be bound (in use, not an address of this
            host, out of range): one line naming metrics.host and metrics.port.
    """
    deadline = time.monotonic() + wait_in_use_s
    waited = False
    while True:
        try:
            return EndpointServer((host, port), registry, probes)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                if not waited:
                    log.warning(
                        "metrics port %d in use; trying again for up to %.0fs", port, wait_in_use_s
                    )
                waited = True
                time.sleep(BIND_RETRY_S)
                continue
            error: Exception = exc
        except OverflowError as exc:
            error = exc
        msg = f"metrics.host:metrics.port {host}:{port} cannot be bound: {error}; {hint}"
        raise ConfigError(msg) from None


class EndpointServer(ThreadingHTTPServer):
    """Serves a registry and the health probes on its own threads; the handler reads it.

    ``probes`` maps a path to its probe; ``None`` answers 200 "no probe configured".

    Raises:
        OSError: The address cannot be bound.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        probes: Mapping[str, HealthProbe | None],
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.probes = dict(probes)
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        """The bound port (the chosen one when asked for port 0)."""
        port: int = self.server_address[1]
        return port

    def start(self, thread_name: str) -> EndpointServer:
        """Serve on a daemon thread called ``thread_name``."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def handle_error(self, request: object, client_address: Any) -> None:
        """One log line per failed request, never socketserver's traceback print on stderr.

        A client that hangs up mid-request (a scraper's timeout, a probe that
        gives up) is routine: one DEBUG line. Anything else is logged with its
        traceback through logging, so that ``--log-format json`` stays JSON.
        """
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("client %s hung up mid-request: %s", client_address, error)
            return
        log.error("request from %s failed", client_address, exc_info=True)

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the serving thread."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics (Prometheus text format), the probes (JSON); 404 otherwise.

    Any other method is a 405 with ``Allow: GET`` (http.server's default is a 501).
    """

    server: EndpointServer
    server_version = "streamer"

    def _not_allowed(self) -> None:
        self._json(405, {"status": "method not allowed", "allow": ["GET"]}, {"Allow": "GET"})

    # http.server's names for the method handlers.
    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815

    def do_GET(self) -> None:
        """Serve one request."""
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                body = generate_latest(self.server.registry)
            except Exception as exc:  # a broken collector must not kill the thread silently
                log.exception("metrics exposition failed")
                self._json(500, {"status": "error", "error": f"{type(exc).__name__}: {exc}"})
                return
            # generate_latest writes legacy (underscore-escaped) names: text format 0.0.4,
            # which every Prometheus reads (CONTENT_TYPE_LATEST now says 1.0.0).
            self._send(200, CONTENT_TYPE_PLAIN_0_0_4, body)
        elif path in self.server.probes:
            self._probe(path, self.server.probes[path])
        else:
            self._json(
                404,
                {"status": "not found", "endpoints": ["/metrics", *sorted(self.server.probes)]},
            )

    def _probe(self, path: str, probe: HealthProbe | None) -> None:
        if probe is None:
            self._json(200, {"status": "ok", "detail": f"no {path} probe configured"})
            return
        try:
            ok, details = probe()
        except Exception as exc:  # the probe itself failed: that is a failing probe
            log.exception("%s probe raised", path)
            self._json(503, {"status": "error", "error": f"{type(exc).__name__}: {exc}"})
            return
        self._json(200 if ok else 503, details)

    def _json(
        self, status: int, document: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(document, default=str, sort_keys=True).encode() + b"\n"
        self._send(status, "application/json", body, headers)

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access lines go to the debug log: a 1 s scrape would flood INFO."""
        log.debug("%s %s", self.address_string(), format % args)

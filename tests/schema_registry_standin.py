"""A STAND-IN for a Confluent Schema Registry, for the tests only.

A real Confluent-compatible registry is not among the packages this project
can install, so the tests start this one: an in-memory HTTP server on a free
127.0.0.1 port. It implements only the REST subset that confluent-kafka's
``SchemaRegistryClient`` calls for serializing and deserializing:

- ``POST /subjects/{subject}/versions``: register a schema (the same schema
  text under a subject gets its existing id back);
- ``POST /subjects/{subject}``: look a schema up under a subject;
- ``GET /schemas/ids/{id}``: a schema by id (404 with error code 40403 when
  unknown);
- ``GET /subjects``, ``GET /subjects/{subject}/versions``,
  ``GET /subjects/{subject}/versions/latest`` and ``.../versions/{n}``.

Anything else gets a 404 (the client's associations look-up, which it
tolerates).
It checks no compatibility, normalizes nothing, and stores a schema exactly
as registered (confluent-kafka's ProtobufSerializer registers a base64
FileDescriptorProto, which it returns as is). ``stop()`` and ``start()``
again on the same port simulate an outage; the schemas survive it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SchemaRegistryStandIn:
    """Schemas by id and by subject, served over HTTP on 127.0.0.1."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._by_id: dict[int, dict[str, Any]] = {}
        self._subjects: dict[str, list[int]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[str] = []

    def __enter__(self) -> SchemaRegistryStandIn:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                standin._answer(self, "GET", None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                standin._answer(self, "POST", json.loads(self.rfile.read(length) or b"{}"))

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, handler: BaseHTTPRequestHandler, method: str, body: Any) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append(f"{method} {path}")
        status, doc = self._route(method, path, body)
        data = json.dumps(doc).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:  # noqa: PLR0911
        with self._lock:
            if method == "GET" and path == "/subjects":
                return 200, sorted(self._subjects)
            if match := re.fullmatch(r"/schemas/ids/(\d+)", path):
                schema = self._by_id.get(int(match[1]))
                if schema is None:
                    return 404, {"error_code": 40403, "message": "Schema not found"}
                return 200, dict(schema)
            if match := re.fullmatch(r"/subjects/([^/]+)/versions", path):
                if method == "POST":
                    return 200, {"id": self._register(match[1], body)}
                return 200, list(range(1, len(self._subjects.get(match[1], [])) + 1))
            if match := re.fullmatch(r"/subjects/([^/]+)/versions/(latest|\d+)", path):
                return self._version(match[1], match[2])
            if method == "POST" and (match := re.fullmatch(r"/subjects/([^/]+)", path)):
                return self._lookup(match[1], body)
        return 404, {"error_code": 404, "message": f"not implemented by the stand-in: {path}"}

    def _register(self, subject: str, body: dict[str, Any]) -> int:
        schema = {
            "schema": body["schema"],
            "schemaType": body.get("schemaType", "AVRO"),
            "references": body.get("references", []),
        }
        same = [known_id for known_id, known in self._by_id.items() if known == schema]
        schema_id = same[0] if same else len(self._by_id) + 1
        self._by_id[schema_id] = schema
        versions = self._subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def _version(self, subject: str, version: str) -> tuple[int, Any]:
        versions = self._subjects.get(subject)
        if not versions:
            return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found"}
        number = len(versions) if version == "latest" else int(version)
        if not 1 <= number <= len(versions):
            return 404, {"error_code": 40402, "message": "Version not found"}
        schema_id = versions[number - 1]
        return 200, {
            "subject": subject,
            "version": number,
            "id": schema_id,
            **self._by_id[schema_id],
        }

    def _lookup(self, subject: str, body: dict[str, Any]) -> tuple[int, Any]:
        for number, schema_id in enumerate(self._subjects.get(subject, []), start=1):
            if self._by_id[schema_id]["schema"] == body["schema"]:
                return 200, {"subject": subject, "version": number, "id": schema_id,
                             **self._by_id[schema_id]}  # fmt: skip
        return 404, {"error_code": 40403, "message": "Schema not found"}

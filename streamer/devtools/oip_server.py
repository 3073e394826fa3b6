"""A real Open Inference Protocol server on loopback: MLServer with its scikit-learn runtime.

For the remote-model tests and ``make bench``. MLServer pins its own fastapi,
pydantic and uvicorn, which clash with the test environment's (mlflow 3), so it
lives in a virtualenv of its own, ``.venv-oip`` at the repository root, made
once by :func:`ensure_venv` (``make test`` does it; about 35 s and 0.5 GB). It
installs the test environment's own scikit-learn and numpy versions, so that
the joblib file the tests write loads there as it does here.

Every model is served by :data:`RUNTIME`, MLServer's own ``SKLearnModel`` with
two test knobs in ``parameters.extra``: ``delay_s`` (an asynchronous sleep
before each answer: a server whose latency dominates) and ``magic`` (a request
holding that value is refused with HTTP 400, as a server refuses a bad row).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

MLSERVER_VERSION = "1.7.1"
VENV_DIR = ".venv-oip"

RUNTIME = '''
"""MLServer's scikit-learn runtime with the two test knobs of streamer.devtools.oip_server."""
import asyncio

import numpy as np
from mlserver.errors import MLServerError
from mlserver_sklearn import SKLearnModel


class StreamerTestModel(SKLearnModel):
    async def predict(self, payload):
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        magic = extra.get("magic")
        if magic is not None:
            for tensor in payload.inputs:
                data = getattr(tensor.data, "root", tensor.data)
                if np.any(np.asarray(data, dtype=np.float64) == float(magic)):
                    raise MLServerError("a row holds the magic value", status_code=400)
        delay = float(extra.get("delay_s", 0) or 0)
        if delay:
            await asyncio.sleep(delay)
        return await super().predict(payload)
'''


def pins() -> list[str]:
    """What .venv-oip installs: MLServer and the test environment's scikit-learn and numpy."""
    found = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}"]
    for package in ("scikit-learn", "numpy", "joblib"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{package}=={importlib.metadata.version(package)}")
    return found


def ensure_venv(root: Path) -> Path:
    """``root/.venv-oip`` with :func:`pins` installed (made once; a stamp names the pins)."""
    venv = root / VENV_DIR
    wanted = " ".join(pins())
    stamp = venv / ".installed"
    if stamp.is_file() and stamp.read_text() == wanted and (venv / "bin" / "mlserver").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *pins()],
        check=True,
    )
    stamp.write_text(wanted)
    return venv


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OipServer:
    """MLServer serving joblib files on free loopback ports; see the module docstring.

    Args:
        venv: The virtualenv from :func:`ensure_venv`.
        directory: Where the model repository and the log go (made if missing).
        models: Model name -> (joblib file, ``parameters.extra``).
        inputs: Model name -> its feature names, declared in its metadata as one FP64
            input each (the model then gets a DataFrame); others declare none.
    """

    def __init__(
        self,
        venv: Path,
        directory: Path,
        models: Mapping[str, tuple[Path, Mapping[str, Any]]],
        inputs: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.venv = venv
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "mlserver.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._models = dict(models)
        self._inputs = dict(inputs or {})
        self._write_repository()

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _write_repository(self) -> None:
        repo = self.directory / "models"
        repo.mkdir(parents=True, exist_ok=True)
        for name, (path, extra) in self._models.items():
            folder = repo / name
            folder.mkdir(exist_ok=True)
            shutil.copyfile(path, folder / "model.joblib")
            (folder / "streamer_test_runtime.py").write_text(RUNTIME)
            settings: dict[str, Any] = {
                "name": name,
                "implementation": "streamer_test_runtime.StreamerTestModel",
                "parameters": {"uri": "./model.joblib", "version": "1", "extra": dict(extra)},
            }
            if name in self._inputs:
                settings["inputs"] = [
                    {"name": feature, "datatype": "FP64", "shape": [-1]}
                    for feature in self._inputs[name]
                ]
            (folder / "model-settings.json").write_text(json.dumps(settings))

    def start(self, timeout_s: float = 60.0) -> OipServer:
        """Start MLServer (on the same port as before, after a :meth:`kill`) and wait until ready.

        Raises:
            RuntimeError: It exited or was not ready in time (the log says why).
        """
        repo = self.directory / "models"
        server = {
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": 0,
        }
        (repo / "settings.json").write_text(json.dumps(server))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.venv / "bin" / "mlserver"), "start", str(repo)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                msg = f"mlserver exited with {self._process.returncode}; see {self.log_path}"
                raise RuntimeError(msg)
            if all(self.ready(name) for name in self._models):
                return self
            time.sleep(0.2)
        self.kill()
        msg = f"mlserver was not ready within {timeout_s:g} s; see {self.log_path}"
        raise RuntimeError(msg)

    @property
    def pid(self) -> int:
        """The running server's process id."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def ready(self, model: str) -> bool:
        """Does ``/v2/models/<model>/ready`` answer 200?"""
        try:
            url = f"{self.url}/v2/models/{model}/ready"
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - our own http URL
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL the server (its whole process group), as a crash would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def __enter__(self) -> OipServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()

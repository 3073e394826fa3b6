"""``streamer run --workers N``: N pipeline processes in one consumer group, under one parent.

Pykka actors share the GIL, so one process uses about one core whatever its
actor counts. Worker processes use the others, the same way replicas on
several machines would: each worker is a whole ``streamer run`` with the same
``kafka.group_id``, and the group splits the input partitions between them.

The parent:

- passes every resolved setting to the workers in ``STREAMER_<SECTION>__<KEY>``
  variables (never on the command line, where the SASL password would show);
- forwards SIGTERM and SIGINT (a second one too, which makes the workers exit at
  once) and SIGHUP (model reload). Workers run in their own session, so a
  Ctrl-C in a terminal reaches them once, through the parent;
- restarts a worker that exits on its own, with the backoff and the restart
  intensity of ``[supervision]``; beyond it, it stops the others and exits 1.
  A worker that exits 2 (bad configuration) is not restarted: everything stops
  with exit code 2;
- serves ``metrics.port``: ``/metrics`` is every worker's exposition with a
  ``worker`` label added, plus ``streamer_workers_alive`` and
  ``streamer_worker_restarts_total``; ``/healthz`` and ``/readyz`` answer 200
  only when every worker does. Worker ``i`` serves its own endpoints on
  ``metrics.port + 1 + i``. (prometheus_client's multiprocess mode was the
  other choice; it needs the global registry and files shared between the
  processes, while each pipeline owns its registry.)

Each worker is ``python -m streamer run --parent-pid P --worker-index I`` (hidden
flags): it watches its parent (:func:`watch_parent`) and drains and stops if the
parent disappears.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from streamer.core.supervision import RestartPolicy
from streamer.httpserver import EndpointServer, bind_endpoints, free_port
from streamer.settings import (
    CHALLENGERS_ENV,
    ENV_PREFIX,
    SECTIONS,
    STATE_FEATURES_ENV,
    Settings,
    state_feature_tables,
)
from streamer.signals import GracefulSignals

log = logging.getLogger(__name__)

# Grace beyond shutdown.timeout_s before a worker that has not exited is killed.
KILL_GRACE_S = 10.0
SCRAPE_TIMEOUT_S = 2.0
LOOP_S = 0.1


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as a ``STREAMER_<SECTION>__<KEY>`` variable, as the loader parses them."""
    env: dict[str, str] = {}
    for section in SECTIONS:
        values = getattr(settings, section)
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, float):
                text = repr(value)
            elif isinstance(value, dict):  # [preprocess.paths]: the loader reads JSON
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{section.upper()}__{item.name.upper()}"] = text
    if settings.challengers:
        tables = [dataclasses.asdict(challenger) for challenger in settings.challengers]
        env[CHALLENGERS_ENV] = json.dumps(tables)
    if settings.state_features:
        env[STATE_FEATURES_ENV] = json.dumps(state_feature_tables(settings.state_features))
    return env


@dataclass
class Worker:
    """One worker process and what the parent knows about it."""

    index: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        log_level: str = "INFO",
        log_format: str = "text",
        metrics_ports: Sequence[int] | None = None,
        command: Callable[[Worker], list[str]] | None = None,
    ) -> None:
        if workers < 1:
            msg = f"--workers must be >= 1, got {workers}"
            raise ValueError(msg)
        self.settings = settings
        self._log_args = ["--log-level", log_level, "--log-format", log_format]
        base = settings.metrics.port
        if metrics_ports is None:
            metrics_ports = [free_port() if base == 0 else base + 1 + i for i in range(workers)]
        self.workers = [Worker(i, port) for i, port in enumerate(metrics_ports)]
        self._command = command or self._worker_command
        sup = settings.supervision
        self._policy = RestartPolicy(
            sup.max_restarts, sup.restart_window_s, sup.backoff_initial_s, sup.backoff_max_s
        )
        self._stopping = threading.Event()
        self.signals = GracefulSignals(
            self._drain,
            on_second=self._exit_now,
            on_reload=lambda: self.send(signal.SIGHUP),
            announce=None,
        )
        self.failure: str | None = None
        self.exit_code = 0

    # --- processes -----------------------------------------------------------

    def _environment(self, worker: Worker) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_environment(self.settings))
        prefix = ENV_PREFIX
        env[f"{prefix}METRICS__PORT"] = str(worker.metrics_port)
        env[f"{prefix}KAFKA__CLIENT_ID"] = f"{self.settings.kafka.client_id}-{worker.index}"
        return env

    def _worker_command(self, worker: Worker) -> list[str]:
        return [
            sys.executable,
            "-m",
            "streamer",
            "run",
            "--parent-pid",
            str(os.getpid()),
            "--worker-index",
            str(worker.index),
            *self._log_args,
        ]

    def _spawn(self, worker: Worker) -> None:
        # Their own session: a terminal's Ctrl-C reaches them once, through us.
        worker.process = subprocess.Popen(
            self._command(worker), env=self._environment(worker), start_new_session=True
        )
        worker.restart_at = None
        log.info(
            "worker %d started (pid %d, metrics port %d)",
            worker.index,
            worker.process.pid,
            worker.metrics_port,
        )

    def start(self) -> None:
        """Start every worker."""
        for worker in self.workers:
            self._spawn(worker)

    def check(self, now: float) -> None:
        """Restart workers that exited on their own; give up beyond the restart intensity."""
        for worker in self.workers:
            if self._stopping.is_set():
                return
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    self._spawn(worker)
                continue
            if worker.process is None or worker.process.poll() is None:
                continue
            code = worker.process.returncode
            worker.exit_codes.append(code)
            if code == 2:
                self._fail(f"worker {worker.index} exited 2 (configuration error)", 2)
                return
            decision = self._policy.on_failure(now)
            if not decision.restart:
                self._fail(f"worker {worker.index} exited {code}; {decision.reason}", 1)
                return
            worker.restarts += 1
            worker.restart_at = now + decision.delay_s
            log.warning(
                "worker %d exited with code %d; restarting it in %.1fs",
                worker.index,
                code,
                decision.delay_s,
            )

    def _fail(self, reason: str, exit_code: int) -> None:
        log.error("stopping every worker: %s", reason)
        self.failure = reason
        self.exit_code = exit_code
        self.request_stop()

    def request_stop(self) -> None:
        """Ask every worker to drain and stop (safe from a signal handler)."""
        self._stopping.set()
        self.send(signal.SIGTERM)

    def send(self, signum: int) -> None:
        """Send a signal to every running worker."""
        for worker in self.workers:
            if worker.alive:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    def _drain(self, signum: int) -> None:
        """The first SIGTERM/SIGINT: the workers drain."""
        log.info("%s received: draining every worker", signal.Signals(signum).name)
        self._stopping.set()
        self._forward(signum)

    def _exit_now(self, signum: int) -> None:
        """A second SIGTERM/SIGINT, forwarded too: the workers exit at once."""
        log.warning("second signal: the workers exit now without draining")
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        self.send(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping.is_set()

    def wait(self) -> int:
        """Run until stopped, then wait for the workers; the exit code of the whole group."""
        while not self._stopping.wait(LOOP_S):
            self.check(time.monotonic())
        deadline = time.monotonic() + self.settings.shutdown.timeout_s + KILL_GRACE_S
        codes: list[int] = []
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            try:
                codes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", worker.index)  # noqa: TRY400 - no traceback wanted
                process.kill()
                codes.append(process.wait())
        if self.exit_code:
            return self.exit_code
        if any(code >= 128 for code in codes):
            return max(codes)
        return 0 if all(code == 0 for code in codes) else 1

    # --- metrics and health ----------------------------------------------------

    def scrape(self, path: str, worker: Worker) -> tuple[int, bytes]:
        """GET one worker's endpoint: (status, body); status 0 when it does not answer."""
        url = f"http://127.0.0.1:{worker.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def probe(self, path: str) -> tuple[bool, dict[str, Any]]:
        """Every worker's /healthz or /readyz: ok only when all of them are."""
        results: dict[str, Any] = {}
        ok = True
        for worker in self.workers:
            status, body = self.scrape(path, worker) if worker.alive else (0, b"")
            ok = ok and status == 200
            try:
                detail = json.loads(body) if body else {"status": "not running"}
            except ValueError:
                detail = {"status": f"HTTP {status}"}
            results[str(worker.index)] = detail
        return ok, {"status": "ok" if ok else "failing", "workers": results}


class _Aggregate(Collector):
    """Every worker's metrics with a ``worker`` label, and the parent's own."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool

    def collect(self) -> Iterable[Metric]:
        families: dict[tuple[str, str], Metric] = {}
        for worker in self._pool.workers:
            if not worker.alive:
                continue
            status, body = self._pool.scrape("/metrics", worker)
            if status != 200:
                continue
            label = str(worker.index)
            for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
                merged = families.get((family.name, family.type))
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[(family.name, family.type)] = merged
                merged.samples.extend(
                    Sample(s.name, {**s.labels, "worker": label}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                )
        alive = Metric("streamer_workers_alive", "Worker processes running.", "gauge")
        alive.add_sample("streamer_workers_alive", {}, sum(w.alive for w in self._pool.workers))
        restarts = Metric(
            "streamer_worker_restarts", "Worker processes restarted by the parent.", "counter"
        )
        for worker in self._pool.workers:
            restarts.add_sample(
                "streamer_worker_restarts_total", {"worker": str(worker.index)}, worker.restarts
            )
        yield from families.values()
        yield alive
        yield restarts


def serve_metrics(pool: WorkerPool) -> EndpointServer | None:
    """Serve the aggregated /metrics, /healthz and /readyz on ``metrics.host:metrics.port``."""
    metrics = pool.settings.metrics
    if not metrics.enabled:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Aggregate(pool))
    probes = {path: functools.partial(pool.probe, path) for path in ("/healthz", "/readyz")}
    server = bind_endpoints(
        metrics.host,
        metrics.port,
        registry,
        probes,
        hint="pick a free metrics.port (the workers use the next ones)",
    )
    server.start("workers-metrics")
    log.info(
        "workers' metrics at http://%s:%d/metrics (workers on ports %s)",
        metrics.host,
        server.port,
        ", ".join(str(w.metrics_port) for w in pool.workers),
    )
    return server


def run_workers(
    settings: Settings, workers: int, *, log_level: str = "INFO", log_format: str = "text"
) -> int:
    """Run ``workers`` pipeline processes until a signal or a failure; the exit code."""
    pool = WorkerPool(settings, workers, log_level=log_level, log_format=log_format)
    server = serve_metrics(pool)
    pool.signals.install()
    try:
        pool.start()
        code = pool.wait()
    finally:
        if server is not None:
            server.stop()
    log.info("every worker stopped; exit code %d", code)
    return code


# --- the worker side -------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_DEATH_SIGNAL = signal.SIGUSR2
"""What the kernel sends a worker when its parent dies; it becomes one SIGTERM (a drain)."""


def _ask_kernel_for_parent_death_signal() -> bool:
    """PR_SET_PDEATHSIG (Linux); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def watch_parent(parent_pid: int, interval_s: float = 1.0) -> threading.Thread:
    """SIGTERM this process (a graceful drain) once, when the parent is gone.

    On Linux the kernel signals the worker the moment its parent dies
    (PR_SET_PDEATHSIG), so both workers of a killed parent start their drain at
    once and leave the group within ``shutdown.timeout_s``; a thread also
    looks every ``interval_s`` (other systems, or a death before the request).
    Whichever sees it first sends the one SIGTERM: a second one would make the
    worker exit without draining.
    """
    once = threading.Lock()

    def parent_gone() -> None:
        if once.acquire(blocking=False):
            log.error("the parent process %d is gone: stopping this worker", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(PARENT_DEATH_SIGNAL, lambda _signum, _frame: parent_gone())
    _ask_kernel_for_parent_death_signal()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        parent_gone()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread

"""The HTTP side of ``model.kind = "remote"``: one event-loop thread, aiohttp, retries, the breaker.

Every remote model of the process shares one daemon thread running an asyncio
loop (:func:`event_loop`), so that ``model.max_concurrent_requests`` batches
are in flight without a thread each. An :class:`OipClient` is one model on one
server: a connection pool, a semaphore of ``max_concurrent_requests`` slots,
a :class:`~streamer.core.models.oip.Breaker` and the counters the metrics read.
Clients are shared by everything that loads the same model with the same
settings (:func:`client_for`), so that a hot reload keeps the pool, the
breaker and the counters.

A transient failure is retried forever by a patient caller (the model actor:
an outage pauses the pipeline, it loses nothing), and a few times by an
impatient one (a challenger, the load-time probe), which then gets
:class:`~streamer.core.models.oip.ServerUnavailableError`. The bearer token
goes into a header and nowhere else: no message of this module contains it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import random
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson

from streamer.core.models.base import RemoteOptions
from streamer.core.models.oip import (
    BAD_INPUT,
    CONNECTION,
    OK,
    TIMEOUT,
    BadInputError,
    Breaker,
    RetryPolicy,
    ServerRefusedError,
    ServerUnavailableError,
    build_request,
    classify_status,
    error_detail,
    parse_response,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

IMPATIENT_ATTEMPTS = 3
"""Attempts an impatient caller (a challenger, a load) makes before giving up."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_loop_lock = threading.RLock()
_loop: asyncio.AbstractEventLoop | None = None
_clients: dict[tuple[Any, ...], OipClient] = {}


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's one remote-model event loop, started on first use on a daemon thread."""
    global _loop  # noqa: PLW0603 - one loop per process, started lazily
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="remote-models", daemon=True).start()
            _loop = loop
            atexit.register(_close_sessions)
        return _loop


def _close_sessions() -> None:
    """At exit: close the connection pools, so that aiohttp does not warn about them."""
    loop = _loop
    clients = all_clients()
    if loop is None or not clients or not loop.is_running():
        return

    async def close() -> None:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(close(), loop).result(2.0)


def client_for(options: RemoteOptions, model_path: str) -> OipClient:
    """The shared client of one model (``name`` or ``name/versions/v``) with these options."""
    key = (options, model_path)
    with _loop_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = OipClient(options, model_path)
        return client


def all_clients() -> list[OipClient]:
    """Every client made so far (for the metrics)."""
    with _loop_lock:
        return list(_clients.values())


@dataclass
class RemoteStats:
    """What ``streamer_remote_*`` reports of one client; touched on the loop thread only."""

    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    in_flight: int = 0
    waiting: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_count: int = 0
    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        """One request's latency into the histogram."""
        self.latency_count += 1
        self.latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1


class OipClient:
    """One model on one Open Inference Protocol server; see the module docstring."""

    def __init__(self, options: RemoteOptions, model_path: str) -> None:
        self.options = options
        self.model_path = model_path
        self.label = model_path
        self.server = urllib.parse.urlsplit(options.url).netloc
        base = options.url.rstrip("/")
        self.model_url = f"{base}/v2/models/{model_path}"
        self.infer_url = f"{self.model_url}/infer"
        self.ready_url = f"{self.model_url}/ready"
        self.stats = RemoteStats()
        self.breaker = Breaker(options.breaker_failures, options.probe_interval_s)
        self.retry = RetryPolicy(options.backoff_initial_s, options.backoff_max_s)
        self._loop = event_loop()
        self._random = random.Random()
        self._session: Any = None
        self._slots: asyncio.Semaphore | None = None
        self._closed: asyncio.Event | None = None
        self._probing = False

    @property
    def impatient_budget_s(self) -> float:
        """How long an impatient call may take: its attempts and the backoffs between them."""
        return IMPATIENT_ATTEMPTS * (self.options.timeout_s + self.options.backoff_max_s)

    @property
    def reachable(self) -> bool:
        """False while the breaker is open (the server is down): readiness reports it."""
        return not self.breaker.is_open

    # -- called from other threads ------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coroutine`` on the loop and wait for it, at most ``timeout_s``."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            msg = f"{self.model_url}: no answer within {timeout_s:g} s"
            raise ServerUnavailableError(msg) from None

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` on the loop; cancelling the future cancels it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    # -- on the loop ----------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.options.url.startswith("https://"):
            return False
        if not self.options.tls_verify:
            return False
        return ssl.create_default_context(cafile=self.options.ca_file or None)

    async def _open(self) -> Any:
        if self._session is None:
            import aiohttp  # noqa: PLC0415 - streamer[remote]; checked by the loader

            headers = dict(self.options.headers)
            if self.options.bearer_token:
                headers["Authorization"] = f"Bearer {self.options.bearer_token}"
            headers["Content-Type"] = "application/json"
            connector = aiohttp.TCPConnector(
                limit=max(self.options.max_concurrent_requests, 1) + 1, ssl=self._ssl()
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.options.timeout_s),
            )
            self._slots = asyncio.Semaphore(self.options.max_concurrent_requests)
            self._closed = asyncio.Event()
            self._closed.set()
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool (at exit)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _request(self, method: str, url: str, body: bytes | None) -> tuple[str, int, bytes]:
        """(outcome, status, body) of one attempt; never raises for the server's failures."""
        import aiohttp  # noqa: PLC0415

        session = await self._open()
        try:
            async with session.request(method, url, data=body) as response:
                payload = await response.read()
                return classify_status(response.status), response.status, payload
        except TimeoutError:
            return TIMEOUT, 0, b""
        except (aiohttp.ClientError, OSError) as exc:
            return CONNECTION, 0, str(exc).encode()

    async def get_json(self, url: str) -> Any:
        """GET ``url`` (the metadata) once.

        Raises:
            ServerRefusedError: The server answered another 4xx (401, 403, 404, 400).
            ServerUnavailableError: No answer, a timeout, 429 or 5xx.
        """
        outcome, status, body = await self._request("GET", url, None)
        if outcome != OK:
            detail = error_detail(body, status) if status else body.decode(errors="replace")
            msg = f"GET {url}: {outcome} ({detail})"
            refused = 400 <= status < 500 and status != 429
            raise (ServerRefusedError if refused else ServerUnavailableError)(msg)
        return orjson.loads(body)

    async def mark_down(self) -> None:
        """The server did not answer at start: open the breaker (metric, readiness)."""
        await self._open()
        assert self._closed is not None
        self.breaker.trip(time.monotonic())
        self._closed.clear()

    async def mark_up(self) -> None:
        """The server answered at start: close the breaker if a failed start opened it."""
        await self._open()
        assert self._closed is not None
        if self.breaker.success():
            log.info("remote model %s answers: loading it", self.model_url)
        self._closed.set()

    async def infer(
        self,
        features: np.ndarray,
        input_names: tuple[str, ...],
        outputs: tuple[str, ...],
        *,
        patient: bool = True,
    ) -> np.ndarray:
        """The answer to one batch as an ``(n, m)`` matrix; see the module docstring.

        Raises:
            BadInputError: The server blamed the input (400, 413, 422) or answered nonsense.
            ServerUnavailableError: An impatient caller's attempts all failed.
        """
        await self._open()
        assert self._slots is not None
        assert self._closed is not None
        body = build_request(features, input_names, self.options.datatype, outputs)
        stats = self.stats
        attempt = 0
        while True:
            if self.breaker.is_open:
                if not patient:
                    msg = f"{self.model_url}: the server is unavailable (circuit breaker open)"
                    raise ServerUnavailableError(msg)
                await self._wait_until_closed()
            stats.waiting += 1
            try:
                await self._slots.acquire()
            finally:  # a cancelled wait (the actor stopped) counts out too
                stats.waiting -= 1
            stats.in_flight += 1
            started = time.perf_counter()
            try:
                outcome, status, payload = await self._request("POST", self.infer_url, body)
            finally:
                stats.in_flight -= 1
                stats.observe(time.perf_counter() - started)
                self._slots.release()
            stats.outcomes[outcome] += 1
            if outcome == OK:
                if self.breaker.success():
                    log.info("remote model %s answers again: resuming", self.model_url)
                    self._closed.set()
                return parse_response(payload, features.shape[0], outputs)
            if outcome == BAD_INPUT:
                if self.breaker.success():
                    self._closed.set()
                raise BadInputError(error_detail(payload, status))
            detail = error_detail(payload, status) if status else payload.decode(errors="replace")
            if self.breaker.failure(time.monotonic()):
                self._closed.clear()
                log.warning(
                    "remote model %s is unavailable (%s: %s): pausing until it answers its "
                    "ready probe",
                    self.model_url,
                    outcome,
                    detail,
                )
            attempt += 1
            if not patient and attempt >= IMPATIENT_ATTEMPTS:
                msg = f"{self.model_url}: {outcome} after {attempt} attempts ({detail})"
                raise ServerUnavailableError(msg)
            stats.retries += 1
            await asyncio.sleep(self.retry.delay(attempt - 1, self._random.random))

    async def _wait_until_closed(self) -> None:
        """Wait for a probe to find the model ready; start the probing if nobody does."""
        assert self._closed is not None
        if not self._probing:
            self._probing = True
            asyncio.get_running_loop().create_task(self._probe())
        await self._closed.wait()

    async def _probe(self) -> None:
        """While the breaker is open: ask ``/ready`` every probe interval; a 200 closes it."""
        assert self._closed is not None
        try:
            while self.breaker.is_open:
                await asyncio.sleep(self.breaker.probe_in(time.monotonic()))
                outcome, _, _ = await self._request("GET", self.ready_url, None)
                if self.breaker.probed(time.monotonic(), ready=outcome == OK):
                    log.info("remote model %s is ready again: resuming", self.model_url)
        finally:
            self._probing = False
            if not self.breaker.is_open:
                self._closed.set()

"""The worker-process parent: settings hand-over, restarts, signals, metrics (no Kafka)."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.errors import ConfigError
from streamer.settings import Settings, build_settings
from streamer.workers import Worker, WorkerPool, _Aggregate, serve_metrics, settings_environment

from .fakes import wait_until

# A stand-in worker: exits with the code in its first argument after the delay in
# its second, or (code "signal") runs until SIGTERM/SIGINT and writes what it got.
STUB = textwrap.dedent(
    """
    import os, signal, sys, time
    code, delay, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    if code != "signal":
        time.sleep(delay)
        sys.exit(int(code))
    got = []
    def handle(signum, frame):
        got.append(signal.Signals(signum).name)
        with open(out, "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
        if len(got) >= int(os.environ.get("STUB_SIGNALS", "1")):
            sys.exit(0)
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, handle)
    with open(out, "a") as f:
        f.write("ready\\n")
    while True:
        time.sleep(0.01)
    """
)


def settings(**supervision: float) -> Settings:
    return build_settings(
        {
            "kafka": {"input_topic": "in", "output_topic": "out"},
            "metrics": {"enabled": False},
            "shutdown": {"timeout_s": 2.0},
            "supervision": {"backoff_initial_s": 0.05, "backoff_max_s": 0.1, **supervision},
        },
        environ={},
    )


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub.py"
    path.write_text(STUB)
    return path


@pytest.fixture
def pools() -> Iterator[list[WorkerPool]]:
    made: list[WorkerPool] = []
    yield made
    for pool in made:
        for worker in pool.workers:
            if worker.alive:
                assert worker.process is not None
                worker.process.kill()
                worker.process.wait()


def make_pool(
    pools: list[WorkerPool], stub: Path, argv: list[list[str]], config: Settings | None = None
) -> WorkerPool:
    pool = WorkerPool(
        config or settings(),
        len(argv),
        metrics_ports=[0] * len(argv),
        command=lambda worker: [sys.executable, str(stub), *argv[worker.index]],
    )
    pools.append(pool)
    return pool


def run_in_thread(pool: WorkerPool) -> tuple[threading.Thread, list[int]]:
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(pool.wait()), daemon=True)
    thread.start()
    return thread, code


class TestSettingsHandOver:
    def test_every_setting_survives_the_trip_through_the_environment(self) -> None:
        original = build_settings(
            {
                "kafka": {
                    "input_topic": "in",
                    "output_topic": "out",
                    "client": "confluent",
                    "sasl_password": "s3cret",
                    "linger_s": 0.0125,
                },
                "batch": {"max_records": 777},
                "metrics": {"enabled": False},
                "preprocess": {"paths": {"amount": "payment.amount", "a.b": ["a.b"]}},
                "challenger": [
                    {"name": "candidate", "output_topic": "shadow", "max_pending_batches": 3},
                    {"name": "agreement-only", "kind": "linear"},
                ],
                "state": {
                    "log_features": True,
                    "features": [
                        {"name": "n", "key": "card", "agg": "count", "window": "1h30m"},
                        {
                            "name": "s",
                            "key": "$key",
                            "agg": "mean",
                            "field": "amount",
                            "window": 0.0015,
                            "time": "ts",
                            "include_current": False,
                            "default": -1,
                        },
                    ],
                },
            },
            environ={},
        )

        assert build_settings({}, environ=settings_environment(original)) == original
        assert [c.name for c in original.challengers] == ["candidate", "agreement-only"]
        assert [f.name for f in original.state_features] == ["n", "s"]

    def test_a_broken_challengers_variable_is_one_line_naming_it(self) -> None:
        with pytest.raises(
            ConfigError, match=r"^config error: STREAMER_CHALLENGERS must be a JSON array"
        ):
            build_settings({}, environ={"STREAMER_CHALLENGERS": "[{"})

    def test_each_worker_gets_its_own_metrics_port_and_client_id(self) -> None:
        pool = WorkerPool(
            build_settings(
                {"kafka": {"input_topic": "in", "output_topic": "out"}, "metrics": {"port": 9500}},
                environ={},
            ),
            3,
        )

        ports = [w.metrics_port for w in pool.workers]
        envs = [pool._environment(w) for w in pool.workers]

        assert ports == [9501, 9502, 9503]
        assert [e["STREAMER_METRICS__PORT"] for e in envs] == ["9501", "9502", "9503"]
        assert [e["STREAMER_KAFKA__CLIENT_ID"] for e in envs] == [
            "streamer-0",
            "streamer-1",
            "streamer-2",
        ]

    def test_zero_workers_is_refused(self) -> None:
        with pytest.raises(ValueError, match="--workers"):
            WorkerPool(settings(), 0)


class TestRestarts:
    def test_a_worker_that_dies_is_restarted_with_backoff(
        self, pools: list[WorkerPool], stub: Path, tmp_path: Path
    ) -> None:
        pool = make_pool(pools, stub, [["1", "0.05", str(tmp_path / "x")]])
        pool.start()
        thread, code = run_in_thread(pool)

        wait_until(lambda: pool.workers[0].restarts >= 2, timeout=10)
        pool.request_stop()
        thread.join(10)

        assert pool.workers[0].exit_codes[:2] == [1, 1]
        assert code == [1], "a worker that did not stop cleanly makes the exit code 1"

    def test_workers_that_keep_dying_stop_the_group_with_exit_code_1(
        self, pools: list[WorkerPool], stub: Path, tmp_path: Path
    ) -> None:
        pool = make_pool(
            pools,
            stub,
            [["1", "0.0", str(tmp_path / "a")], ["signal", "0", str(tmp_path / "b")]],
            settings(max_restarts=2),
        )
        pool.start()
        thread, code = run_in_thread(pool)
        thread.join(15)

        assert code == [1]
        assert pool.failure is not None
        assert "max_restarts=2" in pool.failure
        assert pool.workers[0].restarts == 2
        # The healthy worker was asked to drain.
        assert (tmp_path / "b").read_text().splitlines() == ["ready", "SIGTERM"]

    def test_a_configuration_error_is_not_restarted_and_exits_2(
        self, pools: list[WorkerPool], stub: Path, tmp_path: Path
    ) -> None:
        pool = make_pool(pools, stub, [["2", "0.0", str(tmp_path / "a")]])
        pool.start()
        thread, code = run_in_thread(pool)
        thread.join(10)

        assert code == [2]
        assert pool.workers[0].restarts == 0


class TestSignals:
    def test_the_first_signal_is_forwarded_once_and_a_clean_drain_exits_0(
        self, pools: list[WorkerPool], stub: Path, tmp_path: Path
    ) -> None:
        outs = [tmp_path / "a", tmp_path / "b"]
        pool = make_pool(pools, stub, [["signal", "0", str(o)] for o in outs])
        pool.start()
        wait_until(lambda: all(o.exists() for o in outs), timeout=10)
        thread, code = run_in_thread(pool)

        pool.signals.handle(signal.SIGINT, None)
        thread.join(10)

        assert code == [0]
        assert [o.read_text().splitlines() for o in outs] == [["ready", "SIGINT"]] * 2

    def test_a_second_signal_is_forwarded_too(
        self, pools: list[WorkerPool], stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("STUB_SIGNALS", "2")
        out = tmp_path / "a"
        pool = make_pool(pools, stub, [["signal", "0", str(out)]])
        pool.start()
        wait_until(out.exists, timeout=10)
        thread, code = run_in_thread(pool)

        pool.signals.handle(signal.SIGTERM, None)
        wait_until(lambda: "SIGTERM" in out.read_text(), timeout=10)
        pool.signals.handle(signal.SIGTERM, None)
        thread.join(10)

        assert out.read_text().splitlines() == ["ready", "SIGTERM", "SIGTERM"]
        assert code == [0]


EXPOSITION = """\
# HELP streamer_records_consumed_total records taken
# TYPE streamer_records_consumed_total counter
streamer_records_consumed_total {consumed}
# HELP streamer_committed_offset the last committed offset
# TYPE streamer_committed_offset gauge
streamer_committed_offset{{topic="in",partition="{partition}"}} {offset}
"""


class TestMetrics:
    def pool_with_workers(self, bodies: dict[int, str]) -> WorkerPool:
        pool = WorkerPool(settings(), len(bodies), metrics_ports=[0] * len(bodies))
        for worker in pool.workers:
            worker.process = _Running()  # type: ignore[assignment]

        def scrape(path: str, worker: Worker) -> tuple[int, bytes]:
            body = bodies[worker.index]
            return (200, body.encode()) if body else (0, b"")

        pool.scrape = scrape  # type: ignore[method-assign]
        return pool

    def test_the_parent_serves_every_workers_samples_with_a_worker_label(self) -> None:
        pool = self.pool_with_workers(
            {
                0: EXPOSITION.format(consumed=10, partition=0, offset=7),
                1: EXPOSITION.format(consumed=32, partition=1, offset=9),
            }
        )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Aggregate(pool))

        text = generate_latest(registry).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}

        consumed = {
            s.labels["worker"]: s.value for s in families["streamer_records_consumed"].samples
        }
        assert consumed == {"0": 10.0, "1": 32.0}
        assert text.count("# TYPE streamer_records_consumed_total counter") == 1
        assert (
            registry.get_sample_value(
                "streamer_committed_offset", {"topic": "in", "partition": "1", "worker": "1"}
            )
            == 9.0
        )
        assert registry.get_sample_value("streamer_workers_alive") == 2.0
        assert registry.get_sample_value("streamer_worker_restarts_total", {"worker": "0"}) == 0.0

    def test_a_worker_that_does_not_answer_is_left_out(self) -> None:
        pool = self.pool_with_workers(
            {0: EXPOSITION.format(consumed=5, partition=0, offset=1), 1: ""}
        )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Aggregate(pool))

        assert registry.get_sample_value("streamer_records_consumed_total", {"worker": "0"}) == 5.0
        assert registry.get_sample_value("streamer_records_consumed_total", {"worker": "1"}) is None

    def test_health_is_ok_only_when_every_worker_is_healthy(self) -> None:
        pool = WorkerPool(
            build_settings(
                {
                    "kafka": {"input_topic": "in", "output_topic": "out"},
                    "metrics": {"host": "127.0.0.1", "port": 0},
                },
                environ={},
            ),
            2,
            metrics_ports=[0, 0],
        )
        for worker in pool.workers:
            worker.process = _Running()  # type: ignore[assignment]
        answers = {0: (200, b'{"status": "ok"}'), 1: (503, b'{"status": "failing"}')}
        pool.scrape = lambda path, worker: answers[worker.index]  # type: ignore[method-assign]
        server = serve_metrics(pool)
        assert server is not None
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
            with pytest.raises(urllib.error.HTTPError) as failing:
                urllib.request.urlopen(url, timeout=5)
            assert failing.value.code == 503
            assert json.loads(failing.value.read())["workers"]["1"] == {"status": "failing"}

            answers[1] = (200, b'{"status": "ok"}')
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
        finally:
            server.shutdown()
            server.server_close()


class _Running:
    """A process stand-in that is always running."""

    pid = 0
    returncode = None

    def poll(self) -> None:
        return None


def test_the_restart_backoff_doubles(pools: list[WorkerPool], stub: Path, tmp_path: Path) -> None:
    pool = make_pool(pools, stub, [["1", "0.0", str(tmp_path / "a")]])
    pool.start()
    started = time.monotonic()
    thread, _code = run_in_thread(pool)
    wait_until(lambda: pool.workers[0].restarts >= 3, timeout=10)
    pool.request_stop()
    thread.join(10)

    # 0.05 + 0.1 + 0.1 s of backoff at least, plus three process starts.
    assert time.monotonic() - started >= 0.25

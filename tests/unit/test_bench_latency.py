"""benchmarks/latency.py's quantiles: what (c) of `make bench` reports for a row."""

from __future__ import annotations

import importlib.util
import math
import queue
import sys
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

LATENCY = Path(__file__).resolve().parents[2] / "benchmarks" / "latency.py"


def _load(name: str, path: Path) -> ModuleType:
    """A script of benchmarks/ as a module, under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # bench.py's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def latency_module() -> ModuleType:
    return _load("bench_latency", LATENCY)


def test_the_first_tenth_is_warm_up_and_a_duplicate_output_counts_once() -> None:
    quantiles = latency_module()._quantiles
    # 20 inputs created 1 ms apart; each seen 10 ms later, input 5 twice (the later copy ignored).
    times = {(0, offset): 1000 + offset for offset in range(20)}
    rows = [["0", str(o), f"{1010 + o}.0", "-"] for o in range(20)]
    rows.append(["0", "5", "9999.0", "-"])
    result = quantiles(rows, times)
    assert result["answered"] == 20
    assert (result["p50"], result["p99"], result["max"]) == (10.0, 10.0, 10.0)


def test_an_input_without_an_output_is_infinitely_late() -> None:
    quantiles = latency_module()._quantiles
    times = {(1, offset): 1000 + offset for offset in range(100)}
    rows = [["1", str(o), f"{1020 + o}.0", "-"] for o in range(98)]
    result = quantiles(rows, times)
    assert result["answered"] == 98
    assert result["p50"] == 20.0
    assert math.isinf(result["max"])
    assert math.isinf(result["p99"])


def test_the_median_of_the_first_and_last_third_shows_a_broker_that_fell_behind() -> None:
    quantiles = latency_module()._quantiles
    # 100 inputs created 1 ms apart (the first 10 are the warm-up); latency 10 ms, then
    # 100 ms for those created in the last third of the measured time (offsets 70 on).
    times = {(0, offset): 1000 + offset for offset in range(100)}
    rows = [["0", str(o), f"{1000 + o + (100 if o >= 70 else 10)}.0", "-"] for o in range(100)]
    result = quantiles(rows, times)
    assert (result["p50_first_third"], result["p50_last_third"]) == (10.0, 100.0)
    assert "hop1_p50" not in result  # the output's CreateTime was not kept


def test_the_hops_split_at_the_outputs_create_time() -> None:
    quantiles = latency_module()._quantiles
    # Each input's output produced 7 ms after its CreateTime and seen 5 ms later.
    times = {(2, offset): 1000 + offset for offset in range(50)}
    rows = [["2", str(o), f"{1012 + o}.0", str(1007 + o)] for o in range(50)]
    result = quantiles(rows, times)
    assert (result["hop1_p50"], result["hop2_p50"]) == (7.0, 5.0)
    assert result["p50_first_third"] == result["p50_last_third"] == 12.0


def _bench() -> ModuleType:
    return _load("bench_for_latency", LATENCY.parent / "bench.py")


def _result(p50: float, p99: float) -> dict[str, object]:
    return {
        "p50": p50,
        "p95": p99 - 1,
        "p99": p99,
        "max": p99 + 1,
        "answered": 10,
        "sent": 10,
        "cpu_system": 0.5,
        "cpu_broker": 0.25,
        "exit": 0,
    }


def test_a_kafka_python_row_gives_its_distance_to_the_floor_and_to_its_own_clients() -> None:
    row = _bench()._latency_row(
        "streamer kafka-python",
        2000,
        _result(30.0, 90.0),
        _result(20.0, 70.0),
        _result(27.5, 100.0),
    )

    assert row.value == 90.0
    assert row.note == (
        "p50 30.0, p95 89.0, max 91.0; floor + 20.0 ms at p99, + 10.0 at p50; its client's "
        "pass-through + -10.0 ms at p99, + 2.5 at p50; 10/10 answered; CPU 0.50 core, "
        "broker 0.25; exit 0"
    )


def test_the_rounds_of_a_system_sum_up_as_medians_of_its_distances_to_each_rounds_floor() -> None:
    row = _bench()._latency_summary(
        "streamer confluent", 10000, [(2.0, 30.0), (-1.0, -12.5), (4.5, 8.0)]
    )

    assert row.name == "streamer confluent, 10,000/s, p99 - floor, median of 3 rounds"
    assert row.value == 8.0
    assert row.note == (
        "p50 - floor median +2.0 ms; per round, p99 (p50): +30.0 (+2.0), -12.5 (-1.0), +8.0 (+4.5)"
    )
    assert row.extra["p99_minus_floor"] == [30.0, -12.5, 8.0]


def test_latency_rounds_below_one_are_refused() -> None:
    bench = _bench()
    assert bench.parse_args(["--latency-rounds", "3"]).latency_rounds == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--latency-rounds", "0"])


def test_the_kafka_python_pass_through_is_a_system_of_its_own() -> None:
    assert "passthrough-kafka-python" in latency_module().SYSTEMS


def test_the_kafka_python_probes_run_in_c_only_beside_that_backend() -> None:
    systems = _bench()._latency_systems
    assert systems(["confluent"]) == ["passthrough", "handoffs", "scoring", "streamer-confluent"]
    assert systems(["kafka-python", "confluent"]) == [
        "passthrough",
        "handoffs",
        "scoring",
        "passthrough-kafka-python",
        "handoffs-kafka-python",
        "streamer-kafka-python",
        "streamer-confluent",
    ]


@pytest.mark.parametrize(
    ("system", "client", "handoffs"),
    [
        ("passthrough", None, None),
        ("handoffs", None, "3"),
        ("passthrough-kafka-python", "kafka-python", None),
        ("handoffs-kafka-python", "kafka-python", "3"),
    ],
)
def test_each_pass_through_system_starts_its_loop_with_its_client_and_hops(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    system: str,
    client: str | None,
    handoffs: str | None,
) -> None:
    latency = latency_module()
    commands: list[list[str]] = []
    monkeypatch.setattr(latency.subprocess, "Popen", lambda command, **_: commands.append(command))
    latency._start_system(system, "127.0.0.1:1", "in", "out", tmp_path, {}, 6000)

    (command,) = commands
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert command[1].endswith("passthrough.py")
    assert (options.get("--client"), options.get("--handoffs")) == (client, handoffs)
    assert (options["--topic"], options["--output"]) == ("in", "out")


def test_a_polled_batch_of_either_client_goes_through_every_hop_to_the_producing_step() -> None:
    passthrough = _load("bench_passthrough", LATENCY.parent / "passthrough.py")
    import pykka

    produced: queue.Queue[object] = queue.Queue()
    waits: list[list[float]] = []
    handle = passthrough._chain(3, produced.put, waits)
    polled = {("in", 0): ["record"]}  # kafka-python's poll: records per partition
    try:
        handle(polled)
        handle(["message"])  # confluent's: a list of messages
        assert produced.get(timeout=5) is polled
        assert produced.get(timeout=5) == ["message"]
    finally:
        pykka.ActorRegistry.stop_all()
    assert [len(waited) for waited in waits] == [2, 2, 2]
    assert all(wait >= 0 for waited in waits for wait in waited)


class _Producer:
    """A confluent Producer's surface as the generator uses it, noting each call."""

    made: ClassVar[list[_Producer]] = []
    unacknowledged = 0

    def __init__(self, config: dict[str, object]) -> None:
        self.calls: list[str] = []
        _Producer.made.append(self)

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        self.calls.append("produce")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return _Producer.unacknowledged


def test_the_generator_has_its_first_record_acknowledged_before_its_clock_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An idempotent producer's first record waits for its producer id (0.5 s on Tansu):
    # produced on the clock, a second of records would queue behind it.
    import confluent_kafka

    module = latency_module()
    monkeypatch.setattr(confluent_kafka, "Producer", _Producer)
    _Producer.made.clear()

    sent = module.generate("127.0.0.1:1", "in", rate=2000, seconds=0.02)

    (producer,) = _Producer.made
    assert producer.calls[:2] == ["produce", "flush"]
    assert producer.calls[-1] == "flush"
    assert sent == producer.calls.count("produce") > 1


def test_a_generator_whose_first_record_is_not_acknowledged_stops_before_its_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import confluent_kafka

    module = latency_module()
    monkeypatch.setattr(confluent_kafka, "Producer", _Producer)
    monkeypatch.setattr(_Producer, "unacknowledged", 1)
    _Producer.made.clear()

    with pytest.raises(RuntimeError, match="first record was not acknowledged"):
        module.generate("127.0.0.1:1", "in", rate=2000, seconds=0.02)
    assert _Producer.made[0].calls == ["produce", "flush"]


@pytest.mark.parametrize(
    ("cpus", "given", "expected"),
    [
        ({0, 1}, [], {1}),
        ({0, 1, 2, 3}, [], {3}),
        ({0}, [], None),
        ({0, 1}, ["--latency-broker-cpus", ""], None),
        ({0, 1, 2}, ["--latency-broker-cpus", "0"], {0}),
    ],
)
def test_the_latency_rows_broker_has_a_cpu_to_itself_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
    cpus: set[int],
    given: list[str],
    expected: set[int] | None,
) -> None:
    bench = _bench()
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: cpus)
    assert bench.parse_args(given).latency_broker_cpus == expected


def test_broker_cpus_keep_their_layout_for_the_latency_rows_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = _bench()
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {0, 1})
    args = bench.parse_args(["--broker-cpus", "1"])
    assert (args.broker_cpus, args.latency_broker_cpus) == ({1}, None)


@pytest.mark.parametrize("given", ["0,1", "7", "one"])
def test_latency_broker_cpus_that_leave_no_cpu_or_do_not_exist_are_refused(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    bench = _bench()
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(SystemExit):
        bench.parse_args(["--latency-broker-cpus", given])


def test_a_latency_row_says_where_its_programs_ran() -> None:
    module = latency_module()
    assert module._layout(None, alone=False) == "every program on every CPU"
    assert module._layout({1}, alone=True) == "the broker alone on CPU 1"
    beside = module._layout({1}, alone=False)
    assert beside == "the broker, the generator and the reader on CPU 1"
    result = {**_result(30.0, 90.0), "layout": "the broker alone on CPU 1"}
    row = _bench()._latency_row("pass-through floor", 2000, result, result)
    assert row.note.endswith(
        "; the broker alone on CPU 1; 10/10 answered; CPU 0.50 core, broker 0.25; exit 0"
    )

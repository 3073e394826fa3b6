"""benchmarks/latency.py's quantiles: what (c) of `make bench` reports for a row."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

LATENCY = Path(__file__).resolve().parents[2] / "benchmarks" / "latency.py"


def latency_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_latency", LATENCY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-integration lint format typecheck clean

# MLServer (a real Open Inference Protocol server) for the remote-model tests and
# bench, in a virtualenv of its own: its fastapi/pydantic pins clash with mlflow's.
# About a minute and 0.5 GB, once; the stamp names the versions it installed.
OIP_STAMP := .venv-oip/.installed

# An editable install compiles the state engine's C loop once: a change to it reinstalls.
$(STAMP): pyproject.toml setup.py streamer/core/state/_engine.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(OIP_STAMP): $(STAMP) streamer/devtools/oip_server.py
	$(BIN)/python -c "from pathlib import Path; from streamer.devtools.oip_server import ensure_venv; ensure_venv(Path('.').resolve())"
	touch $(OIP_STAMP)

# The service on the embedded broker with the demo model and a live progress line; Ctrl-C stops.
demo: $(STAMP)
	$(BIN)/streamer demo

# The whole suite: unit tests (no network; CPU-bound, so on both cores) and integration
# tests on the embedded broker (and MLServer for the remote-model tests), one at a time;
# their 30 slowest steps are listed at the end, so that every CI log shows where the time goes.
test: $(STAMP) $(OIP_STAMP)
	$(BIN)/pytest -q -n 2 tests/unit
	$(BIN)/pytest -q --durations=30 tests/integration

test-unit: $(STAMP)
	$(BIN)/pytest -q -n 2 tests/unit

test-integration: $(STAMP) $(OIP_STAMP)
	$(BIN)/pytest -q --durations=30 tests/integration

# streamer against the bare client loops on the embedded broker: throughput, latency,
# memory and scaling, printed as one table (about 10 minutes; --smoke takes one).
.PHONY: bench
bench: $(STAMP) $(OIP_STAMP)
	$(BIN)/python benchmarks/bench.py $(ARGS)

# The window-state engine alone, no broker: records/s, RSS, restore (docs/state.md).
.PHONY: bench-state
bench-state: $(STAMP)
	$(BIN)/python benchmarks/state.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check streamer tests benchmarks
	$(BIN)/ruff format --check streamer tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format streamer tests benchmarks
	$(BIN)/ruff check --fix streamer tests benchmarks

clean:
	rm -rf $(VENV) .venv-oip .pytest_cache .mypy_cache .ruff_cache

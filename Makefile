# imageprep: the two set-up commands are `make demo` and `make test`.
# Both create .venv/ on first use: torch 2.13.0 (CPU build) first, so that the
# project's torch range is already satisfied, then the project with the pinned
# versions in constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
DEMO_OUT ?= demo-output

.PHONY: .venv demo test lint typecheck unit bench clean

.venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: .venv
	$(BIN)/imageprep demo --out $(DEMO_OUT)

lint: .venv
	$(BIN)/ruff check pipeline ops flows tests benchmarks
	$(BIN)/ruff format --check pipeline ops flows tests benchmarks

typecheck: .venv
	$(BIN)/mypy

# Two worker processes (pytest-xdist): the suite waits on servers and child
# processes much of the time, so two workers take ~0.6 of one's wall time on 2
# cores. Each worker runs the flow tests last, with its own Prefect servers.
unit: .venv
	$(BIN)/python -m pytest -n 2

test: lint typecheck unit

bench: .venv
	$(PIP) install --quiet -c constraints.txt -e ".[test,bench]"
	$(BIN)/python benchmarks/bench_stats.py
	$(BIN)/python benchmarks/bench_ops.py
	$(BIN)/python benchmarks/bench_lk.py
	$(BIN)/python benchmarks/bench_tone.py
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_flow.py
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_codecs.py
	$(BIN)/python benchmarks/bench_shard_write.py
	$(BIN)/python benchmarks/bench_floor.py
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bench_file_moments.py
	$(BIN)/python benchmarks/bench_shard_task.py
	$(BIN)/python benchmarks/bench_ceiling.py
	$(BIN)/python benchmarks/bench_write_kernel.py
	$(BIN)/python benchmarks/bench_cli_exit.py
	$(BIN)/python benchmarks/bench_read.py
	$(BIN)/python benchmarks/bench_update.py
	$(BIN)/python benchmarks/bench_s3.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache

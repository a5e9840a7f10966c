# sidestep: two commands matter, `make run` and `make test`; both create .venv/ if it is missing.
# `make serve` is `make run` that leaves the endpoint up until Ctrl-C.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install run serve test lint lint-imports bench bench-rec bench-verify bench-verify-routes bench-ops bench-incremental bench-longdoc bench-lab bench-lab-retrieval bench-soak chaos ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml and installed in the same command as everything that needs it.
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sidestep demo

serve: $(STAMP)
	$(BIN)/sidestep demo --keep-serving

# the layer contracts first (a few seconds), then the suite in two workers (whole files each: a module's
# server starts once); most tests wait on a server or a subprocess, so two workers fit two cores
test: lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: lint-imports
	$(BIN)/ruff check sidestep storage tasks flows serving tests benchmarks

# pyproject.toml [tool.importlinter]: which layer may import which (import-linter, on a staged copy of the
# installed layout: see tests/import_contracts.py)
lint-imports: $(STAMP)
	$(BIN)/python tests/import_contracts.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/rec.py
	$(BIN)/python benchmarks/verify.py
	$(BIN)/python benchmarks/longdoc.py

bench-rec: $(STAMP)
	$(BIN)/python benchmarks/rec.py

bench-verify: $(STAMP)
	$(BIN)/python benchmarks/verify.py
	$(BIN)/python benchmarks/verify_stage.py

bench-verify-routes: $(STAMP)
	$(BIN)/python benchmarks/verify_routes.py

bench-ops: $(STAMP)
	$(BIN)/python benchmarks/ops.py

# document maps on L-Eval (eval-longdoc, cross-fitted) and summarize's share of a real reindex: ~12 min
bench-longdoc: $(STAMP)
	$(BIN)/python benchmarks/longdoc.py

# the gradient lab's planted task: every estimator against the exact gradient, ~2 min
bench-lab: $(STAMP)
	$(BIN)/python benchmarks/lab.py

# the gradient lab's retrieval task on SciFact and msmarco-5k; ROOT: a data root where both are indexed
bench-lab-retrieval: $(STAMP)
	nice -n 5 $(BIN)/python benchmarks/lab_retrieval.py --root $(ROOT)

# incremental nightly (1% of SciFact changed) against a full rebuild
bench-incremental: $(STAMP)
	$(BIN)/python benchmarks/incremental.py

# soak: 30 min of mixed /search + /recommend at 70% of capacity, a nightly every 5 min, one replica kill
bench-soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --minutes 30

# the six fault scenarios (kill -9 x20, replica kill, overload, corrupt index, disk full, hot swap): ~40 min
chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos.py

# a local Prefect server + UI on 127.0.0.1:4200 and a runner serving every deployment
ui: $(STAMP)
	$(BIN)/sidestep deploy

clean:
	rm -rf var .pytest_cache

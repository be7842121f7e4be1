# Every target sets up .venv itself (idempotent), so a fresh clone needs nothing but `make demo` / `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench soak load clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || ( $(PY) -m pip install -q uv >/dev/null 2>&1 && $(PY) -m uv venv -q -p $(PY) $(VENV) ) || $(PY) -m venv $(VENV)
	@if $(PY) -m uv --version >/dev/null 2>&1; then \
		$(PY) -m uv pip install -q --python $(BIN)/python -e '.[dev]'; \
	else \
		$(BIN)/python -m pip install -q -e '.[dev]'; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m modelfetch.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

test: lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_transfer.py
	$(BIN)/python benchmarks/bench_fleet.py
	$(BIN)/python benchmarks/bench_mirror.py --modes direct,mirror,warm
	$(BIN)/python benchmarks/bench_kill.py

# The long chaos soak (a bounded ~20 s version runs inside `make test`). SOAK_SECONDS sets its length.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	MODELFETCH_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -q -m slow tests/test_soak.py -p no:cacheprovider -s

load: $(STAMP)
	$(BIN)/python benchmarks/load.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

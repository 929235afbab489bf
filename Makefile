# Every target creates .venv and installs what it needs, so a fresh clone works as is.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench redis cluster browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/meterguard demo

redis:
	scripts/ensure-redis.sh

cluster:
	scripts/redis-cluster.sh start

# The dashboard test drives Debian's chromium (never a downloaded browser); it skips, naming the
# package, only where the package cannot be installed.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium could not be installed: the dashboard test will skip"

test: $(STAMP) redis cluster browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# Bench-only tools: the peer arms (slowapi), uvicorn's fast loop and parser, a profiler, and wrk
# (Debian's package). Knobs: MG_BENCH_SECONDS, MG_BENCH_ROUNDS, MG_BENCH_ARMS (docs/benchmarks.md).
bench: $(STAMP) redis
	$(BIN)/python -m pip install --quiet 'slowapi>=0.1.9,<0.2' uvloop httptools pyinstrument
	command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m benchmarks

clean:
	scripts/redis-cluster.sh stop || true
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

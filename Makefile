# Every target creates .venv and installs what it needs, so a fresh clone works as is.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench redis cluster browser screenshot compile uncompile test-compiled stop clean

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

# The screenshot in docs/operations.md, from the dashboard test (which otherwise keeps it in its
# temporary directory).
screenshot: $(STAMP) browser
	@if [ -z "$$MG_TEST_REDIS_URL" ]; then scripts/ensure-redis.sh; fi
	MG_DASHBOARD_SCREENSHOT=$(CURDIR)/docs/img/dashboard.png $(BIN)/python -m pytest -q tests/test_dashboard.py

# The suite's shared servers: a Redis on 127.0.0.1:6379 and a Redis Cluster on free ports, each
# started unless the caller names one in MG_TEST_REDIS_URL / MG_TEST_CLUSTER_URL (CONTRIBUTING.md).
# What is started here is recorded in .mg-test/ and keeps running for the next run; `make stop`.
test: $(STAMP) browser
	@if [ -z "$$MG_TEST_REDIS_URL" ]; then scripts/ensure-redis.sh; fi
	@if [ -z "$$MG_TEST_CLUSTER_URL" ]; then scripts/redis-cluster.sh start; fi
	MG_TEST_CLUSTER_URL="$${MG_TEST_CLUSTER_URL:-$$(scripts/redis-cluster.sh url)}" $(BIN)/python -m pytest -q $(TESTS)

# Optional: the request path compiled by mypyc (scripts/compile.py says which modules and why;
# needs gcc and Python's headers). The extension modules sit beside their sources in src/ and are
# imported first; `make uncompile` removes them, and the suite refuses a build older than its
# sources. test-compiled runs the suite (or TESTS="files...") on the compiled build, then removes it.
compile: $(STAMP)
	$(BIN)/python scripts/compile.py

uncompile: $(STAMP)
	$(BIN)/python scripts/compile.py --clean

test-compiled: compile
	$(MAKE) test TESTS="$(TESTS)"; status=$$?; $(MAKE) uncompile; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# Bench-only tools: the peer arms (slowapi; limits >= 4.1 for the sliding window counter), uvicorn's
# fast loop and parser, a profiler, wrk and redis-server (Debian's packages). The harness starts a
# Redis of its own unless MG_BENCH_REDIS names one. Knobs: MG_BENCH_SECONDS, MG_BENCH_ROUNDS,
# MG_BENCH_WARMUP, MG_BENCH_ARMS (docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet 'slowapi>=0.1.9,<0.2' 'limits>=4.1' uvloop httptools pyinstrument
	command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	bash -c '. scripts/_servers.sh && need_redis'
	$(BIN)/python -m benchmarks

# Stops only servers recorded in .mg-test/ by the scripts above, never by port.
stop:
	scripts/stop-servers.sh

clean: stop
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

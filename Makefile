# The two commands of the README: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# The demo's fake provider (`make run`).
FAKE_PROVIDER_PORT ?= 9100

# Test services: PostgreSQL and Redis on this machine unless told otherwise.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/1
# pytest-xdist workers; each has its own test database and Redis database (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: run test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# On a terminal, `make run` logs one short plain line per event; production's default is JSON
# (GATEWAY_LOG_FORMAT, docs/observability.md). `GATEWAY_LOG_FORMAT=json make run` keeps JSON.
run: GATEWAY_LOG_FORMAT ?= plain
run: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo --fake-port $(FAKE_PROVIDER_PORT)
	GATEWAY_LOG_FORMAT=$(GATEWAY_LOG_FORMAT) PORT=$(PORT) $(BIN)/python manage.py run_demo --fake-port $(FAKE_PROVIDER_PORT)

test: $(VENV)/.installed-test
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	@# The deployment files are checked offline with docker-compose's validator and systemd-analyze.
	@[ -x /usr/bin/docker-compose ] && [ -x /usr/bin/systemd-analyze ] || (apt-get update -qq && apt-get install -y -qq docker-compose systemd)
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/python tests/check_services.py
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info

# The benchmark (bench/, docs/performance.md): direct vs gateway vs LiteLLM proxy. Never part of
# `make test`. Installs wrk (Debian) and LiteLLM in its own venv when PyPI is reachable.
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/gateway_bench
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/7
BENCH_ARGS ?=
LITELLM_VENV := bench/.litellm-venv

.PHONY: bench bench-profile

$(LITELLM_VENV)/bin/litellm:
	@($(PYTHON) -m venv $(LITELLM_VENV) && $(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]') \
		|| (echo "LiteLLM could not be installed: the table will have no LiteLLM column"; rm -rf $(LITELLM_VENV))

bench: $(VENV)/.installed
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@$(MAKE) --no-print-directory $(LITELLM_VENV)/bin/litellm || true
	BENCH_DATABASE_URL=$(BENCH_DATABASE_URL) BENCH_REDIS_URL=$(BENCH_REDIS_URL) $(BIN)/python bench/run.py $(BENCH_ARGS)

# The same run with py-spy (a dev tool, not a project dependency) on the gateway's workers.
bench-profile: $(VENV)/.installed
	@[ -x $(BIN)/py-spy ] || $(BIN)/pip install --quiet py-spy
	$(MAKE) --no-print-directory bench BENCH_ARGS="--profile 15 $(BENCH_ARGS)"

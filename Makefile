# airloop — every command a person or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
UV      := $(VENV)/bin/uv
AIRFLOW := $(VENV)/bin/airflow
STATE   := .airloop

export AIRFLOW_HOME := $(CURDIR)
export AIRLOOP_HOME := $(CURDIR)
export PYTHONUNBUFFERED := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Settings (.env, from .env.example) and a profile (PROFILE=postgres: profiles/postgres.env),
# exported to every command. The generated secrets (.airloop/secrets.env) are NOT: the airloop CLI
# reads them and hands each process it starts only the ones it needs (core.settings.SECRET_VARS).
-include .env
ifdef PROFILE
ifeq ($(wildcard profiles/$(PROFILE).env),)
$(error PROFILE=$(PROFILE): no profiles/$(PROFILE).env)
endif
include profiles/$(PROFILE).env
endif
export

.PHONY: help install init demo up down token wrk shell test test-fast lint lock suite check clean bench browser

help: ## list the commands
	@grep -hE '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(UV) pip install --python $(PY) --quiet --compile-bytecode -r requirements.txt
	$(UV) pip install --python $(PY) --quiet --no-deps -e .
	@touch $@

install: $(VENV)/.installed ## create .venv and install the pinned requirements (no-op when done)

.env:
	cp .env.example .env

init: install .env ## set up local state: secrets, Airflow DB, MLflow and monitoring stores
	$(PY) -m airloop.cli init
	@$(MAKE) --no-print-directory _airflow-db

_airflow-db:
	@mkdir -p $(STATE)/airflow
	$(AIRFLOW) db migrate > $(STATE)/airflow/db-migrate.log 2>&1 || (tail -40 $(STATE)/airflow/db-migrate.log; exit 1)

demo: init ## run the whole job on the embedded defaults (data, serving, training, summary)
	@$(MAKE) --no-print-directory _demo

_demo:
	$(PY) -m airloop.cli demo

up: init ## start the Airflow UI, the MLflow UI and serving (Ctrl-C stops them)
	@$(MAKE) --no-print-directory _up

_up:
	$(PY) -m airloop.cli up

token: install .env ## print the default tenant's serving token (TENANT=name for another; ADMIN=1: the admin token)
	@$(PY) -m airloop.cli token $(TENANT) $(if $(ADMIN),--admin)

down: ## stop the background serving process
	$(PY) -m airloop.cli stop-serving

shell: install .env ## open $SHELL with the project's settings (as `. bin/airloop-env`); exit leaves it
	@echo "airloop shell: the settings of $(CURDIR) (bin/airloop-env); exit leaves it"
	@. bin/airloop-env && exec "$${SHELL:-bash}"

# The suite runs its test files on TEST_WORKERS processes (pytest-xdist, one file per worker at a
# time, so a module's fixtures are built once); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install .env browser wrk ## run the whole test suite (unit, DAG integrity, end-to-end) on real services
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30

# The browser tests drive Debian's Chromium (Playwright never downloads one): install it if missing.
browser: ## install Debian's chromium for the browser tests (no-op when /usr/bin/chromium exists)
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium (browser tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }
	@test -x /usr/bin/chromium || { echo "no /usr/bin/chromium: install Debian's chromium package"; exit 1; }

# The serving benchmark drives load with wrk (a separate C process): install Debian's if missing.
wrk: ## install Debian's wrk for the serving benchmark (no-op when it is on PATH)
	@command -v wrk >/dev/null || { echo "installing Debian's wrk (serving benchmark)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q wrk >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q wrk >/dev/null; }; }
	@command -v wrk >/dev/null || { echo "no wrk: install Debian's wrk package"; exit 1; }

test-fast: install .env ## unit and DAG tests only (skip the slow end-to-end runs)
	$(PY) -m pytest -q -m "not e2e"

BENCH ?= $(sort $(notdir $(basename $(wildcard benchmarks/[!_]*.py))))
bench: install wrk ## run the benchmarks (BENCH="parse hpo" for some; estimation installs NannyML once in .airloop/bench-venvs/); JSON figures kept in .airloop/bench/
	@mkdir -p $(STATE)/bench; failed=""; \
	for name in $(BENCH); do \
	  echo "== benchmarks/$$name.py"; \
	  if $(PY) benchmarks/$$name.py > $(STATE)/bench/$$name.out; then \
	    tail -n 1 $(STATE)/bench/$$name.out | tee $(STATE)/bench/$$name.json; \
	  else failed="$$failed $$name"; fi; \
	done; \
	test -z "$$failed" || { echo "benchmarks failed:$$failed (output in $(STATE)/bench/)"; exit 1; }

suite: install ## regenerate the Great Expectations suites in include/gx from the pipeline files
	$(PY) -m airloop.cli suite

check: install ## check the pipeline files against their data and GX suites (PIPELINE=name: one)
	$(PY) -m airloop.cli check $(PIPELINE)

lock: install ## recompile requirements.txt from requirements.in
	$(UV) pip compile requirements.in --python-version 3.11 -o requirements.txt --no-header -q
	sed -i '1i # Full lock compiled from requirements.in for Python 3.11 (make lock). Install with: make install' requirements.txt

clean: down ## remove all local state (.airloop): data, stores, logs
	rm -rf $(STATE)

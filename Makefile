# tongda: developer and CI entry points. GNU make; works on a fresh Debian machine as root.
# `make help` lists the targets. Extra arguments: PYTEST_ARGS='-k x', DEMO_ARGS='-v',
# UP_ARGS='--time-scale 0.1', CHAOS_ARGS='--notifications 10000 --duration-s 600'; PROVIDERS=local runs the demo through the real providers
# against local peers (SMPP+Twilio, SMTP, FCM, SIPp); PYTHON=python3.11 picks the interpreter.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
PROVIDERS ?=
UP_ARGS ?=
CHAOS_ARGS ?=

export PYTHONDONTWRITEBYTECODE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help deps venv demo up down status test test-all pytest lint typecheck bench bench-fsync bench-sms chaos schemas clean intent-eval

help: ## list the targets
	@echo "tongda — make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

deps: ## system packages: redis-server, sip-tester, espeak-ng, sox, prometheus (apt-get, only when missing)
	@if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then \
	  echo "redis-server not found: installing it with apt-get"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	fi
	@if ! command -v sipp >/dev/null 2>&1 || ! command -v espeak-ng >/dev/null 2>&1 \
	  || ! command -v sox >/dev/null 2>&1; then \
	  echo "sipp, espeak-ng or sox not found (SIP voice): installing them with apt-get"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y sip-tester espeak-ng sox; \
	fi
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  echo "prometheus or promtool not found (rules, dashboards, /metrics checks): installing prometheus with apt-get"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
	fi
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
	  echo "$(PYTHON) has no venv/ensurepip: installing python3-venv with apt-get"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; \
	fi

venv: $(STAMP) ## the project's virtualenv (.venv), rebuilt when pyproject.toml or constraints.txt change

$(STAMP): pyproject.toml constraints.txt | deps
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else \
	  "tongda needs Python 3.11; $(PYTHON) is %d.%d (run make PYTHON=/path/to/python3.11)" % v)'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]' -c constraints.txt
	@touch $@

demo: $(STAMP) ## run the scripted demo on its own stack (free ports); PROVIDERS=local: real providers, local peers
	$(PY) -m tools.demo $(if $(PROVIDERS),--providers $(PROVIDERS)) $(DEMO_ARGS)

up: $(STAMP) ## start broker, Redis, router and channels in the background (.run/env, .run/pids)
	$(PY) -m tools.devstack up $(UP_ARGS)

down: ## stop what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m tools.devstack down; else $(PYTHON) -m tools.devstack down; fi

status: ## show what `make up` started and whether it answers
	@if [ -x $(PY) ]; then $(PY) -m tools.devstack status; else $(PYTHON) -m tools.devstack status; fi

test: lint typecheck ## lint + typecheck + the tests not marked slow (the 15 slowest listed)
	@$(MAKE) pytest PYTEST_MARK='not slow' PYTEST_ARGS='--durations=15 $(PYTEST_ARGS)'

test-all: lint typecheck ## lint + typecheck + every test, slow fault-injection suites included
	@$(MAKE) pytest PYTEST_MARK=''

# pytest's exit code 5 means "no test collected"; that is not a failure of the run.
pytest: $(STAMP)
	@rc=0; $(PY) -m pytest $(if $(PYTEST_MARK),-m '$(PYTEST_MARK)') $(PYTEST_ARGS) || rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

lint: $(STAMP) ## ruff check
	$(PY) -m ruff check .

typecheck: $(STAMP) ## mypy (strict; config in pyproject.toml) on shared, services and tools
	$(PY) -m mypy
	$(PY) -m mypy -p tools

bench: $(STAMP) ## throughput/latency benchmark (tools.bench)
	$(PY) -m tools.bench

bench-fsync: $(STAMP) ## the router's throughput with Redis appendfsync always beside everysec (tools.bench_fsync)
	$(PY) -m tools.bench_fsync

bench-sms: $(STAMP) ## SMPP submits/s against the test SMSC beside the rate limit (tools.bench_sms)
	$(PY) -m tools.bench_sms

chaos: $(STAMP) ## fault campaign: kills, drains, Redis -9, broker pause, rebalances; invariants + table (CHAOS_ARGS)
	$(PY) -m tools.chaos $(CHAOS_ARGS)

intent-eval: $(STAMP) ## classify the inquiry corpus; fails below 95% tier accuracy (tools.intent_eval)
	$(PY) -m tools.intent_eval

schemas: $(STAMP) ## export the contract's JSON Schemas (tools.export_schemas)
	$(PY) -m tools.export_schemas

clean: ## stop a running `make up` stack, remove .run, caches and build output (keeps .venv)
	@if [ -f .run/pids ]; then $(MAKE) down; fi
	rm -rf .run .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

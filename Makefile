# asyncinfer — `make help` lists the targets. Everything installs into .venv (and .tools/ for helm).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
MODEL := models/iris.onnx
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[api,worker,model,dev]'
	touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv and install the project with every extra

$(MODEL): models/build_iris.py $(STAMP)
	$(PY) models/build_iris.py --out $@

.PHONY: model
model: $(MODEL) ## build the example iris model (reproducible)

.PHONY: run
run: $(MODEL) ## start Redis (AOF in .data/), the API on :8000 and a worker; Ctrl-C stops all
	$(PY) deploy/local/stack.py

.PHONY: test
test: test-unit test-integration test-chart test-containers ## the whole suite (what CI runs)

.PHONY: test-unit
test-unit: $(MODEL) ## lint (ruff) and pure unit tests (no Redis)
	$(PY) -m ruff check .
	$(PYTEST) tests/unit

.PHONY: test-integration
test-integration: $(MODEL) ## real redis-server, real API and worker processes, fault suite, e2e on a local stack
	$(PYTEST) tests/integration tests/notifier tests/e2e

.PHONY: test-chart
test-chart: tools $(MODEL) ## helm lint --strict, helm template over ci/ scenarios, schema validation, live probe check
	$(PYTEST) tests/chart

.PHONY: e2e
e2e: $(MODEL) ## the HTTP-only e2e suite against E2E_BASE_URL (default: a local stack it starts)
	$(PYTEST) tests/e2e

.PHONY: bench
bench: $(MODEL) ## throughput benchmark against the naive seed-design baseline; prints a table
	$(PY) bench/run.py

.PHONY: bench-chaos
bench-chaos: $(MODEL) ## 10,000 jobs, 2 workers, a worker SIGKILLed every few seconds; prints lost/duplicated
	$(PY) bench/chaos.py

.PHONY: clean
clean: ## remove the venv, tools, built model and local data
	rm -rf $(VENV) .tools .data $(MODEL) .pytest_cache

-include deploy/cluster.mk deploy/containers.mk

# asyncinfer — `make help` lists the targets. Everything installs into .venv (and .tools/ for helm).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
MODEL := models/iris.onnx
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
BENCH_STAMP := $(VENV)/.installed-bench
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# Two installs into one venv, both from hashed locks (requirements/*.txt, `make lock`): what running needs
# (the service, the example model's build, the `asyncinfer` client), then the test toolchain on top.
# Same pins in both, so the second only adds. The project itself is installed editable without build
# isolation: its build backend comes from the lock too, and nothing floats.
$(RUN_STAMP): requirements/run.txt pyproject.toml client/pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes --no-deps -r requirements/run.txt
	$(PIP_INSTALL) --no-deps --no-build-isolation -e . -e ./client
	touch $@

$(STAMP): requirements/dev.txt $(RUN_STAMP)
	$(PIP_INSTALL) --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip check
	touch $@

# `make bench` (and its smoke test): granian, py-spy and the pre-hardening worker's pydantic-settings.
$(BENCH_STAMP): requirements/bench.txt $(STAMP)
	$(PIP_INSTALL) --require-hashes --no-deps -r requirements/bench.txt
	touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the service and the test toolchain, from the locks

$(MODEL): models/build_iris.py $(RUN_STAMP)
	$(PY) models/build_iris.py --out $@

.PHONY: model
model: $(MODEL) ## build the example iris model (reproducible)

.PHONY: run
run: $(MODEL) ## start Redis (AOF in .data/), the API on :8000 and a worker; Ctrl-C stops all (installs only what running needs)
	$(PY) deploy/local/stack.py

.PHONY: test
test: lint typecheck test-unit test-integration test-client test-chart test-security test-ops test-containers ## the whole suite (what CI runs)

.PHONY: lint
lint: $(STAMP) ## ruff (defects, imports, modern syntax, simplifications, stale noqa) and ruff format --check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

.PHONY: format
format: $(STAMP) ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict on api/ jobqueue/ worker/ notifier/ (and the client, configured in its own pyproject)
	$(PY) -m mypy

.PHONY: test-unit
test-unit: $(STAMP) $(MODEL) ## pure unit tests (no Redis)
	$(PYTEST) tests/unit

.PHONY: test-integration
# tests/integration/test_bench.py runs `make bench`'s every step at smoke size: the bench's packages too.
test-integration: $(BENCH_STAMP) $(MODEL) ## real redis-server, real API, worker and notifier processes: scripts, faults, webhooks, OIP, object storage (SeaweedFS), e2e on a local stack
	$(PYTEST) tests/integration tests/faults tests/notifier tests/oip tests/objectstore tests/e2e

.PHONY: test-client
test-client: $(STAMP) $(MODEL) ## the Python SDK and the asyncinfer CLI against a real local stack
	$(PYTEST) tests/client

.PHONY: test-chart
# ops-tools: the PrometheusRule test runs the alerts through promtool (a failure, not a skip, under CI).
test-chart: tools ops-tools $(STAMP) $(MODEL) ## helm lint --strict, helm template over ci/ scenarios, schema validation, live probe check
	$(PYTEST) tests/chart --ignore=tests/chart/test_scanners.py

.PHONY: e2e
e2e: $(STAMP) $(MODEL) ## the HTTP-only e2e suite against E2E_BASE_URL (default: a local stack it starts)
	$(PYTEST) tests/e2e

.PHONY: bench
bench: $(BENCH_STAMP) $(MODEL) ## every performance target against the naive seed design in the same run; one table (QUICK=1: short, WORKER=1: the worker's figures only)
	$(PY) bench/run.py $(if $(QUICK),--quick) $(if $(WORKER),--worker)
	$(if $(WORKER),,$(PY) bench/objects.py $(if $(QUICK),--quick))
	$(if $(WORKER),,$(PY) bench/cluster.py $(if $(QUICK),--quick))

.PHONY: bench-chaos
bench-chaos: $(STAMP) $(MODEL) ## 40,000 jobs, 2 workers, a worker SIGKILLed every 1.5 s; prints lost/duplicated
	$(PY) bench/chaos.py --jobs 40000 --kill-every 1.5

.PHONY: docs
docs: $(STAMP) ## regenerate the README's settings table from jobqueue/settings.py and the chart's Cluster tag table from jobqueue/shards.py
	$(PY) docs/splice.py README.md settings "$$($(PY) -m jobqueue.settings)"
	$(PY) -m jobqueue.shards > deploy/helm/asyncinfer/files/cluster-tags.json

.PHONY: sync-client
sync-client: $(STAMP) ## regenerate the SDK's sync client (client.py) from the asyncio one (aio.py) with unasync
	$(PY) client/generate_sync.py

.PHONY: clean
clean: ## remove the venv, tools, built model and local data
	rm -rf $(VENV) .tools .data $(MODEL) .pytest_cache

-include deploy/cluster.mk deploy/containers.mk deploy/ops.mk deploy/security.mk deploy/requirements.mk

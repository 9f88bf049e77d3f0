# Container images and the container test tier; included by the Makefile (uses VENV, PY, PYTEST).
#
#   make images                                     build both images on the official python:3.11-slim
#   make images BASE_IMAGE=<mirror or local base>   same Dockerfiles, another base
#   make push REGISTRY=ghcr.io/acme                 build, tag and push both images for a real cluster
#   make test-containers                            engine -> local base -> images -> tests -> engine stop

# Debian's CLI when present: it has BuildKit built in, while a newer CLI without buildx has none.
DOCKER ?= $(shell [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker)
IMAGE_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
API_IMAGE ?= asyncinfer-api:$(IMAGE_VERSION)
WORKER_IMAGE ?= asyncinfer-worker:$(IMAGE_VERSION)
BASE_IMAGE ?=
IMAGE_BUILD_ARGS = --build-arg VERSION=$(IMAGE_VERSION) \
	--build-arg REVISION=$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE))

# The default version tags also get :latest (what deploy/compose uses); custom tags stay as given.
also_latest = $(if $(filter asyncinfer-%:$(IMAGE_VERSION),$(1)),-t $(firstword $(subst :, ,$(1))):latest)

.PHONY: images
images: ## build the API and worker images (BASE_IMAGE=... to swap the python:3.11-slim base)
	DOCKER_BUILDKIT=1 $(DOCKER) build $(IMAGE_BUILD_ARGS) -f Dockerfile.worker -t $(WORKER_IMAGE) $(call also_latest,$(WORKER_IMAGE)) .
	DOCKER_BUILDKIT=1 $(DOCKER) build $(IMAGE_BUILD_ARGS) -f Dockerfile.api -t $(API_IMAGE) $(call also_latest,$(API_IMAGE)) .

# A real cluster pulls from a registry: push both images under REGISTRY with the tag the chart defaults
# to (its appVersion), then install with `--set global.imageRegistry=$(REGISTRY)`.
REGISTRY ?=
ifneq ($(filter push,$(MAKECMDGOALS)),)
ifeq ($(strip $(REGISTRY)),)
$(error make push: set REGISTRY, e.g. make push REGISTRY=ghcr.io/acme)
endif
endif

.PHONY: push
push: images ## tag and push both images to REGISTRY (make push REGISTRY=ghcr.io/acme); the chart's global.imageRegistry
	$(DOCKER) tag $(API_IMAGE) $(REGISTRY)/$(API_IMAGE)
	$(DOCKER) tag $(WORKER_IMAGE) $(REGISTRY)/$(WORKER_IMAGE)
	$(DOCKER) push $(REGISTRY)/$(API_IMAGE)
	$(DOCKER) push $(REGISTRY)/$(WORKER_IMAGE)

# engine.sh exits 77 when no engine can run (not root, no Docker): pytest then reports the skip
# itself, in one line. The trap stops only a dockerd that engine.sh started.
.PHONY: test-containers
test-containers: $(STAMP) ## build both images on a local base and run them as containers (Redis, API, 2 workers)
	@set -euo pipefail; \
	rc=0; host="$$(deploy/docker/engine.sh start)" || rc=$$?; \
	if [ $$rc -eq 77 ]; then exec $(PYTEST) tests/containers; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	export DOCKER_HOST="$$host"; \
	trap 'deploy/docker/engine.sh stop' EXIT; \
	base="$$(deploy/docker/base-image.sh)"; \
	$(MAKE) --no-print-directory images BASE_IMAGE="$$base" API_IMAGE=$(API_IMAGE)-local WORKER_IMAGE=$(WORKER_IMAGE)-local; \
	ASYNCINFER_BASE_IMAGE="$$base" ASYNCINFER_API_IMAGE=$(API_IMAGE)-local ASYNCINFER_WORKER_IMAGE=$(WORKER_IMAGE)-local \
		$(PYTEST) tests/containers

.PHONY: engine-stop
engine-stop: ## stop a dockerd left running by deploy/docker/engine.sh
	deploy/docker/engine.sh stop

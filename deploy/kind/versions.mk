# Pinned versions of the kind cluster path (included by deploy/cluster.mk).
#
# kind v0.25.0 built the node image below (Kubernetes 1.31.2), which is inside KEDA 2.16's supported
# range (1.29-1.31) and ingress-nginx 1.14's (1.30-1.34). The node image itself is pinned in
# deploy/kind/cluster.yaml by digest.
KIND_VERSION ?= v0.25.0
KIND_NODE_K8S_VERSION := 1.31.2
INGRESS_NGINX_VERSION ?= controller-v1.14.5
INGRESS_NGINX_MANIFEST ?= https://raw.githubusercontent.com/kubernetes/ingress-nginx/$(INGRESS_NGINX_VERSION)/deploy/static/provider/kind/deploy.yaml

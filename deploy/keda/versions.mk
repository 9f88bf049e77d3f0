# Pinned KEDA for the kind path (included by deploy/cluster.mk). 2.16.1 is the release whose CRDs the
# chart tests validate ScaledObject/TriggerAuthentication against (cloudcoil-models-keda 2.16.1.0).
KEDA_CHART_REPO ?= https://kedacore.github.io/charts
KEDA_CHART_VERSION ?= 2.16.1
KEDA_NAMESPACE ?= keda

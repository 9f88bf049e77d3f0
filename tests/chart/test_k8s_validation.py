"""Every rendered object validated against its real schema: Kubernetes' own (strict, two versions),
KEDA's and prometheus-operator's typed CRD models (unknown fields forbidden); a kind none knows fails."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate.utils as kv
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule, ServiceMonitor
from pydantic import BaseModel, ValidationError

from tests.chart.render import ROOT, SCENARIOS, rendered

# The kind node's minor (deploy/kind/versions.mk) and the newest kubectl we ship (v1.34).
KIND_K8S = re.search(r"KIND_NODE_K8S_VERSION := (\d+\.\d+)\.\d+", (ROOT / "deploy/kind/versions.mk").read_text())[1]
K8S_VERSIONS = (f"{KIND_K8S}.0", "1.34.0")
CORE_KINDS = {
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "StatefulSet",
    "Ingress",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Pod",
    # the Redis Cluster's bootstrap (redis.architecture=cluster)
    "Job",
    # the workers' identity for their pod-deletion-cost (scaleIn.idleFirst)
    "ServiceAccount",
    "Role",
    "RoleBinding",
}
KEDA_MODELS: dict[str, type[BaseModel]] = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}
# prometheus-operator v0.80 (the newest cloudcoil models that install on Python 3.11).
MONITORING_MODELS: dict[str, type[BaseModel]] = {
    "ServiceMonitor": ServiceMonitor,
    "PodMonitor": PodMonitor,
    "PrometheusRule": PrometheusRule,
}
# Metadata keys KEDA 2.16's redis scaler reads from a trigger (pkg/scalers/redis_scaler.go, the
# `keda:"name=..."` tags with order=triggerMetadata; *FromEnv variants resolve from the container env).
REDIS_TRIGGER_KEYS = {
    "address",
    "addresses",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "username",
    "usernameFromEnv",
    "passwordFromEnv",
    "sentinelUsername",
    "sentinelPassword",
    "sentinelMaster",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}


class UnknownKind(AssertionError):
    pass


def _unknown_fields(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Paths present in the input but not in the model's dump: the fields the model does not know."""
    if isinstance(given, dict) and isinstance(parsed, dict):
        missing = [f"{path}.{k}" for k in given if k not in parsed]
        return missing + [p for k in given if k in parsed for p in _unknown_fields(given[k], parsed[k], f"{path}.{k}")]
    if isinstance(given, list) and isinstance(parsed, list):
        return [p for i, (g, q) in enumerate(zip(given, parsed, strict=False)) for p in _unknown_fields(g, q, f"{path}[{i}]")]
    return [] if given == parsed else [f"{path} (value {given!r} became {parsed!r})"]


def validate_typed(obj: dict[str, Any], model: type[BaseModel]) -> None:
    """Validate against a generated CRD model; the round trip forbids fields the model does not know."""
    gvk = model.gvk()  # type: ignore[attr-defined]
    assert (obj["apiVersion"], obj["kind"]) == (gvk.api_version, gvk.kind)
    # The generated models ignore extra fields; a lossless round trip is what forbids them.
    dumped = model.model_validate(obj).model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = _unknown_fields(obj, dumped)
    assert not unknown, f"{obj['kind']} has fields its CRD does not know: {unknown}"


def validate_keda(obj: dict[str, Any]) -> None:
    validate_typed(obj, KEDA_MODELS[obj["kind"]])
    if obj["kind"] == "ScaledObject":
        for trigger in obj["spec"]["triggers"]:
            # redis, redis-sentinel and redis-cluster are one scaler in KEDA (redis_scaler.go), reading the same keys.
            assert trigger["type"] in ("redis", "redis-sentinel", "redis-cluster")
            extra = set(trigger["metadata"]) - REDIS_TRIGGER_KEYS
            assert not extra, f"redis trigger {trigger.get('name')}: unknown metadata keys {sorted(extra)}"
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), "trigger metadata values are strings"


def validate(obj: dict[str, Any]) -> None:
    """Validate one object against the schema of its kind, or fail for a kind we have none for."""
    if obj["kind"] in KEDA_MODELS:
        validate_keda(obj)
    elif obj["kind"] in MONITORING_MODELS:
        validate_typed(obj, MONITORING_MODELS[obj["kind"]])
    elif obj["kind"] in CORE_KINDS:
        for version in K8S_VERSIONS:
            kv.validate(obj, version, strict=True)
    else:
        raise UnknownKind(f"no schema for {obj['apiVersion']} {obj['kind']}")


@pytest.fixture(scope="session")
def validated() -> set[str]:
    """Objects already validated in this session: the same object often renders identically in
    several scenarios, and is validated once."""
    return set()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_are_valid(scenario: str, validated: set[str]) -> None:
    for obj in rendered(scenario).objects:
        key = json.dumps(obj, sort_keys=True)
        if key not in validated:
            try:
                validate(obj)
            except Exception as exc:
                raise AssertionError(f"{scenario}: {obj['kind']} {obj['metadata']['name']}: {exc}") from exc
            validated.add(key)


def test_every_scenario_renders_only_known_kinds() -> None:
    kinds = {o["kind"] for scenario in sorted(SCENARIOS) for o in rendered(scenario).objects}
    assert kinds <= CORE_KINDS | set(KEDA_MODELS) | set(MONITORING_MODELS)
    assert {"ScaledObject", "TriggerAuthentication", "Ingress", "StatefulSet", "NetworkPolicy"} | set(MONITORING_MODELS) <= kinds


def test_an_unknown_kind_fails() -> None:
    with pytest.raises(UnknownKind):
        validate({"apiVersion": "example.com/v1", "kind": "Frobnicator", "metadata": {"name": "x"}})


def test_strict_validation_catches_an_unknown_core_field() -> None:
    deployment = copy.deepcopy(rendered("default").one("Deployment", "api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        validate(deployment)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda so: so["spec"].__setitem__("minReplicas", 0),
        lambda so: so["spec"]["advanced"]["scalingModifiers"].__setitem__("expression", "a"),
        lambda so: so["spec"]["triggers"][0].__setitem__("auth", {}),
        lambda so: so["spec"]["triggers"][0]["metadata"].__setitem__("listname", "typo"),
        lambda so: so["spec"].__setitem__("pollingInterval", "often"),
    ],
    ids=["unknown-spec-field", "unknown-modifier-field", "unknown-trigger-field", "unknown-redis-key", "mistyped"],
)
def test_keda_validation_rejects_unknown_or_mistyped_fields(mutate) -> None:
    so = copy.deepcopy(rendered("default").one("ScaledObject"))
    mutate(so)
    with pytest.raises((AssertionError, ValidationError)):  # unknown -> round trip; mistyped -> pydantic
        validate(so)


def test_monitoring_validation_rejects_an_unknown_field() -> None:
    monitor = copy.deepcopy(rendered("monitoring-on").one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    with pytest.raises(AssertionError, match="scrapeEvery"):
        validate(monitor)

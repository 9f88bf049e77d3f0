"""Security defaults of the rendered chart: NetworkPolicies for every pod, hardened containers running
as UID >= 10000, generated credentials that are locked or stable in offline renders."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from tests.chart.render import (
    CHART,
    NAMESPACE,
    SCENARIOS,
    Rendered,
    all_containers,
    component_of,
    helm,
    pod_labels,
    pod_spec,
    rendered,
    template,
    template_text,
    workloads,
)

ALL = sorted(SCENARIOS)


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def policies_for(r: Rendered, workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in r.of_kind("NetworkPolicy") if selects(p, pod_labels(workload))]


@pytest.mark.parametrize("scenario", ALL)
def test_every_pod_is_behind_the_default_deny_and_a_policy_of_its_own(scenario: str) -> None:
    r = rendered(scenario)
    deny = r.one("NetworkPolicy", "default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    for w in workloads(r):
        policies = policies_for(r, w)
        assert deny in policies, f"{w['metadata']['name']} is not behind the default deny"
        component = pod_labels(w)["app.kubernetes.io/component"]
        if component != "test":  # the test pod takes no traffic at all: the default deny is its policy
            assert len(policies) == 2, f"{w['metadata']['name']}: {[p['metadata']['name'] for p in policies]}"


def peers(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return rule["from"]


@pytest.mark.parametrize("scenario", ALL)
def test_api_http_from_the_ingress_controller_and_the_release_metrics_from_monitoring_only(scenario: str) -> None:
    r = rendered(scenario)
    values = r.one("NetworkPolicy", "api")["spec"]["ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in values}
    assert set(by_port) == {"http", "metrics"}
    (metrics_peer,) = peers(by_port["metrics"])
    assert set(metrics_peer) == {"namespaceSelector"} and "podSelector" not in metrics_peer
    if r.one("Service", "api")["spec"]["type"] != "ClusterIP":  # node and client addresses: open (issue #22.1)
        assert "from" not in by_port["http"]
        return
    http_peers = peers(by_port["http"])
    assert http_peers[0]["namespaceSelector"]["matchLabels"]  # the ingress controller's namespace
    assert http_peers[1] == {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "ci"}}}


@pytest.mark.parametrize("scenario", ALL)
def test_workers_and_notifier_take_nothing_but_monitoring_on_their_health_port(scenario: str) -> None:
    r = rendered(scenario)
    for component in ("worker", "notifier"):
        (rule,) = r.one("NetworkPolicy", component)["spec"]["ingress"]
        assert rule["ports"] == [{"port": "health", "protocol": "TCP"}]
        (peer,) = rule["from"]
        assert list(peer) == ["namespaceSelector"]
    # No Service exposes a worker or the notifier.
    for svc in r.of_kind("Service"):
        assert svc["metadata"]["labels"]["app.kubernetes.io/component"] in ("api", "redis")


@pytest.mark.parametrize("scenario", ALL)
def test_only_this_releases_services_and_keda_reach_redis(scenario: str) -> None:
    r = rendered(scenario)
    if scenario.startswith("external-"):
        assert r.maybe("NetworkPolicy", "redis") is None, "no Redis pod in the chart: nothing to protect"
        return
    policy = r.one("NetworkPolicy", "redis")
    redis_labels = r.one("StatefulSet")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == redis_labels
    rule, *among_redis_pods = policy["spec"]["ingress"]
    local = [s for s in rule["from"] if "namespaceSelector" not in s]
    assert {s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in local} == {"api", "worker", "notifier"}
    assert all(s["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "ci" for s in local)
    keda = [s for s in rule["from"] if "namespaceSelector" in s]
    assert len(keda) == (1 if r.maybe("ScaledObject") else 0)
    # The same clients reach the Sentinels (replication); the Redis pods reach each other on both ports.
    ports = [
        {"port": "redis", "protocol": "TCP"},
        *([{"port": "sentinel", "protocol": "TCP"}] if scenario == "replication" else []),
    ]
    assert rule["ports"] == ports
    if scenario == "replication":
        (peers_rule,) = among_redis_pods
        assert peers_rule == {"from": [{"podSelector": {"matchLabels": redis_labels}}], "ports": ports}
    else:
        assert among_redis_pods == []


def test_restricted_notifier_egress_blocks_cluster_ranges() -> None:
    policy = rendered("production").one("NetworkPolicy", "notifier")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (public,) = [rule for rule in policy["spec"]["egress"] if "ipBlock" in rule.get("to", [{}])[0]]
    block = public["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["except"])
    assert "Egress" not in rendered("default").one("NetworkPolicy", "notifier")["spec"]["policyTypes"]


@pytest.mark.parametrize("scenario", ALL)
def test_every_container_runs_hardened_as_uid_10000_or_more(scenario: str) -> None:
    for w in workloads(rendered(scenario)):
        spec = pod_spec(w)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["runAsUser"] >= 10000 and pod["runAsGroup"] >= 10000 and pod["fsGroup"] >= 10000
        # Only the workers mount a token: their own ServiceAccount may get/patch pods (pod-deletion-cost,
        # tests/chart/test_scale_in.py); every other pod has none.
        assert spec["automountServiceAccountToken"] is (component_of(w) == "worker" and "serviceAccountName" in spec)
        for c in all_containers(w):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == pod["runAsUser"] >= 10000, c["name"]
            assert sc["runAsGroup"] >= 10000
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
            # Read-only root: whatever the process writes must be a mounted volume.
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, c["name"]
            if w["kind"] == "StatefulSet":
                assert "/data" in mounts


@pytest.mark.parametrize("scenario", ALL)
def test_two_offline_renders_are_identical(scenario: str) -> None:
    assert template_text(SCENARIOS[scenario]) == template_text(SCENARIOS[scenario])


def secret_data(r: Rendered, component: str) -> dict[str, str]:
    secret = r.one("Secret", component)
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_offline_tokens_are_locked_and_flagged() -> None:
    r = rendered("default")
    lines = [line.split() for line in secret_data(r, "auth")["tokens"].splitlines()]
    assert [(name, role) for name, role, _ in lines] == [("admin", "admin"), ("helm-test", "client")]
    assert all(token == "sha256:" + "0" * 64 for _, _, token in lines), "no usable token in an offline render"
    assert r.one("Secret", "auth")["metadata"]["annotations"]["asyncinfer.io/offline-render"] == "locked"


def test_offline_redis_and_webhook_secrets_are_stable_per_release_and_flagged() -> None:
    r = rendered("default")
    password = secret_data(r, "redis")["redis-password"]
    webhook = secret_data(r, "webhook")["webhook-secret"]
    assert len(password) == 32 and webhook.startswith("whsec_")
    base64.b64decode(webhook.removeprefix("whsec_"), validate=True)  # Standard Webhooks: base64 after the prefix
    for component in ("redis", "webhook"):
        assert r.one("Secret", component)["metadata"]["annotations"]["asyncinfer.io/offline-render"] == "derived-not-secret"
    # Another release gets another value (derived from namespace and release name).
    other = Rendered("other", tuple(o for o in yaml.safe_load_all(helm("template", "other", str(CHART), "-n", NAMESPACE)) if o))
    assert secret_data(other, "redis")["redis-password"] != password
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret" .ctx.Release.Namespace .name' in text, "live installs reuse the Secret in the cluster"


def test_an_explicit_redis_password_is_used_verbatim() -> None:
    objs = template(sets=("redis.auth.password=s3cretPassw0rd",))
    (secret,) = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-redis")]
    assert base64.b64decode(secret["data"]["redis-password"]).decode() == "s3cretPassw0rd"
    assert "annotations" not in secret["metadata"]


def test_auth_off_renders_no_tokens_and_mounts_none() -> None:
    objs = template(sets=("auth.enabled=false",))
    assert not [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-auth")]
    (api,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-api")]
    assert "AUTH_TOKENS_FILE" not in {e["name"] for e in pod_spec(api)["containers"][0]["env"]}

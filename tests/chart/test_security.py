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
    HelmError,
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
    elif scenario == "cluster":
        # The bootstrap Job joins the nodes; the nodes reach each other on the client and cluster bus ports.
        bootstrap_rule, peers_rule = among_redis_pods
        job_labels = r.one("Job")["spec"]["template"]["metadata"]["labels"]
        (bootstrap_peer,) = bootstrap_rule["from"]
        assert bootstrap_peer["podSelector"]["matchLabels"].items() <= job_labels.items() and bootstrap_rule["ports"] == ports
        assert peers_rule == {
            "from": [{"podSelector": {"matchLabels": redis_labels}}],
            "ports": [*ports, {"port": "cluster-bus", "protocol": "TCP"}],
        }
        bus = {p["name"]: p["containerPort"] for p in pod_spec(r.one("StatefulSet"))["containers"][0]["ports"]}
        assert bus == {"redis": 6379, "cluster-bus": 16379}
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


def egress_of(r: Rendered, component: str) -> list[dict[str, Any]]:
    policy = r.one("NetworkPolicy", component)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    return rules


def destinations(rules: list[dict[str, Any]]) -> list[tuple[str, tuple[int, ...]]]:
    """Each rule as (where, ports): 'any' for a rule without `to`, else its cidrs or its pod component."""
    found = []
    for rule in rules:
        ports = tuple(sorted(p["port"] for p in rule["ports"]))
        for peer in rule.get("to", [{"any": True}]):
            if "ipBlock" in peer:
                assert "except" not in peer["ipBlock"]
                found.append((peer["ipBlock"]["cidr"], ports))
            elif "podSelector" in peer:
                found.append((peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"], ports))
            else:
                found.append(("any", ports))
    return found


def test_restricted_api_and_worker_egress_allow_exactly_dns_redis_the_store_and_the_kubernetes_api() -> None:
    r = rendered("object-store")  # restrict on, objectStore.egressCidrs, scaleIn.idleFirst (the default)
    dns, redis_pods, store = ("any", (53, 53)), ("redis", (6379,)), ("203.0.113.0/24", (443,))
    assert destinations(egress_of(r, "api")) == [dns, redis_pods, store]
    assert destinations(egress_of(r, "worker")) == [dns, redis_pods, store, ("172.18.0.2/32", (443, 6443))]
    # off by default: no egress rules at all, as before
    for component in ("api", "worker"):
        assert rendered("default").one("NetworkPolicy", component)["spec"]["policyTypes"] == ["Ingress"]


def test_restricted_egress_follows_the_redis_topology_the_store_port_and_scale_in() -> None:
    on = ("networkPolicy.egress.restrict=true", "networkPolicy.egress.kubernetesApiCidrs[0]=10.0.0.1/32")
    replication = Rendered("r", tuple(template(SCENARIOS["replication"], sets=on)))
    assert ("redis", (6379, 26379)) in destinations(egress_of(replication, "api"))
    external = Rendered("e", tuple(template(SCENARIOS["external-sentinel"], sets=on)))
    cidrs = external.one("NetworkPolicy", "api")["spec"]["egress"][1]["to"]
    assert [c["ipBlock"]["cidr"] for c in cidrs] == yaml.safe_load(SCENARIOS["external-sentinel"].read_text())["redis"][
        "external"
    ]["egressCidrs"]
    store = (
        "objectStore.url=s3://jobs/x", "objectStore.endpoint=http://minio.storage:9000",
        "objectStore.egressCidrs[0]=10.1.0.0/16", "scaleIn.idleFirst=false", "networkPolicy.egress.restrict=true",
    )  # fmt: skip
    r = Rendered("s", tuple(template(sets=store)))
    assert destinations(egress_of(r, "worker"))[2:] == [("10.1.0.0/16", (9000,))]  # no Kubernetes API without idleFirst
    plain_http = Rendered("h", tuple(template(sets=(*store, "objectStore.endpoint=http://minio.storage"))))
    assert destinations(egress_of(plain_http, "api"))[2:] == [("10.1.0.0/16", (80,))]


@pytest.mark.parametrize(
    ("sets", "names"),
    [
        (("objectStore.url=s3://jobs/x", "scaleIn.idleFirst=false"), "objectStore.egressCidrs"),
        ((), "networkPolicy.egress.kubernetesApiCidrs"),  # scaleIn.idleFirst is on by default
    ],
)
def test_restricted_egress_refuses_to_render_without_the_ranges_it_needs(sets: tuple[str, ...], names: str) -> None:
    with pytest.raises(HelmError, match=names.replace(".", r"\.")):
        template(sets=("networkPolicy.egress.restrict=true", *sets))


def test_restricted_egress_needs_a_rule_for_url_models_and_takes_extra_rules() -> None:
    url_models = SCENARIOS["url-source"]
    on = ("networkPolicy.egress.restrict=true", "scaleIn.idleFirst=false")
    with pytest.raises(HelmError, match=r"networkPolicy\.egress\.extra"):
        template(url_models, sets=on)
    extra = (
        "networkPolicy.egress.extra[0].to[0].ipBlock.cidr=198.51.100.7/32",
        "networkPolicy.egress.extra[0].ports[0].port=443",
    )
    r = Rendered("u", tuple(template(url_models, sets=(*on, *extra))))
    assert destinations(egress_of(r, "api"))[-1] == ("198.51.100.7/32", (443,))


def test_restricted_api_and_worker_egress_reach_the_tracing_collector_only_with_tracing_on() -> None:
    on = ("networkPolicy.egress.restrict=true", "scaleIn.idleFirst=false")
    tracing = ("tracing.enabled=true", "tracing.endpoint=http://otel-collector.observability:4318")
    collector = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}],
                 "ports": [{"port": 4318, "protocol": "TCP"}]}  # fmt: skip
    traced = Rendered("t", tuple(template(sets=(*on, *tracing))))
    untraced = Rendered("n", tuple(template(sets=on)))
    for component in ("api", "worker"):
        assert collector in egress_of(traced, component)
        assert collector not in egress_of(untraced, component)

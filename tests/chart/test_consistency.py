"""Cross-object consistency of the rendered chart: one queue, one password, one set of settings."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.render import SCENARIOS, pod_spec, rendered, workloads

ALL = sorted(SCENARIOS)
WITH_KEDA = [s for s in ALL if rendered(s).maybe("ScaledObject")]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("scenario", WITH_KEDA)
def test_scaledobject_reads_the_list_the_api_pushes_to(scenario: str) -> None:
    r = rendered(scenario)
    queue = r.config["QUEUE_NAME"]
    triggers = {t["name"]: t["metadata"] for t in r.one("ScaledObject")["spec"]["triggers"]}
    assert triggers["pending"]["listName"] == queue
    assert triggers["inflight"]["listName"] == f"{queue}:inflight"
    # KEDA dials the same Redis the services use (REDIS_URL = redis://<address>/0).
    assert r.config["REDIS_URL"] == f"redis://{triggers['pending']['address']}/{triggers['pending']['databaseIndex']}"
    assert r.one("ScaledObject")["spec"]["scaleTargetRef"]["name"] == r.one("Deployment", "worker")["metadata"]["name"]


@pytest.mark.parametrize("scenario", WITH_KEDA)
def test_keda_authenticates_with_the_redis_secret(scenario: str) -> None:
    r = rendered(scenario)
    auth = r.one("TriggerAuthentication")
    assert all(t["authenticationRef"]["name"] == auth["metadata"]["name"] for t in r.one("ScaledObject")["spec"]["triggers"])
    redis_env = env_of(pod_spec(r.one("StatefulSet"))["containers"][0])
    ref = redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": ref["name"], "key": ref["key"]}]


@pytest.mark.parametrize("scenario", ALL)
def test_redis_runs_aof_with_the_configured_fsync_and_the_secret_password(scenario: str) -> None:
    r = rendered(scenario)
    container = pod_spec(r.one("StatefulSet"))["containers"][0]
    args = container["args"]
    pairs = dict(zip(args[1::2], args[2::2]))
    assert args[0] == "redis-server"
    assert pairs["--appendonly"] == "yes"
    want_fsync = "always" if scenario == "persistence-off" else "everysec"
    assert pairs["--appendfsync"] == want_fsync
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--requirepass"] == "$(REDIS_PASSWORD)"
    assert "REDIS_PASSWORD" in env_of(container), "$(REDIS_PASSWORD) must be defined for the kubelet to expand it"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"] and pairs["--dir"] == "/data"


@pytest.mark.parametrize("scenario", ALL)
def test_one_secret_feeds_redis_and_both_services(scenario: str) -> None:
    r = rendered(scenario)
    refs = {}
    for kind, component in (("StatefulSet", "redis"), ("Deployment", "api"), ("Deployment", "worker")):
        env = env_of(pod_spec(r.one(kind, component))["containers"][0])
        refs[component] = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert refs["redis"] == refs["api"] == refs["worker"]
    secret = r.maybe("Secret")
    if secret is not None:  # generated; with existingSecret the operator owns it
        assert secret["metadata"]["name"] == refs["redis"]["name"] and refs["redis"]["key"] in secret["data"]
    else:
        assert SCENARIOS[scenario].read_text().count("existingSecret:") == 1


@pytest.mark.parametrize("scenario", ALL)
def test_services_read_the_shared_configmap(scenario: str) -> None:
    r = rendered(scenario)
    cm = r.one("ConfigMap")
    checksums = set()
    for component in ("api", "worker"):
        d = r.one("Deployment", component)
        assert pod_spec(d)["containers"][0]["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
        checksums.add(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
    assert len(checksums) == 1 and len(checksums.pop()) == 64
    # The contract's variable names, each defined once.
    assert {"REDIS_URL", "QUEUE_NAME", "MODEL_PATH", "DRAIN_TIMEOUT_SECONDS", "SHUTDOWN_DELAY_SECONDS", "JOB_TTL_SECONDS"} <= set(cm["data"])
    assert "REDIS_PASSWORD" not in cm["data"]


def test_a_config_change_changes_the_checksum() -> None:
    from tests.chart.render import template

    def checksum(objs: list[dict[str, Any]]) -> str:
        (api,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "api"]
        return api["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(template()) != checksum(template(sets=("config.maxBatchSize=64",)))


@pytest.mark.parametrize("scenario", ALL)
def test_worker_grace_period_outlasts_the_drain(scenario: str) -> None:
    r = rendered(scenario)
    worker = pod_spec(r.one("Deployment", "worker"))
    assert worker["terminationGracePeriodSeconds"] > float(r.config["DRAIN_TIMEOUT_SECONDS"])
    api = pod_spec(r.one("Deployment", "api"))
    assert api["terminationGracePeriodSeconds"] > float(r.config["SHUTDOWN_DELAY_SECONDS"])
    assert float(r.config["SHUTDOWN_DELAY_SECONDS"]) >= 5, "readiness must flip before the API stops"


@pytest.mark.parametrize("scenario", ALL)
def test_every_container_runs_hardened_as_non_root(scenario: str) -> None:
    uids = {"api": 10001, "worker": 10001, "redis": 999, "test": 10001}
    for w in workloads(rendered(scenario)):
        spec = pod_spec(w)
        uid = uids[w["metadata"]["labels"]["app.kubernetes.io/component"]]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid and pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid != 0
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert c["resources"]["requests"] and c["resources"]["limits"]
            # Read-only root: whatever the process writes must be a mounted volume.
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if w["kind"] == "Deployment":
                assert "/tmp" in mounts
            if w["kind"] == "StatefulSet":
                assert "/data" in mounts


@pytest.mark.parametrize("scenario", ALL)
def test_only_api_worker_and_keda_reach_redis(scenario: str) -> None:
    r = rendered(scenario)
    policy = r.one("NetworkPolicy")
    redis_labels = r.one("StatefulSet")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == redis_labels
    (rule,) = policy["spec"]["ingress"]
    selectors = rule["from"]
    components = {s["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for s in selectors if "namespaceSelector" not in s}
    assert components == {"api", "worker"}
    for s in selectors:
        if "namespaceSelector" not in s:
            assert s["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == redis_labels["app.kubernetes.io/instance"]
    keda = [s for s in selectors if "namespaceSelector" in s]
    assert len(keda) == (1 if r.maybe("ScaledObject") else 0)
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


@pytest.mark.parametrize("scenario", ALL)
def test_pdbs_select_their_deployments(scenario: str) -> None:
    r = rendered(scenario)
    for component in ("api", "worker"):
        pdb = r.one("PodDisruptionBudget", component)
        assert pdb["spec"]["selector"]["matchLabels"] == r.one("Deployment", component)["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("scenario", [s for s in ALL if rendered(s).maybe("Ingress")])
def test_ingress_and_helm_test_reach_the_api_service(scenario: str) -> None:
    r = rendered(scenario)
    svc = r.one("Service", "api")
    backend = r.one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": svc["metadata"]["name"], "port": {"name": "http"}}
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    test_pod = r.one("Pod", "test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    api_url = env_of(test_pod["spec"]["containers"][0])["API_URL"]["value"]
    assert api_url == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"


def test_images_come_from_values_with_the_app_version_as_default_tag() -> None:
    r = rendered("default")
    assert pod_spec(r.one("Deployment", "api"))["containers"][0]["image"] == "asyncinfer-api:0.1.0"
    assert pod_spec(r.one("Deployment", "worker"))["containers"][0]["image"] == "asyncinfer-worker:0.1.0"
    assert pod_spec(r.one("StatefulSet"))["containers"][0]["image"].startswith("redis:7.")
    kind = rendered("kind")
    assert pod_spec(kind.one("Deployment", "api"))["containers"][0]["image"] == "asyncinfer-api:dev"
    assert pod_spec(kind.one("Deployment", "worker"))["containers"][0]["image"] == "asyncinfer-worker:dev"

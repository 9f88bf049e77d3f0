"""Cross-object consistency of the rendered chart: one key layout, one password, one set of settings."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from jobqueue.keys import StoreKeys
from tests.chart.render import CHART, SCENARIOS, all_containers, env_of, pod_spec, rendered, template, workloads

ALL = sorted(SCENARIOS)  # scenario names only: charts render in the tests, never at collection


def without_keda(r: Any) -> bool:
    """A scenario with KEDA off: then every worker Deployment carries its own replica count."""
    if r.maybe("ScaledObject"):
        return False
    assert all("replicas" in worker["spec"] for worker in r.workers().values())
    assert r.maybe("TriggerAuthentication") is None
    return True


def expected_trigger_keys(root: str, model: str, tags: list[str]) -> dict[str, str]:
    """Trigger name -> the key it reads, as jobqueue.keys names it: the model's pending lists and in-flight
    ZSET, once (standalone, Sentinels) or per shard's hash tag t0, t1, ... (Redis Cluster)."""
    if not tags:
        keys = StoreKeys(root).model(model)
        return {"pending_high": keys.pending("high"), "pending_normal": keys.pending("normal"),
                "pending_low": keys.pending("low"), "inflight": keys.inflight}  # fmt: skip
    names = (f"t{i}" for i in range(4 * len(tags)))
    shard_keys = [StoreKeys(root, tag).model(model) for tag in tags]
    return dict(
        zip(
            names,
            [key for k in shard_keys for key in (*(k.pending(p) for p in ("high", "normal", "low")), k.inflight)],
            strict=True,
        )
    )


@pytest.mark.parametrize("scenario", ALL)
def test_each_scaledobject_reads_its_models_keys_as_jobqueue_names_them(scenario: str) -> None:
    r = rendered(scenario)
    if without_keda(r):
        return
    workers = r.workers()
    assert set(r.scaled_objects()) == set(workers)
    models_file = yaml.safe_load(r.one("ConfigMap", "models")["data"]["models.yaml"])
    for model, so in r.scaled_objects().items():
        triggers = {t["name"]: t["metadata"] for t in so["spec"]["triggers"]}
        types = {t["type"] for t in so["spec"]["triggers"]}
        assert {name: t["listName"] for name, t in triggers.items()} == expected_trigger_keys(
            r.config["KEY_PREFIX"], model, models_file[model].get("tags", [])
        )
        # The formula sums every trigger: all outstanding work of the model.
        formula = so["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert sorted(term.strip() for term in formula.split("+")) == sorted(triggers)
        url = urlsplit(r.config["REDIS_URL"])
        for t in triggers.values():
            # KEDA reads the same db, over the same TLS, of the same Redis the services use: through the
            # same Sentinels when they have some, else at REDIS_URL's address (a Cluster's seed node).
            assert t.get("enableTLS", "false") == str(url.scheme == "rediss").lower()
            if r.config.get("REDIS_CLUSTER") == "true":
                assert types == {"redis-cluster"} and "databaseIndex" not in t
                assert t["addresses"] == url.netloc.rpartition("@")[2]
                continue
            assert t["databaseIndex"] == (url.path.lstrip("/") or "0")
            if "REDIS_SENTINELS" in r.config:
                assert types == {"redis-sentinel"} and "address" not in t
                assert (t["addresses"], t["sentinelMaster"]) == (r.config["REDIS_SENTINELS"], r.config["REDIS_SENTINEL_MASTER"])
            else:
                assert types == {"redis"} and t["address"] == url.netloc.rpartition("@")[2]
        assert so["spec"]["scaleTargetRef"]["name"] == workers[model]["metadata"]["name"]


def redis_secret_source(workload: dict[str, Any], path: str = "redis-password") -> dict[str, Any] | None:
    """The Secret (name, key) a workload's secrets volume maps to the file `path` (the Redis password's
    by default; `redis-sentinel-password` for the Sentinels'), or None when it mounts no such file."""
    for volume in pod_spec(workload)["volumes"]:
        for src in volume.get("projected", {}).get("sources", []):
            for item in src["secret"]["items"]:
                if item["path"] == path:
                    return {"name": src["secret"]["name"], "key": item["key"]}
    return None


@pytest.mark.parametrize("scenario", ALL)
def test_keda_authenticates_with_the_redis_secret(scenario: str) -> None:
    r = rendered(scenario)
    if without_keda(r):
        return
    auth = r.one("TriggerAuthentication")
    for so in r.of_kind("ScaledObject"):
        assert all(t["authenticationRef"]["name"] == auth["metadata"]["name"] for t in so["spec"]["triggers"])
    # KEDA reads the passwords the workers read (every pod of the release mounts the same ones).
    worker = r.of_kind("Deployment", "worker")[0]
    ref = redis_secret_source(worker)
    assert ref is not None
    wanted = [{"parameter": "password", **ref}]
    sentinel_ref = redis_secret_source(worker, "redis-sentinel-password")
    if sentinel_ref:
        wanted.append({"parameter": "sentinelPassword", **sentinel_ref})
    assert auth["spec"]["secretTargetRef"] == wanted
    assert (sentinel_ref is not None) == (scenario in ("replication", "external-sentinel"))


def redis_args(r: Any) -> dict[str, str]:
    container = pod_spec(r.one("StatefulSet"))["containers"][0]
    args = container["args"]
    return dict(zip(args[0::2], args[1::2], strict=True))


@pytest.mark.parametrize("scenario", ALL)
def test_redis_runs_aof_noeviction_and_takes_its_password_from_the_file(scenario: str) -> None:
    r = rendered(scenario)
    if scenario.startswith("external-"):
        assert r.maybe("StatefulSet") is None and r.maybe("Service", "redis") is None, "an external Redis: none in the chart"
        return
    container = pod_spec(r.one("StatefulSet"))["containers"][0]
    pairs = redis_args(r)
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == ("always" if scenario == "persistence-off" else "everysec")
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert "--requirepass" not in container["args"], "the password never goes in argv"
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["secrets"]
    if scenario in ("replication", "cluster"):
        # files/redis-<architecture>.sh starts redis-server the same way, with its architecture's flags on top.
        script = (CHART / "files" / f"redis-{scenario}.sh").read_text()
        assert container["command"] == ["sh", f"/opt/asyncinfer/redis-{scenario}.sh", "redis"]
        assert env_of(container)["PASSWORD_FILE"]["value"] == f"{mount}/redis-password"
        assert 'od -An -v -tx1 "$PASSWORD_FILE"' in script and "requirepass $password" in script
        if scenario == "replication":
            assert pairs["--min-replicas-to-write"] == "1" and pairs["--min-replicas-max-lag"] == "10"
        else:
            assert "masterauth $password" in script
            assert (pairs["--cluster-enabled"], pairs["--cluster-config-file"]) == ("yes", "/data/nodes.conf")
    else:
        script = container["command"][2]
        assert container["command"][:2] == ["sh", "-c"]
        assert f"od -An -v -tx1 {mount}/redis-password" in script and "requirepass $redis_password_quoted" in script
    assert 'exec redis-server - "$@"' in script
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"] and pairs["--dir"] == "/data"


def test_redis_maxmemory_is_half_the_limit_or_the_explicit_value() -> None:
    # Half: the AOF rewrite fork may copy every page written while it runs (issue #22.16).
    assert redis_args(rendered("default"))["--maxmemory"] == str(512 * 1024 * 1024 * 50 // 100)
    assert redis_args(rendered("kind"))["--maxmemory"] == str(256 * 1024 * 1024 * 50 // 100)
    assert redis_args(rendered("production"))["--maxmemory"] == str(2 * 1024**3)
    objs = template(sets=("redis.maxmemoryPercent=50", "redis.resources.limits.memory=1G"))
    (sts,) = [o for o in objs if o["kind"] == "StatefulSet"]
    args = pod_spec(sts)["containers"][0]["args"]
    assert args[args.index("--maxmemory") + 1] == "500000000"


@pytest.mark.parametrize("scenario", ALL)
def test_secrets_are_files_never_env_vars(scenario: str) -> None:
    r = rendered(scenario)
    for w in workloads(r):
        for c in all_containers(w):
            env = env_of(c)
            assert not [e for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})], f"{c['name']}: secret in env"
            assert not {"REDIS_PASSWORD", "WEBHOOK_SECRET", "REDISCLI_AUTH", "AWS_SECRET_ACCESS_KEY"} & set(env)
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod_spec(w)["volumes"]}
            for name in (
                "REDIS_PASSWORD_FILE",
                "AUTH_TOKENS_FILE",
                "WEBHOOK_SECRET_FILE",
                "AWS_ACCESS_KEY_ID_FILE",
                "AWS_SECRET_ACCESS_KEY_FILE",
            ):
                if name not in env:
                    continue
                path = env[name]["value"]
                (volume_name,) = [v for v, m in mounts.items() if path.startswith(m + "/")]
                volume = volumes[volume_name]
                sources = volume.get("projected", {}).get("sources", []) or [{"secret": volume["secret"]}]
                items = {i["path"] for s in sources for i in s["secret"]["items"]}
                assert path.rsplit("/", 1)[1] in items, f"{name}={path} is not a mounted Secret item"


@pytest.mark.parametrize("scenario", ALL)
def test_each_process_gets_exactly_the_secrets_it_needs(scenario: str) -> None:
    r = rendered(scenario)
    auth_on = "auth-off" not in scenario
    # The Sentinels' password: the in-chart ones take Redis's; external ones here have their own.
    redis_files = {
        "REDIS_PASSWORD_FILE",
        *(["REDIS_SENTINEL_PASSWORD_FILE"] if scenario in ("replication", "external-sentinel") else []),
    }
    # the object store's key pair (objectStore.existingSecret): every process that reads, writes or signs objects
    store = ["AWS_ACCESS_KEY_ID_FILE", "AWS_SECRET_ACCESS_KEY_FILE"] if scenario == "object-store" else []
    tracing = (yaml.safe_load(SCENARIOS[scenario].read_text()) or {}).get("tracing", {})
    headers = ["TRACING_HEADERS_FILE"] if tracing.get("enabled") and tracing.get("headersSecret") else []
    wanted = {
        "api": {*redis_files, *(["AUTH_TOKENS_FILE"] if auth_on else []), *store, *headers},
        "worker": {*redis_files, *store, *headers},
        "notifier": {*redis_files, "WEBHOOK_SECRET_FILE", *store, *headers},
    }
    for component, names in wanted.items():
        for d in r.of_kind("Deployment", component):
            env = env_of(pod_spec(d)["containers"][0])
            assert {n for n in env if n.endswith("_FILE") and n != "MODELS_FILE"} == names, component


@pytest.mark.parametrize("scenario", ALL)
def test_services_read_the_shared_configmap(scenario: str) -> None:
    r = rendered(scenario)
    cm = r.one("ConfigMap", "config")
    checksums = set()
    for d in r.of_kind("Deployment"):
        assert pod_spec(d)["containers"][0]["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
        checksums.add(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
    assert len(checksums) == 1 and len(checksums.pop()) == 64
    assert {"REDIS_URL", "KEY_PREFIX", "MODELS_FILE", "DEFAULT_MODEL", "DRAIN_TIMEOUT_SECONDS", "JOB_TTL_SECONDS"} <= set(
        cm["data"]
    )
    assert "QUEUE_NAME" not in cm["data"], "QUEUE_NAME is gone: KEY_PREFIX replaces it"
    assert not {k for k in cm["data"] if "PASSWORD" in k or "SECRET" in k or "TOKEN" in k}


def test_a_config_change_changes_the_checksum() -> None:
    def checksum(objs: list[dict[str, Any]]) -> str:
        (api,) = [
            o for o in objs if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
        ]
        return api["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(template()) != checksum(template(sets=("config.maxQueueLength=64",)))


@pytest.mark.parametrize("scenario", ALL)
def test_worker_grace_period_outlasts_the_drain(scenario: str) -> None:
    r = rendered(scenario)
    for worker in r.of_kind("Deployment", "worker"):
        assert pod_spec(worker)["terminationGracePeriodSeconds"] > float(r.config["DRAIN_TIMEOUT_SECONDS"])
    api = pod_spec(r.one("Deployment", "api"))
    assert api["terminationGracePeriodSeconds"] > float(r.config["SHUTDOWN_DELAY_SECONDS"])
    assert float(r.config["SHUTDOWN_DELAY_SECONDS"]) >= 5, "readiness must flip before the API stops"


@pytest.mark.parametrize("scenario", ALL)
def test_pdbs_select_their_deployments(scenario: str) -> None:
    r = rendered(scenario)
    api_pdb = r.one("PodDisruptionBudget", "api")
    assert api_pdb["spec"]["selector"]["matchLabels"] == r.one("Deployment", "api")["spec"]["selector"]["matchLabels"]
    pdbs = {p["metadata"]["labels"]["asyncinfer.io/model"]: p for p in r.of_kind("PodDisruptionBudget", "worker")}
    assert set(pdbs) == set(r.workers())
    for model, worker in r.workers().items():
        assert pdbs[model]["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
        assert worker["spec"]["selector"]["matchLabels"]["asyncinfer.io/model"] == model


@pytest.mark.parametrize("scenario", ALL)
def test_ingress_routes_http_only_and_helm_test_reaches_the_api_service(scenario: str) -> None:
    r = rendered(scenario)
    if r.maybe("Ingress") is None:
        pytest.skip("this scenario turns the Ingress off")
    svc = r.one("Service", "api")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http" and ports["metrics"]["targetPort"] == "metrics"
    for rule in r.one("Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {"name": svc["metadata"]["name"], "port": {"name": "http"}}
    test_pod = r.one("Pod", "test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    api_url = env_of(test_pod["spec"]["containers"][0])["API_URL"]["value"]
    assert api_url == f"http://{svc['metadata']['name']}:{ports['http']['port']}"


@pytest.mark.parametrize("scenario", ALL)
def test_api_serves_metrics_on_its_own_port(scenario: str) -> None:
    api = pod_spec(rendered(scenario).one("Deployment", "api"))["containers"][0]
    env = {k: v["value"] for k, v in env_of(api).items() if "value" in v}
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert int(env["METRICS_PORT"]) == ports["metrics"] != ports["http"] == int(env["PORT"])


def test_images_come_from_values_with_the_app_version_as_default_tag() -> None:
    r = rendered("default")
    assert pod_spec(r.one("Deployment", "api"))["containers"][0]["image"] == "asyncinfer-api:0.1.0"
    assert pod_spec(r.one("Deployment", "worker"))["containers"][0]["image"] == "asyncinfer-worker:0.1.0"
    notifier = pod_spec(r.one("Deployment", "notifier"))["containers"][0]
    assert notifier["image"] == "asyncinfer-api:0.1.0" and notifier["command"] == ["asyncinfer-notifier"]
    assert pod_spec(r.one("StatefulSet"))["containers"][0]["image"].startswith("docker.io/redis:7.")
    kind = rendered("kind")
    assert pod_spec(kind.one("Deployment", "api"))["containers"][0]["image"] == "asyncinfer-api:dev"
    assert pod_spec(kind.one("Deployment", "worker"))["containers"][0]["image"] == "asyncinfer-worker:dev"

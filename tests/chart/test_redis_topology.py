"""redis.architecture and redis.external (issue #24): what the replication set and an external Redis
render, and what the services, KEDA and the NetworkPolicies get from them. The replication bootstrap
itself runs for real in test_redis_replication_script.py."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from jobqueue.settings import Settings
from tests.chart.render import CHART, HelmError, env_of, pod_spec, rendered, template
from tests.chart.test_settings_source import bounds

SCHEMA = json.loads((CHART / "values.schema.json").read_text())["properties"]["redis"]["properties"]
POD_HOSTS = [f"ci-asyncinfer-redis-{i}.ci-asyncinfer-redis.asyncinfer-ci.svc.cluster.local" for i in range(3)]


def settings_of(config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What a service reads from the shared ConfigMap (its own env adds only ports and file paths)."""
    for name in list(os.environ):
        monkeypatch.delenv(name, raising=False)
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_standalone_sets_none_of_the_sentinel_or_ack_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rendered("default")
    assert not {k for k in r.config if "SENTINEL" in k or "REPLICA" in k}
    settings = settings_of(r.config, monkeypatch)
    assert (settings.redis_sentinels, settings.redis_min_replicas_ack) == ("", 0)
    assert r.one("StatefulSet")["spec"]["replicas"] == 1 and r.maybe("PodDisruptionBudget", "redis") is None
    assert [c["name"] for c in pod_spec(r.one("StatefulSet"))["containers"]] == ["redis"]


def test_replication_points_every_process_at_the_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rendered("replication")
    settings = settings_of(r.config, monkeypatch)
    assert settings.redis_sentinels == ",".join(f"{h}:26379" for h in POD_HOSTS)
    assert settings.redis_sentinel_master == "mymaster"
    assert (settings.redis_min_replicas_ack, settings.redis_replica_ack_timeout_ms) == (1, 500)
    assert settings.redis_url.endswith("/0")  # the db; the host is not dialled with Sentinels
    for deployment in r.of_kind("Deployment"):
        env = env_of(pod_spec(deployment)["containers"][0])
        assert env["REDIS_SENTINEL_PASSWORD_FILE"]["value"] == "/etc/asyncinfer/secrets/redis-sentinel-password"


def test_replication_runs_a_sentinel_beside_each_redis_with_stable_names() -> None:
    r = rendered("replication")
    sts = r.one("StatefulSet")
    spec = pod_spec(sts)
    assert sts["spec"]["replicas"] == 3
    assert [c["name"] for c in spec["containers"]] == ["redis", "sentinel"]
    redis, sentinel = spec["containers"]
    assert sentinel["image"] == redis["image"] and sentinel["image"].startswith("docker.io/redis:")
    for container in (redis, sentinel):
        env = {k: v.get("value") for k, v in env_of(container).items()}
        assert env["SENTINELS"].split() == [f"{h}:26379" for h in POD_HOSTS]
        assert env["PRIMARY_HOST"] == POD_HOSTS[0]
        assert env["SELF_HOST"] == "$(POD_NAME).ci-asyncinfer-redis.asyncinfer-ci.svc.cluster.local"
        assert env_of(container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["SENTINEL_CONF"].startswith("/data/"), "the Sentinel's record of the primary outlives the pod"
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {p["name"]: p["containerPort"] for p in sentinel["ports"]} == {"sentinel": 26379}
    svc = r.one("Service", "redis")
    assert svc["spec"]["publishNotReadyAddresses"] is True, "a starting pod must resolve the others' Sentinels"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"redis": 6379, "sentinel": 26379}
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]


def test_replication_spreads_the_pods_and_a_drain_takes_one_at_a_time() -> None:
    r = rendered("replication")
    sts = r.one("StatefulSet")
    selector = sts["spec"]["selector"]["matchLabels"]
    (term,) = pod_spec(sts)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"labelSelector": {"matchLabels": selector}, "topologyKey": "kubernetes.io/hostname"}
    pdb = r.one("PodDisruptionBudget", "redis")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == selector
    required = [
        o
        for o in template(sets=("redis.architecture=replication", "redis.replication.podAntiAffinity.type=required"))
        if o["kind"] == "StatefulSet"
    ]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod_spec(required[0])["affinity"]["podAntiAffinity"]
    none = [
        o
        for o in template(sets=("redis.architecture=replication", "redis.replication.podAntiAffinity.type=none"))
        if o["kind"] == "StatefulSet"
    ]
    assert "affinity" not in pod_spec(none[0])


def test_replication_keda_triggers_ask_the_sentinels_with_both_passwords() -> None:
    r = rendered("replication")
    for trigger in r.one("ScaledObject")["spec"]["triggers"]:
        assert trigger["type"] == "redis-sentinel"
        assert trigger["metadata"]["addresses"] == ",".join(f"{h}:26379" for h in POD_HOSTS)
        assert trigger["metadata"]["sentinelMaster"] == "mymaster"
    params = {p["parameter"]: (p["name"], p["key"]) for p in r.one("TriggerAuthentication")["spec"]["secretTargetRef"]}
    assert params == {
        "password": ("ci-asyncinfer-redis", "redis-password"),
        "sentinelPassword": ("ci-asyncinfer-redis", "redis-password"),
    }


def test_restricted_notifier_egress_reaches_the_sentinels_too() -> None:
    objs = template(sets=("redis.architecture=replication", "notifier.egress.restrict=true"))
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-notifier")]
    (to_redis,) = [rule for rule in policy["spec"]["egress"] if "podSelector" in rule.get("to", [{}])[0]]
    assert to_redis["ports"] == [{"port": 6379, "protocol": "TCP"}, {"port": 26379, "protocol": "TCP"}]


def test_an_external_sentinel_redis_renders_no_redis_and_reads_its_own_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rendered("external-sentinel")
    assert r.maybe("StatefulSet") is None and r.maybe("Service", "redis") is None
    assert not r.of_kind("Secret", "redis") and r.maybe("PodDisruptionBudget", "redis") is None
    settings = settings_of(r.config, monkeypatch)
    assert settings.redis_url == "rediss://asyncinfer@redis.example.internal:6380/2"
    assert (
        settings.redis_sentinels
        == "sentinel-0.example.internal:26379,sentinel-1.example.internal:26379,sentinel-2.example.internal:26379"
    )
    assert (settings.redis_sentinel_master, settings.redis_min_replicas_ack) == ("queue", 1)
    sources = {
        item["path"]: (src["secret"]["name"], item["key"])
        for v in pod_spec(r.one("Deployment", "worker"))["volumes"]
        if "projected" in v
        for src in v["projected"]["sources"]
        for item in src["secret"]["items"]
    }
    assert sources == {
        "redis-password": ("managed-redis", "password"),
        "redis-sentinel-password": ("managed-redis", "sentinel-password"),
    }
    (trigger, *_) = r.one("ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "redis-sentinel" and trigger["metadata"]["sentinelMaster"] == "queue"
    assert (trigger["metadata"]["databaseIndex"], trigger["metadata"]["enableTLS"], trigger["metadata"]["username"]) == (
        "2",
        "true",
        "asyncinfer",
    )
    # The notifier's restricted egress reaches the external Redis and Sentinels in their ranges only.
    (to_redis,) = [
        rule
        for rule in r.one("NetworkPolicy", "notifier")["spec"]["egress"]
        if rule.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "10.20.0.0/16"
    ]
    assert to_redis["ports"] == [{"port": 6380, "protocol": "TCP"}, {"port": 26379, "protocol": "TCP"}]


def test_an_external_redis_by_url_is_dialled_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rendered("external-url")
    settings = settings_of(r.config, monkeypatch)
    assert (settings.redis_url, settings.redis_sentinels, settings.redis_min_replicas_ack) == (
        "redis://redis.example.internal:6379/0",
        "",
        0,
    )
    assert "REDIS_SENTINEL_PASSWORD_FILE" not in env_of(pod_spec(r.one("Deployment", "api"))["containers"][0])
    (trigger, *_) = r.one("ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["address"] == "redis.example.internal:6379"
    assert [p["parameter"] for p in r.one("TriggerAuthentication")["spec"]["secretTargetRef"]] == ["password"]


@pytest.mark.parametrize("where", ["replication", "external"])
@pytest.mark.parametrize(
    ("key", "setting"), [("minReplicasAck", "redis_min_replicas_ack"), ("replicaAckTimeoutMs", "redis_replica_ack_timeout_ms")]
)
def test_ack_values_have_the_settings_bounds(where: str, key: str, setting: str) -> None:
    assert SCHEMA[where]["properties"][key] == bounds(setting)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("redis.external.enabled=true",), "needs redis.auth.existingSecret"),
        (("redis.external.enabled=true", "redis.auth.existingSecret=s"), "needs redis.external.url"),
        (
            ("redis.external.enabled=true", "redis.auth.existingSecret=s", "redis.external.url=redis://u:p@h:1/0"),
            "must not carry a password",
        ),
        (("redis.external.enabled=true", "redis.architecture=replication"), "mutually exclusive"),
        (
            (
                "redis.external.enabled=true",
                "redis.auth.existingSecret=s",
                "redis.external.url=redis://h:1/0",
                "notifier.egress.restrict=true",
            ),
            "needs redis.external.egressCidrs",
        ),
        (("redis.architecture=replication", "redis.replication.quorum=4"), "quorum \\(4\\) must not exceed"),
        (("redis.architecture=replication", "redis.replication.minReplicasToWrite=3"), "would refuse every write"),
        (("redis.architecture=replication", "redis.replication.minReplicasAck=3"), "no submit could ever be acknowledged"),
        (("redis.architecture=replication", "redis.replication.sentinelPort=6379"), "must differ from redis.port"),
    ],
)
def test_contradicting_topology_values_fail_with_one_clear_message(sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        template(sets=sets)


@pytest.mark.parametrize(
    "sets",
    [
        ("redis.architecture=sharded",),
        ("redis.replication.replicas=2",),
        ("redis.external.url=http://h:1/0",),
        ("redis.external.sentinels[0]=no-port",),
    ],
)
def test_schema_refuses_bad_topology_values(sets: tuple[str, ...]) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema"):
        template(sets=sets)


def sentinel_env(obj: dict[str, Any]) -> dict[str, str]:
    return {k: v["value"] for k, v in env_of(pod_spec(obj)["containers"][1]).items() if "value" in v}


def test_sentinel_settings_reach_the_script() -> None:
    objs = template(
        sets=(
            "redis.architecture=replication",
            "redis.replication.replicas=5",
            "redis.replication.quorum=3",
            "redis.replication.downAfterMilliseconds=3000",
            "redis.replication.masterSet=jobs",
        )
    )
    (sts,) = [o for o in objs if o["kind"] == "StatefulSet"]
    env = sentinel_env(sts)
    assert (env["QUORUM"], env["DOWN_AFTER_MS"], env["MASTER_SET"]) == ("3", "3000", "jobs")
    assert len(env["SENTINELS"].split()) == 5 and sts["spec"]["replicas"] == 5

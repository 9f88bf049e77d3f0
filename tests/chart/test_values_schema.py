"""values.schema.json and asyncinfer.validateValues: bad values make `helm template` fail clearly."""

from __future__ import annotations

import json

import pytest

from tests.chart.render import CHART, HelmError, template


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("api.replicas=2",), "additional properties 'replicas' not allowed"),
        (("bogusTopLevel=1",), "additional properties 'bogusTopLevel' not allowed"),
        (("keda.inflight.mode=formula",), "additional properties 'inflight' not allowed"),
        (("config.queueName=q",), "additional properties 'queueName' not allowed"),
        (("redis.runAsUser=999",), "minimum"),
        (("api.runAsUser=0",), "minimum"),
        (("redis.maxmemoryPercent=99",), "maximum"),
        (("redis.extraArgs[0]=--maxmemory",), "/redis/extraArgs/0"),
        (("config.keyPrefix=a b",), "/config/keyPrefix"),
        (("redis.appendfsync=sometimes",), "value must be one of 'always', 'everysec', 'no'"),
        (("api.image.pullPolicy=Sometimes",), "value must be one of"),
        (("keda.minReplicaCount=-1",), "minimum"),
        (("api.replicaCount=0",), "minimum"),
        (("config.logLevel=LOUD",), "/config/logLevel"),
    ],
)
def test_schema_rejects_unknown_and_out_of_range_values(sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema") as err:
        template(sets=sets)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "want"),
    [
        ("api.replicaCount", "two", "got string, want integer"),
        ("keda.enabled", "yes", "got string, want boolean"),
        ("config.maxBatchSize", "lots", "got string, want integer"),
    ],
)
def test_schema_rejects_mistyped_values(key: str, value: str, want: str) -> None:
    with pytest.raises(HelmError) as err:
        template(set_strings=(f"{key}={value}",))
    assert want in str(err.value)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("worker.terminationGracePeriodSeconds=25",), "must be greater than config.drainTimeoutSeconds"),
        (("api.terminationGracePeriodSeconds=5",), "must be greater than config.shutdownDelaySeconds"),
        (("config.requestTtlSeconds=7200",), "must not exceed config.jobTtlSeconds"),
        (
            ("keda.minReplicaCount=5", "keda.maxReplicaCount=2"),
            "model iris: keda minReplicaCount \\(5\\) must not exceed maxReplicaCount \\(2\\)",
        ),
        (("config.recoveryIntervalSeconds=200",), "must be at most 10x config.workerTtlSeconds"),
        (("api.metricsPort=8000",), "api.metricsPort \\(8000\\) must differ"),
        (("redis.maxmemory=512Mi",), "redis.maxmemory .* must be below redis.resources.limits.memory"),
        (("redis.maxmemory=1Gi",), "must be below redis.resources.limits.memory"),
        (("redis.resources.limits.memory=lots",), "values don't meet the specifications"),
        (("redis.auth.existingSecret=s", "redis.auth.password=p"), "mutually exclusive"),
    ],
)
def test_cross_field_checks_fail_with_one_clear_message(sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        template(sets=sets)


def test_schema_is_strict_everywhere() -> None:
    """Every object in the schema closes itself (additionalProperties false) unless it is a free-form map."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    free_form = {"affinity", "tolerations", "resources"}  # Kubernetes types passed through verbatim (resources: allOf)
    free_form.add("global")  # a parent chart's globals reach a subchart's values too

    def walk(node: dict, path: str) -> list[str]:
        open_objects = []
        # A discriminated union (oneOf) is closed when every branch closes itself.
        closed_by_branches = bool(node.get("oneOf")) and all(b.get("additionalProperties") is False for b in node["oneOf"])
        if (
            node.get("type") == "object"
            and "properties" in node
            and node.get("additionalProperties") is not False
            and not closed_by_branches
        ):
            open_objects.append(path)
        for i, branch in enumerate(node.get("oneOf", [])):
            open_objects += walk(branch, f"{path}.oneOf[{i}]")
        for key, child in node.get("properties", {}).items():
            if key not in free_form:
                open_objects += walk(child, f"{path}.{key}")
        for key, child in node.get("definitions", {}).items():
            open_objects += walk(child, f"#{key}")
        return open_objects

    assert walk(schema, "$") == [], "objects with named properties must set additionalProperties: false"


def test_an_explicit_maxmemory_below_the_limit_is_accepted() -> None:
    objs = template(sets=("redis.maxmemory=400Mi",))
    (sts,) = [o for o in objs if o["kind"] == "StatefulSet"]
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory") + 1] == str(400 * 1024 * 1024)

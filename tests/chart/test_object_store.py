"""The chart's `objectStore:` values (issue #26): the store's settings in the ConfigMap, its key pair from
an existing Secret as files (never env values) for every pod that signs or reads objects, and a worker
/tmp sized for an object job's outputs. Off by default: nothing of it is rendered."""

from __future__ import annotations

from typing import Any

from tests.chart.render import env_of, pod_spec, rendered

SECRET = "asyncinfer-object-store"


def env(deployment: dict[str, Any]) -> dict[str, str]:
    """The first container's plain env values."""
    return {name: e.get("value", "") for name, e in env_of(pod_spec(deployment)["containers"][0]).items()}


def projected_secrets(deployment: dict[str, Any]) -> dict[str, list[str]]:
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "secrets"]
    return {s["secret"]["name"]: [i["path"] for i in s["secret"]["items"]] for s in volume["projected"]["sources"]}


def tmp_limit(deployment: dict[str, Any]) -> str:
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "tmp"]
    return str(volume["emptyDir"]["sizeLimit"])


def test_the_store_settings_and_its_secret_files_reach_the_api_workers_and_notifier() -> None:
    chart = rendered("object-store")
    config = chart.config
    assert config["OBJECT_STORE_URL"] == "s3://asyncinfer-jobs/prod"
    assert config["S3_ENDPOINT_URL"] == "https://s3.example.com" and config["AWS_REGION"] == "eu-west-1"
    assert config["OBJECT_STORE_ALLOWED"] == "s3://shared-datasets/features"
    pods = [chart.one("Deployment", "api"), chart.one("Deployment", "notifier"), *chart.workers().values()]
    for deployment in pods:
        values = env(deployment)
        assert values["AWS_ACCESS_KEY_ID_FILE"].endswith("/aws-access-key-id"), deployment["metadata"]["name"]
        assert values["AWS_SECRET_ACCESS_KEY_FILE"].endswith("/aws-secret-access-key")
        assert "AWS_SECRET_ACCESS_KEY" not in values and "AWS_ACCESS_KEY_ID" not in values
        assert projected_secrets(deployment)[SECRET] == ["aws-access-key-id", "aws-secret-access-key"]
    assert {tmp_limit(w) for w in chart.workers().values()} == {"8Gi"}


def test_without_a_store_url_nothing_of_it_is_rendered() -> None:
    chart = rendered("default")
    assert chart.config["OBJECT_STORE_URL"] == ""
    for deployment in [chart.one("Deployment", "api"), *chart.workers().values()]:
        assert "AWS_ACCESS_KEY_ID_FILE" not in env(deployment)
        assert SECRET not in projected_secrets(deployment)
    assert {tmp_limit(w) for w in chart.workers().values()} == {"64Mi"}

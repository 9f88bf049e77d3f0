"""One source for settings: the chart's `config` values, their schema and the rendered ConfigMap agree
with `jobqueue.settings.Settings` (names, defaults, bounds), and the README table is generated."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen

from jobqueue.settings import MODEL_NAME_PATTERN, Settings
from tests.chart.render import CHART, ROOT, SCENARIOS, env_of, pod_spec, rendered

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CONFIG_SCHEMA = SCHEMA["properties"]["config"]["properties"]
MODEL_SCHEMA = SCHEMA["definitions"]["model"]["properties"]

# Settings the chart does not take from `config`, each with the reason. A new Settings field fails
# test_every_setting_is_passed_or_deliberately_not until it is added to `config` or here.
SET_BY_THE_CHART = {
    "redis_url": "computed: the release's Redis Service (asyncinfer.redisUrl), or redis.external.url",
    "redis_password": "a secret: never an env var; REDIS_PASSWORD_FILE instead",
    "redis_password_file": "the mounted Secret file",
    "webhook_secret": "a secret: never an env var; WEBHOOK_SECRET_FILE instead",
    "webhook_secret_file": "the mounted Secret file (notifier)",
    "auth_tokens_file": "the mounted Secret file (auth.enabled)",
    "models_file": "generated from `models` (ConfigMap <release>-asyncinfer-models)",
    "model_path": "replaced by MODELS_FILE: each model's path comes from `models`",
    "labels_path": "replaced by each model's `labels` in MODELS_FILE",
    "model_name": "per worker Deployment: the model it serves",
    "host": "fixed: 0.0.0.0 inside a pod",
    "port": "api.containerPort",
    "metrics_port": "api.metricsPort",
    "worker_health_port": "worker.healthPort / notifier.healthPort",
    "pod_name": "the downward API (metadata.name), worker pods only",
    "pod_namespace": "the downward API (metadata.namespace), worker pods only",
    "redis_sentinels": "computed: the replication set's Sentinels (redis.architecture=replication) or redis.external.sentinels",
    "redis_sentinel_master": "redis.replication.masterSet or redis.external.masterSet, set with the Sentinels",
    "redis_sentinel_password_file": "the mounted Secret file: Redis's password (replication) or redis.external.sentinelPasswordKey",
    "redis_cluster": "computed: redis.architecture=cluster or redis.external.cluster",
    "redis_min_replicas_ack": "redis.replication.minReplicasAck or redis.external.minReplicasAck; standalone has no replica",
    "redis_replica_ack_timeout_ms": "redis.replication.replicaAckTimeoutMs or redis.external.replicaAckTimeoutMs",
    "object_store_url": "objectStore.url",
    "s3_endpoint_url": "objectStore.endpoint",
    "aws_region": "objectStore.region",
    "object_store_allowed": "objectStore.allowed",
    "aws_access_key_id": "a secret: never an env var; AWS_ACCESS_KEY_ID_FILE from objectStore.existingSecret instead",
    "aws_access_key_id_file": "the mounted Secret file (objectStore.existingSecret)",
    "aws_secret_access_key": "a secret: never an env var; AWS_SECRET_ACCESS_KEY_FILE from objectStore.existingSecret instead",
    "aws_secret_access_key_file": "the mounted Secret file (objectStore.existingSecret)",
    "tracing_headers_file": "the mounted Secret file (tracing.headersSecret)",
    "deletion_cost_debounce_seconds": "worker only; its chart value comes with scaleIn.idleFirst (issue #28, chart side)",
}
# Defaults the chart deliberately changes, each with the reason.
CHART_DEFAULTS = {
    "shutdown_delay_seconds": "a pod must serve unready for a few seconds so endpoints drop it before the listener closes",
}
PER_MODEL = ("maxBatchSize", "maxBatchWaitMs", "inferenceProviders", "inferenceThreads")
# Constraints the schema adds beyond a field's metadata (validators in Settings express them in code).
EXTRA_SCHEMA_CONSTRAINTS = {"default_model": {"pattern": "^$|" + MODEL_NAME_PATTERN}}


def snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


def camel(snake_name: str) -> str:
    head, *rest = snake_name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def bounds(field_name: str) -> dict[str, Any]:
    """The JSON-schema keywords a Settings field's metadata implies."""
    field = Settings.model_fields[field_name]
    out: dict[str, Any] = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[field.annotation]}
    for meta in field.metadata:
        if isinstance(meta, Ge):
            out["minimum"] = meta.ge
        elif isinstance(meta, Gt):
            out["exclusiveMinimum"] = meta.gt
        elif isinstance(meta, Le):
            out["maximum"] = meta.le
        elif isinstance(meta, Lt):
            out["exclusiveMaximum"] = meta.lt
        elif isinstance(meta, MinLen):
            out["minLength"] = meta.min_length
        elif isinstance(meta, MaxLen):
            out["maxLength"] = meta.max_length
        elif getattr(meta, "pattern", None):
            out["pattern"] = meta.pattern
    return out | EXTRA_SCHEMA_CONSTRAINTS.get(field_name, {})


def cpu_cores(quantity: str | int | float) -> int:
    """A CPU limit as whole cores, rounded up: the thread count the chart derives from it."""
    text = str(quantity)
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(cores))


def test_every_setting_is_passed_or_deliberately_not() -> None:
    passed = {snake(k) for k in VALUES["config"]}
    assert passed.isdisjoint(SET_BY_THE_CHART), "a setting is both in config and set by the chart"
    assert set(Settings.model_fields) == passed | set(SET_BY_THE_CHART)


@pytest.mark.parametrize("key", sorted(VALUES["config"]))
def test_config_value_has_the_settings_default(key: str) -> None:
    field = snake(key)
    assert field in Settings.model_fields, f"config.{key}: Settings has no {field}"
    if field in CHART_DEFAULTS:
        assert VALUES["config"][key] != Settings.model_fields[field].default
        return
    default = Settings.model_fields[field].default
    assert VALUES["config"][key] == default and type(VALUES["config"][key]) in (type(default), int), key


@pytest.mark.parametrize("key", sorted(VALUES["config"]))
def test_config_schema_has_the_settings_type_and_bounds(key: str) -> None:
    assert CONFIG_SCHEMA[key] == bounds(snake(key))
    assert key in SCHEMA["properties"]["config"]["required"]


@pytest.mark.parametrize("key", PER_MODEL)
def test_per_model_overrides_have_the_settings_bounds_too(key: str) -> None:
    assert MODEL_SCHEMA[key] == bounds(snake(key))


def test_model_name_pattern_is_the_settings_one() -> None:
    assert MODEL_SCHEMA["name"] == {"type": "string", "pattern": MODEL_NAME_PATTERN}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_rendered_environment_parses_into_the_configured_settings(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each container really gets (ConfigMap + its own env) is what values asked for, as Settings reads it."""
    r = rendered(scenario)
    scenario_values = yaml.safe_load(SCENARIOS[scenario].read_text()) or {}
    config = VALUES["config"] | scenario_values.get("config", {})
    models = scenario_values.get("models", VALUES["models"])
    for deployment in r.of_kind("Deployment"):
        container = pod_spec(deployment)["containers"][0]
        env = dict(r.config) | {k: v["value"] for k, v in env_of(container).items() if "value" in v}
        # The secret files do not exist here; Settings only stores their paths.
        for name in list(os.environ):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        model = deployment["metadata"]["labels"].get("asyncinfer.io/model")
        for key, want in config.items():
            if key == "defaultModel":
                want = model or want or models[0]["name"]  # a worker's default is the model it serves
            elif model and key in PER_MODEL:
                # A worker gets its model's own value (the override, else the config default).
                want = next(m for m in models if m["name"] == model).get(key, want)
                if key == "inferenceThreads" and want == 0:  # derived from the CPU limit (issue #22.15)
                    want = cpu_cores(container["resources"]["limits"]["cpu"])
            got = getattr(settings, snake(key))
            assert got == want or (key == "logLevel" and got.upper() == want.upper()), f"{deployment['metadata']['name']}: {key}"
        assert settings.redis_password_file and settings.models_file and settings.key_prefix == config["keyPrefix"]


def test_readme_values_table_is_generated_and_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "helm" / "gen_readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_readme_check_fails_when_a_param_changes(tmp_path) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "README.md").write_text((CHART / "README.md").read_text())
    values = (
        (CHART / "values.yaml").read_text().replace("## @param config.keyPrefix Prefix", "## @param config.keyPrefix The prefix")
    )
    (chart / "values.yaml").write_text(values)
    gen = str(ROOT / "deploy" / "helm" / "gen_readme.py")
    stale = subprocess.run(
        [sys.executable, gen, "--check", "--chart", str(chart)], capture_output=True, text=True, timeout=60, check=False
    )
    assert stale.returncode == 1 and "stale" in stale.stderr
    subprocess.run([sys.executable, gen, "--chart", str(chart)], check=True, timeout=60)
    assert "| `config.keyPrefix` | The prefix of every Redis key" in (chart / "README.md").read_text()


def _params() -> list[str]:
    return re.findall(r"^\s*## @param (\S+) ", (CHART / "values.yaml").read_text(), flags=re.M)


def test_every_value_has_a_param_line_and_a_readme_row() -> None:
    documented = set(_params())

    def undocumented(node: object, path: str) -> list[str]:
        if path in documented:
            return []
        if isinstance(node, dict) and node:
            return [p for k, v in node.items() for p in undocumented(v, f"{path}.{k}" if path else k)]
        return [path]

    assert undocumented(VALUES, "") == []
    readme = (CHART / "README.md").read_text()
    assert [p for p in documented if f"| `{p}` |" not in readme] == []

"""The chart's `tracing` values: the standard OTEL_* variables on every process when on (headers from a
Secret), none when off, and the notifier's restricted egress let through to the collector."""

from __future__ import annotations

import pytest

from tests.chart.render import SCENARIOS, HelmError, env_of, pod_spec, rendered, template

SERVICES = {"api": "asyncinfer-api", "notifier": "asyncinfer-notifier", "worker": "asyncinfer-worker"}


def traced_processes(scenario: str) -> dict[str, dict]:
    r = rendered(scenario)
    return {component: r.of_kind("Deployment", component) for component in SERVICES}


def test_on_every_process_exports_to_the_collector_with_its_own_service_name():
    for component, deployments in traced_processes("production").items():
        assert deployments, component
        for deployment in deployments:
            env = env_of(pod_spec(deployment)["containers"][0])
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4318"
            assert env["OTEL_SERVICE_NAME"]["value"] == SERVICES[component]
            assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
            assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.05"
            assert env["TRACING_HEADERS_FILE"]["value"] == "/etc/asyncinfer/secrets/otlp-headers"
            assert "OTEL_EXPORTER_OTLP_HEADERS" not in env, "credentials are a Secret file, never an env var"
            [secrets] = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "secrets"]
            assert {
                "secret": {"name": "otlp-credentials", "items": [{"key": "otlp-headers", "path": "otlp-headers"}]}
            } in secrets["projected"]["sources"]
    assert rendered("production").config["LOG_FORMAT"] == "json"


def test_off_by_default_no_process_has_an_otel_variable():
    for component, deployments in traced_processes("default").items():
        for deployment in deployments:
            names = env_of(pod_spec(deployment)["containers"][0])
            assert not [name for name in names if name.startswith("OTEL_")], component
    assert rendered("default").config["LOG_FORMAT"] == "text"


def test_the_notifiers_restricted_egress_reaches_the_collector():
    policy = rendered("production").one("NetworkPolicy", "notifier")
    egress = policy["spec"]["egress"]
    collector = [rule for rule in egress if rule.get("ports") == [{"port": 4318, "protocol": "TCP"}]]
    assert collector and collector[0]["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "opentelemetry-collector"}},
        }
    ]
    off = template(SCENARIOS["production"], sets=("tracing.enabled=false",))
    [off_policy] = [o for o in off if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("notifier")]
    assert not [rule for rule in off_policy["spec"]["egress"] if rule.get("ports") == [{"port": 4318, "protocol": "TCP"}]]


def test_on_without_an_endpoint_is_refused_naming_it():
    with pytest.raises(HelmError, match="tracing.endpoint"):
        template(SCENARIOS["default"], sets=("tracing.enabled=true",))

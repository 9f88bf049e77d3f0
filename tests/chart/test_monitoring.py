"""Optional monitoring objects: off by default; when on, they scrape the right ports of the right pods,
and the alerts and dashboards come verbatim from the chart's files/ (the alerts pass promtool)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.render import CHART, pod_labels, pod_spec, rendered

MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def test_monitoring_is_off_by_default() -> None:
    r = rendered("default")
    assert not [o for o in r.objects if o["kind"] in MONITORING_KINDS]
    assert not [o for o in r.of_kind("ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]


def test_servicemonitor_scrapes_the_api_metrics_port() -> None:
    r = rendered("monitoring-on")
    monitor = r.one("ServiceMonitor")
    service = r.one("Service", "api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_podmonitor_scrapes_every_worker_and_the_notifier_on_their_health_port() -> None:
    r = rendered("monitoring-on")
    selector = r.one("PodMonitor")["spec"]["selector"]
    (expression,) = selector["matchExpressions"]
    scraped = [
        d
        for d in r.of_kind("Deployment")
        if selector["matchLabels"].items() <= pod_labels(d).items() and pod_labels(d)[expression["key"]] in expression["values"]
    ]
    assert {pod_labels(d)["app.kubernetes.io/component"] for d in scraped} == {"worker", "notifier"}
    assert len(scraped) == len(r.of_kind("Deployment", "worker")) + 1
    for d in scraped:
        assert "health" in {p["name"] for p in pod_spec(d)["containers"][0]["ports"]}
    assert r.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "health"


def test_prometheusrule_is_the_alerts_file_and_passes_promtool(tmp_path: Path) -> None:
    rule = rendered("monitoring-on").one("PrometheusRule")
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"] and source["groups"]
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool not installed (Debian package `prometheus`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_configmap_carries_every_dashboard_file_for_the_grafana_sidecar() -> None:
    r = rendered("monitoring-on")
    (cm,) = [o for o in r.of_kind("ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    files = {p.name: p for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert set(cm["data"]) == set(files) and files
    for name, text in cm["data"].items():
        assert json.loads(text) == json.loads(files[name].read_text())

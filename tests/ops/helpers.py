"""Helpers shared by the operations tests: the dashboard's and the alerts' PromQL, made concrete."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/helm/asyncinfer/files/dashboards/asyncinfer.json"
ALERTS = ROOT / "deploy/helm/asyncinfer/files/alerts.yaml"
# Grafana's variables, as Grafana would expand them with "All" selected.
GRAFANA_VARIABLES = {"$model": ".*", "$__rate_interval": "1m", "${datasource}": ""}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> dict[str, str]:
    """Panel title + refId -> the query with Grafana's variables expanded."""
    queries = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[f"{panel['title']} {target['refId']}"] = expr
    return queries


def alert_expressions() -> dict[str, str]:
    """Alert name -> its expression."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"] if "alert" in rule}

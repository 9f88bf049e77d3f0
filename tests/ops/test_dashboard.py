"""The Grafana dashboard: valid JSON usable on its own (data source as a variable), every query valid
PromQL (promtool parses it), and the panels the issue asks for present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobqueue import metrics
from jobqueue.metrics import BatchedHistogram
from tests.ops.helpers import dashboard, dashboard_queries

NEEDED_METRICS = (
    "asyncinfer_jobs_finished_total",  # throughput by outcome, failures
    "asyncinfer_queue_pending_jobs",
    "asyncinfer_queue_oldest_pending_age_seconds",
    "asyncinfer_job_queue_wait_seconds_bucket",
    "asyncinfer_job_run_seconds_bucket",
    "asyncinfer_job_e2e_seconds_bucket",
    "asyncinfer_worker_batch_size_bucket",
    "asyncinfer_workers",
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "asyncinfer_queue_dead_letter_jobs",
    "asyncinfer_redis_memory_used_bytes",
)


def test_every_panel_uses_the_datasource_variable():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["includeAll"] and variables["model"]["datasource"]["uid"] == "${datasource}"
    data_panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(data_panels) >= 20
    for panel in data_panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_the_panels_the_issue_asks_for_are_there():
    text = "\n".join(dashboard_queries().values())
    for metric in NEEDED_METRICS:
        assert metric in text, metric


def test_queue_series_are_not_summed_across_api_replicas():
    """Every API replica reports the same queue values: a bare sum would count them once per replica."""
    for name, expr in dashboard_queries().items():
        for metric in ("asyncinfer_queue_", "asyncinfer_jobs_", "asyncinfer_workers{", "asyncinfer_redis_memory"):
            if metric in expr:
                assert "max without (instance, pod)" in expr or "max by" in expr, f"{name}: {expr}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: run deploy/ops-tools.sh")
def test_every_query_is_valid_promql(tmp_path: Path):
    """promtool parses each query as a recording rule: a syntax error names the panel."""
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(queries.values())]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: run deploy/ops-tools.sh")
@pytest.mark.parametrize(
    ("panel", "metric"),
    [
        ("Time running A", metrics.JOB_RUN_SECONDS),
        ("End-to-end time A", metrics.JOB_E2E_SECONDS),
        ("Time waiting in the queue A", metrics.JOB_QUEUE_WAIT_SECONDS),
        ("Model call time A", metrics.MODEL_CALL_SECONDS),
    ],
)
def test_latency_panels_resolve_a_sub_millisecond_model(tmp_path: Path, panel: str, metric: object):
    """Jobs of 0.3 ms each, observed into the metric's own buckets: Prometheus (promtool's evaluator)
    puts the panel's median near 0.3 ms, not halfway into a lowest bucket of 10 ms (5 ms)."""
    if isinstance(metric, Histogram):  # prometheus-client's own (the model call)
        name, labels, bounds = metric._name, list(metric._labelnames), metric._upper_bounds[:-1]
    else:
        name, labels, bounds = metric.name, metric.labelnames, metric.bounds  # type: ignore[attr-defined]
    values = {"model": "iris", "priority": "normal"}
    registry = CollectorRegistry()
    observed = BatchedHistogram(name, "jobs of 0.3 ms", labels, bounds, registry=registry)
    observed.observe_many(tuple(values[label] for label in labels), np.full(600, 0.0003))  # per 15 s scrape
    label_text = ",".join(f'{label}="{values[label]}"' for label in labels)
    buckets = [
        s for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples
        if s.name.endswith("_bucket")
    ]  # fmt: skip
    series = [{"series": f'{name}_bucket{{{label_text},le="{s.labels["le"]}"}}', "values": f"0+{s.value:g}x40"} for s in buckets]
    expr = dashboard_queries()[panel]
    test = {
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": expr, "eval_time": "5m", "exp_samples": [{"labels": '{model="iris"}', "value": 0.000375}]}
                ],
            }
        ],
    }
    path = tmp_path / "latency_test.yaml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

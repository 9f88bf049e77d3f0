"""A real Prometheus scrapes a local stack (redis-server, API, two workers, the webhook notifier and a
webhook receiver) under a small load: every metric the dashboard and the alerts use has data, every
dashboard query and alert expression evaluates without error, and Prometheus itself loads and
evaluates the alert rules."""

from __future__ import annotations

import re
import shutil
import time

import httpx
import pytest

from tests.ops.conftest import ADMIN_TOKEN
from tests.ops.helpers import alert_expressions, dashboard_queries, query, wait_for

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing: run deploy/ops-tools.sh")

RANGE = "1m"  # what $__rate_interval becomes here: many 1 s scrapes (the prometheus fixture scrapes every second)


def metric_names(exprs: list[str]) -> set[str]:
    """Metric names in PromQL text (ours and kube-state-metrics'), histogram suffixes kept."""
    return {name for expr in exprs for name in re.findall(r"\b((?:asyncinfer|kube)_[a-z0-9_]+)", expr)}


def test_every_dashboard_and_alert_metric_has_data_under_load(
    ops_stack, prometheus, worker_ports, notifier_port, receiver, maxmemory
):
    # A small load: two jobs failed for good, then jobs at every priority for two workers (three with a
    # webhook, each delivered on its second attempt), a paused spell.
    ops_stack.start_notifier(notifier_port)
    ops_stack.submit(2)
    assert len(ops_stack.fail_pending("model error: out of memory", 2)) == 2
    ops_stack.submit(3, callback_url=receiver.url)
    ops_stack.submit(17, "normal")
    ops_stack.submit(5, "high")
    ops_stack.submit(5, "low")
    for port in worker_ports:
        ops_stack.start_worker(port)
    with ops_stack.http() as http:
        http.post("/predict", json={"data": [[1, 2]]})  # 422: a 4xx in the request metrics
        http.get("/job/no-such-job")
    with ops_stack.http(ADMIN_TOKEN) as http:
        assert http.post("/admin/models/iris/pause").status_code == 200
        paused_ids = ops_stack.submit(1)
        time.sleep(2)  # scraped while paused with a job waiting
        assert http.post("/admin/models/iris/resume").status_code == 200
        assert http.get(f"/job/{paused_ids[0]}", params={"wait": 20}).json()["status"] == "completed"

    wait_for(prometheus, 'asyncinfer_jobs_finished_total{outcome="failed"} > 0')
    wait_for(prometheus, "asyncinfer_job_e2e_seconds_count > 0")
    wait_for(prometheus, 'asyncinfer_notifier_deliveries_total{outcome="delivered"} == 3', 60)
    wait_for(prometheus, "count(up == 1) == 5")
    time.sleep(3)  # a few more scrapes, so rates over the range have two points after the last change

    dashboard = {name: expr.replace("$__rate_interval", RANGE) for name, expr in dashboard_queries().items()}
    alerts = alert_expressions()
    names = metric_names(list(dashboard.values()) + list(alerts.values()))
    assert len(names) >= 20
    empty = []
    for name in sorted(names):
        if not query(prometheus, f'count({{__name__="{name}"}})'):
            empty.append(name)
    assert not empty, f"metrics without data: {empty}"

    no_data = []
    for name, expr in dashboard.items():
        result = query(prometheus, expr)  # asserts it evaluates
        if not result:
            no_data.append(name)
    assert not no_data, f"dashboard queries without data: {no_data}"
    for expr in alerts.values():
        query(prometheus, expr)  # asserts it evaluates

    # The numbers are the stack's: 2 failed for good, 33 completed, and the API reports iris' queue.
    failed_total = query(prometheus, 'max(asyncinfer_jobs_finished_total{model="iris",outcome="failed"})')
    assert float(failed_total[0]["value"][1]) == 2
    completed = query(prometheus, 'max(asyncinfer_jobs_finished_total{model="iris",outcome="completed"})')
    assert float(completed[0]["value"][1]) == 31
    worker_jobs = query(prometheus, "sum(asyncinfer_worker_batch_size_sum)")
    assert float(worker_jobs[0]["value"][1]) == 31  # two worker pods' own observations sum to all jobs run
    assert float(query(prometheus, "max(asyncinfer_redis_memory_max_bytes)")[0]["value"][1]) == maxmemory
    assert query(prometheus, 'asyncinfer_notifier_deliveries_total{outcome="retried"} == 3')  # each 503 once
    routes = {r["metric"]["route"] for r in query(prometheus, "asyncinfer_http_requests_total")}
    assert {"/predict", "/job/{job_id}", "/admin/models/{name}/pause"} <= routes
    assert not any(re.search(r"[0-9a-f]{16}", route) for route in routes), routes  # templates, never ids


def test_prometheus_loads_and_evaluates_every_alert_rule(ops_stack, prometheus, worker_ports, notifier_port):
    for port in worker_ports:
        ops_stack.start_worker(port)
    ops_stack.start_notifier(notifier_port)
    wait_for(prometheus, "asyncinfer_redis_up == 1")
    deadline = time.monotonic() + 20
    while True:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("2") and rule["health"] == "ok" for rule in rules):
            break
        assert time.monotonic() < deadline, [(r["name"], r["health"], r.get("lastError")) for r in rules]
        time.sleep(0.5)
    assert {rule["name"] for rule in rules} == set(alert_expressions())
    # The stack is healthy: nothing fires.
    firing = query(prometheus, 'ALERTS{alertstate="firing"}')
    assert firing == []

"""The dashboard's screenshot without Grafana: a local stack (API, two workers, the webhook notifier and a
receiver) runs a varying load for about a minute while a real Prometheus scrapes it every second; every
panel of the Grafana dashboard is rendered from that Prometheus by tests/ops/dashboard_preview.py, opened
in headless Chromium and saved as tests/ops/artifacts/dashboard.png (gitignored; docs/dashboard.png is a
copy). Every panel must have drawn at least one series with data points."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.ops.conftest import ADMIN_TOKEN, ROW, OpsStack
from tests.ops.dashboard_preview import write_preview
from tests.ops.helpers import DASHBOARD, wait_for

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing: run deploy/ops-tools.sh"),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium missing: run deploy/ops-tools.sh"),
]

ARTIFACTS = Path(__file__).parent / "artifacts"
LOAD_S = 60
PAUSE_AT_S, PAUSE_FOR_S = 22, 8  # a paused spell: pending and oldest age climb, then drain
BURST_AT_S = 40  # one bulk submit: the workers' batches grow
# Grafana's $__rate_interval for 1 s scrapes over a short range is a few seconds; 10 s keeps the lines
# readable while still showing the pause and the burst.
VARIABLES = {"__rate_interval": "10s", "__interval": "1s"}


def jobs_per_second(elapsed_s: float) -> float:
    """The load's shape: a steady start, a busier middle, a quieter end."""
    return 4.0 if elapsed_s < 15 else 8.0 if elapsed_s < 35 else 3.0


def run_load(stack: OpsStack, receiver_url: str) -> None:
    """About LOAD_S seconds of submits at every priority (a few with a webhook), a 422 and a 404 now and
    then, a paused spell and a bulk burst."""
    priorities = ["normal", "normal", "normal", "high", "low"]
    started = time.monotonic()
    submitted = 0
    paused = False
    burst_done = False
    with stack.http() as http, stack.http(ADMIN_TOKEN) as admin:
        while (elapsed := time.monotonic() - started) < LOAD_S:
            if not paused and PAUSE_AT_S <= elapsed < PAUSE_AT_S + PAUSE_FOR_S:
                assert admin.post("/admin/models/iris/pause").status_code == 200
                paused = True
            elif paused and elapsed >= PAUSE_AT_S + PAUSE_FOR_S:
                assert admin.post("/admin/models/iris/resume").status_code == 200
                paused = False
            if not burst_done and elapsed >= BURST_AT_S:
                answer = http.post("/predict/batch", json={"items": [{"data": [ROW]} for _ in range(60)]})
                assert answer.status_code == 200, answer.text
                burst_done = True
            while submitted < jobs_per_second(elapsed) * elapsed:
                body: dict[str, object] = {"data": [ROW], "priority": priorities[submitted % len(priorities)]}
                if submitted % 25 == 0:
                    body["callback_url"] = receiver_url
                answer = http.post("/predict", json=body)
                assert answer.status_code == 202, answer.text
                submitted += 1
                if submitted % 20 == 0:
                    http.post("/predict", json={"data": [[1, 2]]})  # 422
                    http.get("/job/no-such-job")  # 404
            time.sleep(0.1)
        if paused:
            admin.post("/admin/models/iris/resume")


def test_dashboard_preview_draws_every_panel_from_a_real_prometheus(
    ops_stack, prometheus, worker_ports, notifier_port, receiver, maxmemory, browser
):
    began = time.time()
    ops_stack.start_notifier(notifier_port)
    # Jobs failed for good before any worker runs (the protocol's own claim and finish): the failure and
    # dead-letter panels have data. A second round once Prometheus has seen the first, so the failure
    # rate has an increase to show.
    ops_stack.submit(1)
    assert len(ops_stack.fail_pending("model error: out of memory", 1)) == 1
    wait_for(prometheus, 'asyncinfer_jobs_finished_total{outcome="failed"} == 1')
    ops_stack.submit(3)
    assert len(ops_stack.fail_pending("model error: out of memory", 3)) == 3
    for port in worker_ports:
        ops_stack.start_worker(port)
    wait_for(prometheus, "count(up == 1) == 5")

    run_load(ops_stack, receiver.url)
    wait_for(prometheus, "sum(asyncinfer_queue_pending_jobs) == 0", 30)  # the queue drained
    wait_for(prometheus, 'sum(asyncinfer_notifier_deliveries_total{outcome="delivered"}) > 0', 30)
    time.sleep(3)  # a few scrapes after the last change

    html_path = ARTIFACTS / "dashboard.html"
    end = time.time()
    panels = write_preview(DASHBOARD, prometheus, html_path, window_s=end - began + 5, step_s=1, end=end,
                           variables=VARIABLES)  # fmt: skip
    assert not [(p.title, p.errors) for p in panels if p.errors], "queries Prometheus refused"

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(html_path.resolve().as_uri())
        screenshot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        # What the page drew, panel by panel: line paths and stat tiles with their point counts.
        drawn = page.eval_on_selector_all(
            ".panel",
            """panels => panels.map(p => [p.dataset.title,
                 [...p.querySelectorAll('path.series, .stat')].filter(e => Number(e.dataset.points) > 0).length])""",
        )
        overflowing = page.eval_on_selector_all(
            ".panel", "panels => panels.filter(p => p.scrollHeight > p.clientHeight + 1).map(p => p.dataset.title)"
        )
    finally:
        context.close()

    expected = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    assert [title for title, _ in drawn] == expected, "the page lost or reordered panels"
    empty = [title for title, count in drawn if count == 0]
    assert not empty, f"panels that drew no series with data: {empty}"
    assert not overflowing, f"panels whose content overflows their grid cell: {overflowing}"
    assert screenshot.stat().st_size > 50_000

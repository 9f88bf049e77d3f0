"""Helpers shared by the operations tests: the dashboard's and the alerts' PromQL, made concrete; a real
Prometheus server and its queries; the kube-state-metrics stand-in; how to launch Debian's chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from stack import free_port, stop

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


# What kube-state-metrics reports for KEDA's HPA of the iris workers (no cluster here): a stand-in
# endpoint with the real metric names and labels, so the replica panels and alert are checked too.
KSM_TEXT = """\
# TYPE kube_horizontalpodautoscaler_status_current_replicas gauge
kube_horizontalpodautoscaler_status_current_replicas{namespace="ml",horizontalpodautoscaler="keda-hpa-prod-asyncinfer-worker-iris"} 2
# TYPE kube_horizontalpodautoscaler_status_desired_replicas gauge
kube_horizontalpodautoscaler_status_desired_replicas{namespace="ml",horizontalpodautoscaler="keda-hpa-prod-asyncinfer-worker-iris"} 3
# TYPE kube_horizontalpodautoscaler_spec_max_replicas gauge
kube_horizontalpodautoscaler_spec_max_replicas{namespace="ml",horizontalpodautoscaler="keda-hpa-prod-asyncinfer-worker-iris"} 10
"""
# Debian's chromium driven by Playwright (never `playwright install`: it downloads browsers).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


class StaticExporter:
    """Serves fixed Prometheus text on /metrics (the kube-state-metrics stand-in)."""

    def __init__(self, text: str) -> None:
        body = text.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def target(url: str) -> str:
    """host:port of a URL, as a Prometheus scrape target."""
    return url.split("//")[1].split("/")[0]


@contextmanager
def running_prometheus(scrape_targets: dict[str, list[str]], workdir: Path, scrape_interval: str = "1s",
                       rule_files: list[Path] | None = None) -> Iterator[str]:  # fmt: skip
    """A real Prometheus server (Debian's) scraping `scrape_targets` (job name -> host:port list) every
    `scrape_interval`, its config, TSDB and log under `workdir`; yields its base URL once it is ready."""
    port = free_port()
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(path) for path in rule_files or []],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in scrape_targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log_path = workdir / "prometheus.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        stop(proc, 10)
        log.close()


def query(prometheus: str, expr: str) -> list[dict]:
    """An instant query; asserts it evaluates and returns its result vector."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    return answer["data"]["result"]


def wait_for(prometheus: str, expr: str, timeout_s: float = 30) -> list[dict]:
    """Polls an instant query until it returns something (asserts it does within `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not (result := query(prometheus, expr)):
        assert time.monotonic() < deadline, f"no data for {expr}"
        time.sleep(0.5)
    return result

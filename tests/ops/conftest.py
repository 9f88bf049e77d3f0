"""Fixtures of the operations tests: a local stack with authentication (an admin and a client token),
the API's metrics listener and a worker's health port, on the session's real redis-server; a real
Prometheus scraping it; a webhook receiver; headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from stack import BIN, free_port, spawn, wait_http

from jobqueue.protocol import WorkerQueue
from jobqueue.settings import Settings
from jobqueue.states import Outcome
from tests.conftest import Processes, service_env
from tests.notifier.helpers import Receiver, Reply, new_secret
from tests.ops.helpers import ALERTS, CHROMIUM, CHROMIUM_ARGS, KSM_TEXT, StaticExporter, running_prometheus, target

ADMIN_TOKEN = "ops-admin-token-0123456789"
CLIENT_TOKEN = "ops-client-token-0123456789"
ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass
class OpsStack:
    """A running API (+ workers on demand) and how to reach it."""

    processes: Processes
    env: dict[str, str]
    redis_url: str
    api_url: str
    metrics_url: str
    worker_metrics_urls: list[str] = field(default_factory=list)

    @property
    def webhook_secret(self) -> str:
        return self.env["WEBHOOK_SECRET"]

    def http(self, token: str = CLIENT_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def start_worker(self, port: int | None = None) -> str:
        """A worker process with its own health/metrics port; returns its /metrics URL."""
        port = port or free_port()
        self.processes.worker({**self.env, "WORKER_HEALTH_PORT": str(port)})
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url, timeout_s=60)
        self.worker_metrics_urls.append(url)
        return url

    def start_notifier(self, port: int) -> None:
        """The webhook notifier process, its health/metrics on `port`."""
        proc = spawn([str(BIN / "asyncinfer-notifier")], {**self.env, "WORKER_HEALTH_PORT": str(port)},
                     self.processes.tmp_path / f"notifier-{port}.log")  # fmt: skip
        self.processes.procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/readyz", 20, proc)

    def submit(self, count: int = 1, priority: str = "normal", callback_url: str | None = None) -> list[str]:
        body: dict[str, object] = {"data": [ROW], "priority": priority}
        if callback_url:
            body["callback_url"] = callback_url
        with self.http() as http:
            ids = []
            for _ in range(count):
                answer = http.post("/predict", json=body)
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["job_id"])
            return ids

    def fail_pending(self, error: str, count: int, attempts: int = 1) -> list[str]:
        """With no worker running: take `count` pending jobs as a worker would and fail them for good,
        so they land in the dead-letter list. With `attempts` > 1 each runs that many times, its model
        raising every time, as a flaky model's job ends: "failed after N attempts: <error>"."""
        outcome = Outcome.RETRY if attempts > 1 else Outcome.FAILED
        return self.run_pending(count, [(outcome, error)] * attempts, max_attempts=attempts)

    def run_pending(self, count: int, attempts: list[tuple[Outcome, str]], max_attempts: int = 3) -> list[str]:
        """With no worker running: take `count` pending jobs as a worker would (the protocol's own claim
        and finish), once per attempt, ending each with that attempt's (outcome, result or error). A
        retried job goes back to the front of its list, so the next claim takes it again."""
        settings = Settings(redis_url=self.redis_url, max_attempts=max_attempts)
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            queue = WorkerQueue(client, settings, "iris", "test")
            first: list[str] = []
            for outcome, payload in attempts:
                claimed = queue.claim("ops-test-worker", count).jobs
                queue.finish("ops-test-worker", [(job.job_id, outcome, payload) for job in claimed])
                first = first or [job.job_id for job in claimed]
            queue.deregister("ops-test-worker")
            return first
        finally:
            client.close()


@pytest.fixture
def ops_stack(processes: Processes, redis_server, redis_client, tmp_path: Path) -> Iterator[OpsStack]:
    """API with AUTH_TOKENS_FILE and METRICS_PORT on a clean Redis; no worker until asked for. Webhooks
    may go to plain-http receivers on loopback."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops admin {ADMIN_TOKEN}\nalice client {CLIENT_TOKEN}\n")
    metrics_port = free_port()
    env = service_env(
        redis_server.url, AUTH_TOKENS_FILE=tokens, METRICS_PORT=metrics_port,
        WEBHOOK_SECRET=new_secret(), WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE="true",
    )  # fmt: skip
    _, url = processes.api(env)
    yield OpsStack(processes, env, redis_server.url, url, f"http://127.0.0.1:{metrics_port}/metrics")


@pytest.fixture
def worker_ports() -> list[int]:
    """Ports for two workers the test starts when it wants them; Prometheus scrapes them from the start."""
    return [free_port(), free_port()]


@pytest.fixture
def notifier_port() -> int:
    """The notifier's health/metrics port (the test starts the notifier when it wants it)."""
    return free_port()


@pytest.fixture
def prometheus(ops_stack: OpsStack, worker_ports: list[int], notifier_port: int, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the API, two worker ports, the notifier's and the kube-state-metrics
    stand-in every second, with the alerts loaded; yields its base URL."""
    ksm = StaticExporter(KSM_TEXT)
    scrape_targets = {
        "asyncinfer-api": [target(ops_stack.metrics_url)],
        "asyncinfer-worker": [f"127.0.0.1:{port}" for port in worker_ports],
        "asyncinfer-notifier": [f"127.0.0.1:{notifier_port}"],
        "kube-state-metrics": [ksm.target],
    }
    try:
        with running_prometheus(scrape_targets, tmp_path, "1s", [ALERTS]) as url:
            yield url
    finally:
        ksm.close()


@pytest.fixture
def maxmemory(redis_client) -> Iterator[int]:
    """A maxmemory on the session's Redis (so the memory-limit series exist), reset afterwards."""
    limit = 256 * 1024 * 1024
    redis_client.config_set("maxmemory", limit)
    yield limit
    redis_client.config_set("maxmemory", 0)


@pytest.fixture
def receiver(ops_stack: OpsStack) -> Iterator[Receiver]:
    """A webhook receiver that answers each webhook's first attempt with 503, then 200."""
    receiver = Receiver(ops_stack.webhook_secret, [Reply(503)])
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium, headless, through Playwright (one per test module)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()

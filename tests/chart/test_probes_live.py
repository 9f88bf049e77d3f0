"""The probe paths and ports the chart renders exist in the running app: render, start the real API
and worker against a real redis-server with the chart's port settings, GET every probe, expect 200."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.chart.render import pod_spec, rendered
from tests.conftest import MODEL_PATH, free_port, service_env

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def http_probes(deployment: dict[str, Any]) -> tuple[set[str], int, dict[str, str]]:
    """(probe paths, the container port they hit, the container's literal env values)."""
    (container,) = pod_spec(deployment)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths, targets = set(), set()
    for probe in PROBES:
        get = container[probe]["httpGet"]
        paths.add(get["path"])
        targets.add(ports.get(get["port"], get["port"]))
    assert len(targets) == 1, f"probes hit several ports: {targets}"
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return paths, targets.pop(), env


def get_status(url: str, timeout_s: float = 30.0) -> int:
    """Status of GET url, retrying while the process is still starting (connection refused)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            if err.code != 503 or time.monotonic() > deadline:  # 503 = not ready yet: wait for it
                return err.code
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture
def chart_probes() -> dict[str, tuple[set[str], int, dict[str, str]]]:
    r = rendered("default")
    return {c: http_probes(r.one("Deployment", c)) for c in ("api", "worker")}


def test_chart_probes_are_the_documented_ones(chart_probes) -> None:
    assert chart_probes["api"][0] == {"/healthz", "/readyz"}
    assert chart_probes["worker"][0] == {"/healthz", "/readyz"}
    worker_port, worker_env = chart_probes["worker"][1], chart_probes["worker"][2]
    assert worker_port == 8081 and worker_env["WORKER_HEALTH_PORT"] == "8081"
    api_port, api_env = chart_probes["api"][1], chart_probes["api"][2]
    assert api_env["PORT"] == str(api_port) and api_env["HOST"] == "0.0.0.0"


def test_probe_paths_answer_200_in_the_running_app(chart_probes, redis_server, processes, tmp_path: Path) -> None:
    if not Path(MODEL_PATH).exists():
        pytest.fail(f"{MODEL_PATH} is missing: run `make model` first")
    api_paths, _, _ = chart_probes["api"]
    worker_paths, _, _ = chart_probes["worker"]
    # The chart's ports (8000/8081) may be taken on a developer machine: same paths, free ports.
    env = service_env(redis_server.url, KEY_PREFIX="chart-probes")
    worker_port, metrics_port = free_port(), free_port()
    processes.worker({**env, "WORKER_HEALTH_PORT": str(worker_port)})
    # As the chart runs it: /metrics on METRICS_PORT, the port the Service exposes and the Ingress does not route.
    _, api_base = processes.api({**env, "METRICS_PORT": str(metrics_port)})
    for path in sorted(api_paths):
        assert get_status(api_base + path) == 200, f"API {path}\n{processes.logs()}"
    assert get_status(f"http://127.0.0.1:{metrics_port}/metrics") == 200, f"API metrics\n{processes.logs()}"
    for path in sorted(worker_paths):
        assert get_status(f"http://127.0.0.1:{worker_port}{path}") == 200, f"worker {path}\n{processes.logs()}"
    # And a path the app does not serve is not 200: the check above can fail.
    assert get_status(f"http://127.0.0.1:{worker_port}/nope", timeout_s=1) == 404


def test_worker_serves_metrics_on_its_health_port(redis_server, processes) -> None:
    """The chart's PodMonitor scrapes /metrics on the workers' `health` port (WORKER_HEALTH_PORT)."""
    r = rendered("monitoring-on")
    assert r.one("PodMonitor")["spec"]["podMetricsEndpoints"][0] == {"port": "health", "path": "/metrics", "interval": "15s"}
    worker_port = free_port()
    processes.worker({**service_env(redis_server.url, KEY_PREFIX="chart-metrics"), "WORKER_HEALTH_PORT": str(worker_port)})
    assert get_status(f"http://127.0.0.1:{worker_port}/healthz") == 200, processes.logs()
    assert get_status(f"http://127.0.0.1:{worker_port}/metrics") == 200, f"worker /metrics\n{processes.logs()}"


def test_notifier_probes_answer_with_the_charts_secret_file(redis_server, processes, tmp_path: Path) -> None:
    """The notifier as the chart runs it: its health port, and the webhook secret the chart generates, as a file."""
    import base64

    from tests.conftest import BIN, spawn

    r = rendered("default")
    (container,) = pod_spec(r.one("Deployment", "notifier"))["containers"]
    paths = {container[probe]["httpGet"]["path"] for probe in PROBES}
    assert paths == {"/healthz", "/readyz"} and container["command"] == ["asyncinfer-notifier"]
    (secret,) = [s for s in r.of_kind("Secret") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"]
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_bytes(base64.b64decode(secret["data"]["webhook-secret"]))
    port = free_port()
    env = {
        **service_env(redis_server.url, KEY_PREFIX="chart-notifier"),
        "WORKER_HEALTH_PORT": str(port),
        "WEBHOOK_SECRET_FILE": str(secret_file),
    }
    processes.procs.append(spawn([str(BIN / "asyncinfer-notifier")], env, tmp_path / "notifier.log"))
    for path in sorted(paths) + ["/metrics"]:
        assert get_status(f"http://127.0.0.1:{port}{path}") == 200, f"notifier {path}\n{processes.logs()}"


def test_the_api_parses_the_charts_tokens_files(tmp_path: Path) -> None:
    """Both forms the chart renders — offline (locked) and live (random) — parse in the API's own reader."""
    import base64
    import re

    from api.auth import parse_tokens
    from tests.chart.render import CHART

    (secret,) = [
        s for s in rendered("default").of_kind("Secret") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "auth"
    ]
    locked = parse_tokens(base64.b64decode(secret["data"]["tokens"]).decode())
    assert [(p.name, p.role) for _, p in locked] == [("admin", "admin"), ("helm-test", "client")]
    # The live form, as the template builds it: `admin admin <40 alphanumerics>` then the helm-test client.
    template_text = (CHART / "templates" / "security" / "auth-secret.yaml").read_text()
    live_format = re.search(r'\$random := printf "(.+?)" \(randAlphaNum 40\) \$test \(randAlphaNum 40\)', template_text)
    assert live_format, "auth-secret.yaml no longer builds the live tokens file the way this test expects"
    live = live_format.group(1).replace("\\n", "\n") % ("a" * 40, "helm-test", "b" * 40)
    assert [(p.name, p.role) for _, p in parse_tokens(live)] == [("admin", "admin"), ("helm-test", "client")]


def test_the_helm_test_pod_script_completes_a_job_against_the_real_services(redis_server, processes, tmp_path: Path) -> None:
    """`helm test`'s own script and env, run here against a real API (auth on) and worker."""
    import subprocess

    pod = rendered("default").one("Pod", "test")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PRINCIPAL"] == "helm-test" and env["MODEL"] == "iris"
    tokens = tmp_path / "auth-tokens"
    tokens.write_text(f"admin admin {'a' * 40}\nhelm-test client {'b' * 40}\n")
    service = {**service_env(redis_server.url, KEY_PREFIX="chart-helm-test"), "AUTH_TOKENS_FILE": str(tokens)}
    processes.worker({**service, "WORKER_HEALTH_PORT": "0"})
    _, api_base = processes.api(service)

    def run(tokens_file: Path) -> subprocess.CompletedProcess[str]:
        script_env = {
            **env,
            "API_URL": api_base,
            "TIMEOUT_S": "60",
            "AUTH_TOKENS_FILE": str(tokens_file),
            "PATH": "/usr/bin:/bin",
        }
        return subprocess.run(
            [*container["command"], *container["args"]], env=script_env, capture_output=True, text=True, timeout=120, check=False
        )

    result = run(tokens)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{processes.logs()}"
    assert "status completed" in result.stdout
    wrong = tmp_path / "wrong-tokens"
    wrong.write_text(f"helm-test client {'c' * 40}\n")
    refused = run(wrong)
    assert refused.returncode != 0 and "401" in refused.stderr


def test_a_worker_whose_model_is_still_loading_is_alive_but_not_ready(redis_server, processes, tmp_path: Path) -> None:
    """A model that loads slower than the startup probe allows (a large file, a slow volume) must not be
    a crash loop: liveness answers before the load, readiness only after it. The model file here is a
    FIFO nobody writes to, so the load blocks for as long as the test looks."""
    import os

    from tests.conftest import BIN, spawn

    fifo = tmp_path / "slow-model.onnx"
    os.mkfifo(fifo)
    port = free_port()
    env = {
        **service_env(redis_server.url, KEY_PREFIX="chart-slow-load"),
        "MODEL_PATH": str(fifo),
        "WORKER_HEALTH_PORT": str(port),
    }
    processes.procs.append(spawn([str(BIN / "asyncinfer-worker")], env, tmp_path / "worker-slow.log"))
    assert get_status(f"http://127.0.0.1:{port}/healthz") == 200, processes.logs()
    assert get_status(f"http://127.0.0.1:{port}/readyz", timeout_s=0) == 503, processes.logs()
    assert processes.procs[-1].poll() is None, "the worker exited instead of waiting for its model"


def test_the_api_keeps_an_idle_connection_open_past_uvicorns_default(redis_server, processes) -> None:
    """ingress-nginx pools upstream connections 60 s: an API that closes an idle one first (uvicorn's
    default: 5 s) races the proxy's next request on it, and the POST gets a 502. Idle 6 s, then reuse."""
    import select
    import socket

    _, api_base = processes.api(service_env(redis_server.url, KEY_PREFIX="chart-keepalive"))
    port = int(api_base.rsplit(":", 1)[1])
    request = b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        readable, _, _ = select.select([sock], [], [], 6.0)  # an idle client, past uvicorn's 5 s default
        assert not readable, "the API closed an idle keep-alive connection"
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")

"""deploy/compose/docker-compose.yaml: valid for Compose, and a real `up` serves a job with two workers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import httpx
import pytest

from tests.containers.conftest import FIGURES, IRIS_ROW, ROOT, wait_all_completed, wait_http

pytestmark = pytest.mark.timeout(1800)  # safety net; see test_containers.py

COMPOSE_FILE = ROOT / "deploy" / "compose" / "docker-compose.yaml"


def compose_command(docker) -> list[str]:
    """docker-compose (v1, Debian's) or the `docker compose` plugin (v2)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if docker("compose", "version", check=False).returncode == 0:
        return [docker.cli, "compose"]
    pytest.skip("no docker-compose and no `docker compose` plugin (deploy/docker/engine.sh installs docker-compose)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def compose(docker, images, request: pytest.FixtureRequest, tmp_path):
    project = f"aic{uuid.uuid4().hex[:6]}"
    # The secret files compose mounts, made by the project's own script into a private directory.
    secrets_dir = tmp_path / "secrets"
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "compose" / "secrets.sh")],
        check=True,
        timeout=60,
        env={**docker.env, "ASYNCINFER_SECRETS_DIR": str(secrets_dir)},
    )
    env = {
        "ASYNCINFER_SECRETS_DIR": str(secrets_dir),
        **docker.env,
        "REDIS_IMAGE": images.base,  # Debian's redis-server from the local base: no registry here
        "API_IMAGE": images.api,
        "WORKER_IMAGE": images.worker,
        "API_PORT": str(free_port()),
        "REDIS_APPENDFSYNC": "always",
    }
    base = [*compose_command(docker), "--project-name", project, "--file", str(COMPOSE_FILE)]

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"compose {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        return result

    run.env = env  # type: ignore[attr-defined]
    run.project = project  # type: ignore[attr-defined]
    yield run
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        logs = subprocess.run([*base, "logs", "--tail", "40"], env=env, capture_output=True, text=True, timeout=60, check=False)
        print(logs.stdout[-6000:])
    subprocess.run([*base, "down", "--volumes", "--timeout", "5"], env=env, capture_output=True, timeout=180, check=False)


def test_compose_file_is_valid(compose):
    rendered = compose("config").stdout
    assert "appendonly" in rendered and "127.0.0.1:" in rendered


def test_compose_up_runs_redis_api_and_two_workers(compose, docker):
    started = time.monotonic()
    compose("up", "--detach", "--scale", "worker=2")
    url = f"http://127.0.0.1:{compose.env['API_PORT']}"
    wait_http(url + "/readyz", timeout_s=90)
    FIGURES.append(f"compose up (redis healthy -> api ready): {time.monotonic() - started:.1f}s")
    workers = docker(
        "ps",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={compose.project}",
        "--filter",
        "label=com.docker.compose.service=worker",
    ).stdout.split()
    assert len(workers) == 2
    with httpx.Client(base_url=url, timeout=10) as client:
        ids = [client.post("/predict", json={"data": [IRIS_ROW]}).json()["job_id"] for _ in range(20)]
    jobs = wait_all_completed(url, ids, timeout_s=60)
    assert {job["result"]["class_name"] for job in jobs} == {"virginica"}

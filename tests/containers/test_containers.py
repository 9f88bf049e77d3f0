"""The two images as real containers: size and metadata, the e2e suite, non-root, drain, crash recovery, Redis restarts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from jobqueue.keys import StoreKeys
from tests.containers.conftest import FIGURES, ROOT, Load, Stack, wait_all_completed, wait_http

# Generous safety net only: every wait below has its own, tighter deadline. The first test of a bare
# `pytest tests/containers` run also pays for building the base and both images.
pytestmark = pytest.mark.timeout(1800)

UID = "10001"
WORKER_IMAGE_LIMIT_MB = 550  # 500 until the kubernetes client and its dependencies came in (pod-deletion-cost)
DRAIN_TIMEOUT_S = 10
# Fast failure detection so crash recovery is seen within seconds, not the production 10 s/5 s.
FAST_RECOVERY = {"WORKER_TTL_SECONDS": "3", "RECOVERY_INTERVAL_SECONDS": "1"}
# Workers hold claimed jobs while they wait to fill a batch: a signal then lands on held work.
HOLD_JOBS = {"MAX_BATCH_WAIT_MS": "1000", "DRAIN_TIMEOUT_SECONDS": str(DRAIN_TIMEOUT_S)}


def full_stack(stack: Stack, appendfsync: str = "always", **worker_env: str) -> str:
    stack.start_redis(appendfsync)
    url = stack.start_api()
    stack.start_worker("a", **worker_env)
    stack.start_worker("b", **worker_env)
    return url


def test_images_are_small_non_root_and_labelled(docker, images):
    for tag, kind in ((images.api, "api"), (images.worker, "worker")):
        config = docker.inspect(tag)["Config"]
        assert config["User"] == f"{UID}:{UID}"
        assert config["Entrypoint"] == [f"asyncinfer-{kind}"]  # exec form: the service is PID 1
        assert config["WorkingDir"] == "/app"
        labels = config["Labels"]
        assert labels["org.opencontainers.image.source"].startswith("https://")
        assert labels["org.opencontainers.image.version"]
        assert "MODEL_PATH=/app/models/iris.onnx" in config["Env"]
        # No compiler and no pip cache in the runtime image.
        probe = docker(
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            tag,
            "-c",
            "command -v gcc cc g++ || true; ls -A /root/.cache /app/.cache 2>/dev/null || true",
        )
        assert probe.stdout.strip() == "", probe.stdout
    worker_mb = docker.inspect(images.worker)["Size"] / 1e6
    assert worker_mb < WORKER_IMAGE_LIMIT_MB, f"worker image {worker_mb:.0f} MB"
    assert "WORKER_HEALTH_PORT=8081" in docker.inspect(images.worker)["Config"]["Env"]
    assert "HOST=0.0.0.0" in docker.inspect(images.api)["Config"]["Env"]


def test_e2e_suite_passes_against_the_containers(stack):
    url = full_stack(stack, appendfsync="everysec")
    # The suite the local stack and the cluster run, pointed at the API container's published port.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, "E2E_BASE_URL": url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    FIGURES.append(f"tests/e2e against the containers: {summary}")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary


def test_services_run_as_the_non_root_uid(stack, docker):
    full_stack(stack)
    for name in (f"{stack.prefix}-api", f"{stack.prefix}-worker-a"):
        assert docker("exec", name, "id", "-u").stdout.strip() == UID
        # PID 1 is the service itself (exec form), running as the same UID.
        status = docker("exec", name, "cat", "/proc/1/status").stdout
        assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s", status, re.M), status
        cmdline = docker("exec", name, "cat", "/proc/1/cmdline").stdout
        assert "asyncinfer-" in cmdline


def test_docker_stop_of_a_worker_under_load_drains_exits_0_and_loses_nothing(stack, docker):
    url = full_stack(stack, **HOLD_JOBS, **FAST_RECOVERY)
    worker = f"{stack.prefix}-worker-a"
    with Load(url) as load:
        load.wait_for(200)
        started = time.monotonic()
        # SIGTERM, then SIGKILL only after a grace well above the drain timeout.
        docker("stop", "--time", str(DRAIN_TIMEOUT_S + 20), worker, timeout=DRAIN_TIMEOUT_S + 60)
        stopped_in = time.monotonic() - started
        load.wait_for(len(load.accepted) + 100)
    state = docker.inspect(worker)["State"]
    FIGURES.append(f"docker stop of a worker under load: exit {state['ExitCode']} in {stopped_in:.2f}s")
    assert state["ExitCode"] == 0 and not state["OOMKilled"]
    assert stopped_in < DRAIN_TIMEOUT_S
    jobs = wait_all_completed(url, load.accepted)
    assert len(jobs) == len(load.accepted) > 300


def test_docker_kill_of_a_worker_under_load_loses_nothing(stack, docker):
    url = full_stack(stack, **HOLD_JOBS, **FAST_RECOVERY)
    worker = f"{stack.prefix}-worker-a"
    with Load(url) as load:
        load.wait_for(200)
        # Wait until the victim holds jobs, so the kill lands on claimed, unacknowledged work.
        deadline = time.monotonic() + 30
        # The default model's per-worker processing lists, named as jobqueue/keys.py names them.
        pattern = StoreKeys("asyncinfer").model("iris").processing(f"{worker}-*")
        while not (held_keys := stack.redis_cli("--scan", "--pattern", pattern)):
            assert time.monotonic() < deadline, "worker-a never held a job"
            time.sleep(0.02)
        docker("kill", worker)  # SIGKILL: no drain, no acknowledgement
        killed_at = time.monotonic()
        held = [job_id for key in held_keys.split() for job_id in stack.redis_cli("lrange", key, "0", "-1").split()]
        load.wait_for(len(load.accepted) + 100)
    assert docker.inspect(worker)["State"]["ExitCode"] == 137
    jobs = {job["job_id"]: job for job in wait_all_completed(url, load.accepted)}
    FIGURES.append(
        f"docker kill of a worker under load: {len(held)} held job(s) recovered, "
        f"all {len(jobs)} completed {time.monotonic() - killed_at:.1f}s after the kill"
    )
    # What the dead worker held was run again by the other one, no loss. A death alone counts an attempt;
    # a death in a batch is blamed on none of its members (bisection: the halves run again uncounted).
    assert held and set(held) <= set(jobs)
    assert all(jobs[job_id]["attempts"] >= (2 if len(held) == 1 else 1) for job_id in held)


def test_redis_sigkill_and_restart_keeps_every_acknowledged_job(stack, docker):
    url = full_stack(stack, appendfsync="always", **FAST_RECOVERY)
    with Load(url) as load:
        load.wait_for(200)
        docker("kill", stack.redis)  # SIGKILL: only what AOF fsynced survives
        acknowledged_before_kill = len(load.accepted)
        time.sleep(1)
        docker("start", stack.redis)
        stack.wait_redis()
        wait_http(url + "/readyz", timeout_s=30)
        load.wait_for(len(load.accepted) + 100)  # the API and workers recovered without restarts
    FIGURES.append(
        f"redis kill -9 + start under load: {acknowledged_before_kill} acknowledged before the kill, "
        f"{len(load.accepted)} in all, {load.refused} refused during the outage"
    )
    jobs = wait_all_completed(url, load.accepted)
    assert len(jobs) == len(load.accepted)
    for name in (f"{stack.prefix}-api", f"{stack.prefix}-worker-a", f"{stack.prefix}-worker-b"):
        info = docker.inspect(name)
        assert info["State"]["Running"] and info["RestartCount"] == 0, (name, info["State"])


def test_api_readiness_follows_redis(stack, docker):
    stack.start_redis()
    url = stack.start_api()
    docker("stop", stack.redis)
    wait_http(url + "/readyz", timeout_s=15, expect=503)
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # liveness never depends on Redis
    docker("start", stack.redis)
    back_in = wait_http(url + "/readyz", timeout_s=30)
    FIGURES.append(f"api /readyz 503 while Redis was stopped, 200 again {back_in:.2f}s after docker start")

"""Container tier fixtures: a Docker engine, the two images built on a local base, a stack of containers.

`make test-containers` starts the engine, builds the images and passes their tags in
ASYNCINFER_{BASE,API,WORKER}_IMAGE; run bare (`pytest tests/containers`), the fixtures do the same
steps themselves through deploy/docker/engine.sh and base-image.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SH = ROOT / "deploy" / "docker" / "engine.sh"
BASE_IMAGE_SH = ROOT / "deploy" / "docker" / "base-image.sh"
ENGINE_SKIPPED = 77  # engine.sh: no engine answers and none can be started (not root)
BUILD_TIMEOUT_S = 1800  # a cold base + pip install of every dependency on 2 cores
READY_TIMEOUT_S = 60
IRIS_ROW = [6.7, 3.0, 5.2, 2.3]

# Figures (image sizes, start-up times) printed in the terminal summary.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("container figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def docker_cli() -> str:
    """Debian's CLI when present (BuildKit built in), else whatever `docker` is on PATH."""
    if os.environ.get("DOCKER"):
        return os.environ["DOCKER"]
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker") or "docker"


class Docker:
    """Thin wrapper over the docker CLI, pointed at one engine."""

    def __init__(self, host: str) -> None:
        self.cli = docker_cli()
        self.env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "1"}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", name).stdout)[0]

    def image_exists(self, tag: str) -> bool:
        return self("image", "inspect", tag, check=False).returncode == 0


def _engine_host() -> tuple[str, bool]:
    """(DOCKER_HOST, whether we started the engine and must stop it)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and Docker(host)("version", check=False, timeout=15).returncode == 0:
        return host, False
    result = subprocess.run([str(ENGINE_SH), "start"], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode == ENGINE_SKIPPED:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, f"engine.sh start failed:\n{result.stderr[-3000:]}"
    return result.stdout.strip(), True


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    host, started = _engine_host()
    yield Docker(host)
    if started:
        subprocess.run([str(ENGINE_SH), "stop"], timeout=120, check=False)


@dataclass(frozen=True)
class Images:
    base: str
    api: str
    worker: str


def _build(docker: Docker, dockerfile: str, tag: str, base: str) -> None:
    args = ["build", "-f", dockerfile, "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(ROOT)]
    result = docker(*args, check=False, timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:  # BuildKit on engine 20.10 now and then drops its session: retry once
        result = docker(*args, check=False, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, f"building {dockerfile} failed:\n{result.stderr[-5000:]}"


@pytest.fixture(scope="session")
def images(docker: Docker) -> Images:
    """The images under test: the tags `make test-containers` built, else built here on the local base."""
    given = [os.environ.get(f"ASYNCINFER_{kind}_IMAGE", "") for kind in ("BASE", "API", "WORKER")]
    if all(given) and all(docker.image_exists(tag) for tag in given):
        images = Images(*given)
    else:
        started = time.monotonic()
        result = subprocess.run(
            [str(BASE_IMAGE_SH)], env=docker.env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        assert result.returncode == 0, f"base-image.sh failed:\n{result.stderr[-3000:]}"
        base = result.stdout.strip()
        images = Images(base, "asyncinfer-api:containers-test", "asyncinfer-worker:containers-test")
        _build(docker, "Dockerfile.worker", images.worker, base)
        _build(docker, "Dockerfile.api", images.api, base)
        FIGURES.append(f"base + both images ready in {time.monotonic() - started:.0f}s")
    for tag in (images.base, images.api, images.worker):
        size = docker.inspect(tag)["Size"]
        FIGURES.append(f"image {tag}: {size / 1e6:.0f} MB")
    return images


@pytest.fixture(scope="session")
def network(docker: Docker) -> Iterator[str]:
    """A user-defined bridge network: containers find each other by name."""
    name = f"asyncinfer-test-{uuid.uuid4().hex[:8]}"
    docker("network", "create", name)
    yield name
    docker("network", "rm", name, check=False)


def wait_http(url: str, timeout_s: float = READY_TIMEOUT_S, expect: int = 200) -> float:
    """Poll url until it answers `expect`; returns the seconds it took."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == expect:
                return time.monotonic() - started
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {expect} within {timeout_s}s (last: {last})")


@dataclass
class Stack:
    """Redis, the API and workers as containers on one network, named with a per-test prefix."""

    docker: Docker
    images: Images
    network: str
    prefix: str = field(default_factory=lambda: f"ai-{uuid.uuid4().hex[:6]}")
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def redis(self) -> str:
        return f"{self.prefix}-redis"

    def _run(self, name: str, *args: str) -> None:
        self.containers.append(name)
        self.docker("run", "--detach", "--name", name, "--hostname", name, "--network", self.network, *args)

    def _env_args(self, extra: dict[str, str]) -> list[str]:
        env = {"REDIS_URL": f"redis://{self.redis}:6379/0", "LOG_LEVEL": "INFO", **self.env, **extra}
        return [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]

    def published(self, name: str, port: int) -> str:
        """The 127.0.0.1:PORT the engine chose for a container port."""
        out = self.docker("port", name, f"{port}/tcp").stdout.split()
        return next(line for line in out if line.startswith("127.0.0.1:"))

    def start_redis(self, appendfsync: str = "always") -> None:
        """Debian's redis-server from the local base, AOF on a named volume, as the redis user."""
        volume = f"{self.prefix}-redis-data"
        self.volumes.append(volume)
        self._run(
            self.redis,
            "--user",
            "redis",
            # /var/lib/redis belongs to the redis user in the base, so the new volume does too.
            "--volume",
            f"{volume}:/var/lib/redis",
            self.images.base,
            "redis-server",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--port",
            "6379",
            "--dir",
            "/var/lib/redis",
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
        )
        self.wait_redis()

    def wait_redis(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.redis_cli("ping", check=False) == "PONG":
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.redis} not answering PING within {timeout_s}s")

    def redis_cli(self, *args: str, check: bool = True) -> str:
        return self.docker("exec", self.redis, "redis-cli", *args, check=check).stdout.strip()

    def start_api(self, **env: str) -> str:
        """Starts the API; returns its base URL once /readyz answers 200."""
        name = f"{self.prefix}-api"
        started = time.monotonic()
        self._run(name, "--publish", "127.0.0.1::8000", *self._env_args(env), self.images.api)
        url = f"http://{self.published(name, 8000)}"
        wait_http(url + "/readyz")
        FIGURES.append(f"api container ready in {time.monotonic() - started:.2f}s (docker run -> /readyz 200)")
        return url

    def start_worker(self, suffix: str, **env: str) -> str:
        """Starts a worker; returns its container name once its /readyz answers 200."""
        name = f"{self.prefix}-worker-{suffix}"
        started = time.monotonic()
        self._run(name, "--publish", "127.0.0.1::8081", *self._env_args(env), self.images.worker)
        wait_http(f"http://{self.published(name, 8081)}/readyz")
        FIGURES.append(f"worker container ready in {time.monotonic() - started:.2f}s (docker run -> /readyz 200)")
        return name

    def logs(self) -> str:
        parts = []
        for name in self.containers:
            result = self.docker("logs", "--tail", "40", name, check=False)
            parts.append(f"== {name}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    def remove(self) -> None:
        for name in reversed(self.containers):
            self.docker("rm", "--force", name, check=False)
        for volume in self.volumes:
            self.docker("volume", "rm", volume, check=False)


@pytest.fixture
def stack(docker: Docker, images: Images, network: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A fresh stack per test (Redis with AOF, then whatever the test starts); removed afterwards."""
    stack = Stack(docker, images, network)
    yield stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(stack.logs())
    stack.remove()


class Load:
    """Submits jobs in a background thread until stopped; keeps every id that got a 202."""

    def __init__(self, base_url: str, pause_s: float = 0.005) -> None:
        self.base_url = base_url
        self.pause_s = pause_s
        self.accepted: list[str] = []
        self.refused = 0  # 429/503/connection errors: not acknowledged, so not owed a result
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} jobs accepted in {timeout_s}s"
            time.sleep(0.05)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json={"data": [IRIS_ROW]})
                except httpx.HTTPError:
                    self.refused += 1
                    self._stop.wait(0.05)
                    continue
                if response.status_code == 202:
                    self.accepted.append(response.json()["job_id"])
                else:
                    self.refused += 1
                self._stop.wait(self.pause_s)


def wait_all_completed(base_url: str, job_ids: list[str], timeout_s: float = 90) -> list[dict]:
    """Every id reaches `completed` (GET /job/{id}); returns the job views."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for job_id in job_ids:
            while True:
                body = client.get(f"/job/{job_id}", params={"wait": 5}).json()
                if body.get("status") not in ("pending", "processing"):
                    done[job_id] = body
                    break
                assert time.monotonic() < deadline, f"job {job_id} still {body.get('status')} after {timeout_s}s"
    not_completed = {job_id: body for job_id, body in done.items() if body.get("status") != "completed"}
    assert not not_completed, f"{len(not_completed)} job(s) not completed, e.g. {next(iter(not_completed.values()))}"
    return list(done.values())

"""Shared fixtures: a real redis-server per session, a clean database per test, settings, processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from stack import BIN, RedisServer, free_port, spawn, start_api, start_worker, stop

from jobqueue.settings import Settings
from tests.support.redis_cluster import RedisClusterHarness, redis_cluster_fixture

ROOT = Path(__file__).resolve().parents[1]

MODEL_PATH = str(ROOT / "models" / "iris.onnx")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free port, AOF on, in a temporary directory."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendfsync="everysec").start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A clean database for each test."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


# Three masters with a replica each, started once per test module that asks for `redis_cluster`.
redis_cluster_module = redis_cluster_fixture("redis_cluster_module")


@pytest.fixture
def redis_cluster(redis_cluster_module: RedisClusterHarness) -> RedisClusterHarness:
    """The module's Redis Cluster, whole again (killed nodes back, no slot half-moved) and empty."""
    redis_cluster_module.reset()
    return redis_cluster_module


@pytest.fixture
def settings(redis_server: RedisServer, redis_client: redis.Redis) -> Settings:
    """Settings for in-process tests: fast timings so recovery paths run in seconds."""
    return Settings(
        redis_url=redis_server.url,
        model_path=MODEL_PATH,
        max_batch_wait_ms=2,
        worker_ttl_seconds=2,
        recovery_interval_seconds=0.5,
        drain_timeout_seconds=10,
    )


def service_env(redis_url: str, **overrides: object) -> dict[str, str]:
    """Environment for API/worker subprocesses: the same variables users set."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        MODEL_PATH=MODEL_PATH,
        PORT=str(free_port()),
        LOG_LEVEL="INFO",
        WORKER_TTL_SECONDS="2",
        RECOVERY_INTERVAL_SECONDS="0.5",
        MAX_BATCH_WAIT_MS="2",
    )
    env.update({key: str(value) for key, value in overrides.items()})
    return env


class Processes:
    """Starts API and worker subprocesses for one test and stops them all afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list = []

    def api(self, env: dict[str, str]):
        proc = start_api(env, self.tmp_path / f"api-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{env['PORT']}"

    def spawn_api_unready(self, env: dict[str, str]):
        """Start the API without waiting for readiness (for tests of an unready API)."""
        proc = spawn([str(BIN / "asyncinfer-api")], env, self.tmp_path / f"api-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def worker(self, env: dict[str, str]):
        proc = start_worker(env, self.tmp_path / f"worker-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp_path.glob("*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc, 15)


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(procs.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

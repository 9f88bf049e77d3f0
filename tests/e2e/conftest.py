"""The e2e suite talks only HTTP to E2E_BASE_URL (with E2E_TOKEN as its bearer token when the
deployment has authentication on); without it, it starts a local stack (Redis, API, 2 workers)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Processes, service_env


@pytest.fixture(scope="session")
def base_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("E2E_BASE_URL")
    if url:
        yield url.rstrip("/")
        return
    redis_server = request.getfixturevalue("redis_server")  # only a local stack needs one
    procs = Processes(tmp_path_factory.mktemp("e2e-stack"))
    env = service_env(redis_server.url, KEY_PREFIX="e2e")
    procs.worker(env)
    procs.worker(env)
    _, url = procs.api(env)
    yield url
    procs.stop_all()


def auth_headers() -> dict[str, str]:
    token = os.environ.get("E2E_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
def http(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=40, headers=auth_headers()) as client:
        yield client

"""Fixtures of the client SDK and CLI tests: a real local stack (redis-server, API, worker processes) and a
fake service for the answers the real one cannot be made to give on cue (429/503 bursts, failed jobs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.client.fake_service import FakeServer, FakeService
from tests.client.helpers import TOKENS
from tests.conftest import Processes, service_env


@dataclass
class Stack:
    """A running API + worker on the session's redis-server (flushed for each test)."""

    url: str
    env: dict[str, str]
    processes: Processes
    worker: object  # subprocess.Popen of the one worker


@pytest.fixture
def stack(processes: Processes, redis_server, redis_client) -> Stack:
    """The real service: the API and one worker as processes, on a clean Redis database."""
    env = service_env(redis_server.url)
    worker = processes.worker(env)
    _, url = processes.api(env)
    return Stack(url, env, processes, worker)


@pytest.fixture
def api_only(processes: Processes, redis_server, redis_client) -> Stack:
    """The API with no worker: jobs stay pending (to cancel them, or to time out waiting)."""
    env = service_env(redis_server.url)
    _, url = processes.api(env)
    return Stack(url, env, processes, None)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A fake asyncinfer API on a free port; tweak `fake.service` before calling it."""
    server = FakeServer(FakeService()).start()
    yield server
    server.stop()


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ASYNCINFER_* from the developer's shell leaks into a test."""
    monkeypatch.delenv("ASYNCINFER_URL", raising=False)
    monkeypatch.delenv("ASYNCINFER_TOKEN", raising=False)


@pytest.fixture
def auth_stack(processes: Processes, redis_server, redis_client, tmp_path: Path) -> Stack:
    """The real service with AUTH_TOKENS_FILE: clients alice and bob, admin ops (tokens in TOKENS)."""
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("alice client {alice}\nbob client {bob}\nops admin {ops}\n".format(**TOKENS))
    env = service_env(redis_server.url, AUTH_TOKENS_FILE=str(tokens_file))
    worker = processes.worker(env)
    _, url = processes.api(env)
    return Stack(url, env, processes, worker)

"""Fixtures for webhook delivery tests: a secret, a receiver, notifier processes on the session's Redis."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from stack import BIN, RedisServer, free_port, spawn, stop, wait_http

from tests.notifier.helpers import Receiver, Reply, new_secret


@pytest.fixture
def webhook_secret() -> str:
    return new_secret()


@pytest.fixture
def make_receiver(webhook_secret: str) -> Iterator[Callable[..., Receiver]]:
    """Start receivers with a reply plan; all are stopped after the test."""
    receivers: list[Receiver] = []

    def make(plan: list[Reply] | None = None, **kwargs: object) -> Receiver:
        receiver = Receiver(webhook_secret, plan, **kwargs)  # type: ignore[arg-type]
        receivers.append(receiver)
        return receiver

    yield make
    for receiver in receivers:
        receiver.stop()


class Notifiers:
    """Starts `asyncinfer-notifier` processes (the installed console script) and stops them afterwards."""

    def __init__(self, redis_url: str, secret: str, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.secret = secret
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def env(self, **overrides: object) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            WEBHOOK_SECRET=self.secret,
            WEBHOOK_ALLOW_HTTP="true",  # the receiver is plain http on loopback
            WEBHOOK_ALLOW_PRIVATE="true",
            WEBHOOK_TIMEOUT_SECONDS="2",
            WEBHOOK_MAX_ATTEMPTS="8",
            WORKER_HEALTH_PORT=str(free_port()),
            LOG_LEVEL="INFO",
        )
        env.update({key: str(value) for key, value in overrides.items()})
        return env

    def start(self, **overrides: object) -> subprocess.Popen:
        env = self.env(**overrides)
        proc = spawn([str(BIN / "asyncinfer-notifier")], env, self.tmp_path / f"notifier-{len(self.procs)}.log")
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{env['WORKER_HEALTH_PORT']}/readyz", 20, proc)
        proc.health_port = int(env["WORKER_HEALTH_PORT"])  # type: ignore[attr-defined]
        return proc

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.tmp_path.glob("notifier-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc, 15)


@pytest.fixture
def notifiers(
    redis_server: RedisServer, redis_client: object, webhook_secret: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Notifiers]:
    """Notifier processes against a clean database; their logs are printed when the test fails."""
    procs = Notifiers(redis_server.url, webhook_secret, tmp_path)
    yield procs
    procs.stop_all()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(procs.logs())

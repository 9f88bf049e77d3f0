"""A test-only stand-in for the lead's AppState interface (models registry, submit, wait_for), so the
routes can be unit-tested before the core lands. Jobs run at once through the worker's own OnnxModel,
so the stored result has exactly the worker's format. The real stack is tested in test_stack.py."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import redis
from fastapi import FastAPI

from api.errors import HTTPProblem, invalid
from jobqueue.model_signature import InputError, ModelSignature, parse_input
from jobqueue.settings import Settings
from worker.model import OnnxModel


@dataclass
class FakeModelEntry:
    name: str
    version: str
    signature: ModelSignature | None
    ready: bool
    model: OnnxModel | None = None


class FakeModels:
    def __init__(self, entries: list[FakeModelEntry]) -> None:
        self._entries = {entry.name: entry for entry in entries}

    def get(self, name: str) -> FakeModelEntry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return list(self._entries)


@dataclass
class FakeRecord:
    status: str
    result: str | None = None
    error: str | None = None


class FakeRedis:
    """What readiness asks Redis; `down` makes it fail as an unreachable server does."""

    down = False

    async def ping(self) -> bool:
        if self.down:
            raise redis.ConnectionError("connection refused")
        return True


@dataclass
class FakeState:
    settings: Settings
    models: FakeModels
    tokens: Any = None  # api.auth reads it: None = authentication off
    draining: bool = False
    probe: FakeRedis = field(default_factory=lambda: FakeRedis())
    jobs: dict[str, FakeRecord] = field(default_factory=dict)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    run_jobs: bool = True  # False: jobs stay pending (a worker-less queue)
    refuse: HTTPProblem | None = None  # raised by submit (a full queue, Redis down)
    outcome: FakeRecord | None = None  # how every job ends instead of running (a failure, say)

    async def submit(
        self,
        principal: Any,
        model_name: str,
        data: Any,
        priority: str = "normal",
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        if self.refuse is not None:
            raise self.refuse
        entry = self.models.get(model_name)
        assert entry is not None and entry.signature is not None and entry.model is not None
        try:  # the same check /predict applies
            arrays = parse_input(data, entry.signature, self.settings.max_rows_per_job)
        except InputError as exc:
            raise invalid(exc.loc, exc.msg) from None
        job_id = str(uuid.uuid4())
        # the stored input is JSON, as in Redis: what the worker sees went through a JSON round trip
        self.submitted.append({"model": model_name, "data": orjson.loads(orjson.dumps(data)), "priority": priority})
        if not self.run_jobs or self.outcome is not None:
            self.jobs[job_id] = self.outcome or FakeRecord("pending")
            return job_id
        outputs = entry.model.run(arrays, timeout_s=10)
        rows = len(next(iter(arrays.values())))
        self.jobs[job_id] = FakeRecord("completed", orjson.dumps(entry.model.results(outputs, 0, rows)).decode())
        return job_id

    async def wait_for(self, job_id: str, timeout_s: float, disconnected: Any = None, listening: Any = None) -> FakeRecord:
        return self.jobs[job_id]


def fake_entry(name: str, model: OnnxModel, ready: bool = True) -> FakeModelEntry:
    return FakeModelEntry(name, "0123abcd", model.signature, ready, model)


class AppClient:
    """Synchronous requests to an ASGI app in this process (httpx's ASGI transport, one event loop per call)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://oip.test") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

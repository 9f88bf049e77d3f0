"""A test-only stand-in for AppState (models registry, validated_job, enqueue, wait_for), so the routes
can be unit-tested without Redis; validation is AppState's own. Jobs run at once through the worker's
own OnnxModel, so the stored result has exactly the worker's format. The real stack: test_stack.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import orjson
import redis
from fastapi import FastAPI

from api.errors import HTTPProblem
from api.state import AppState
from jobqueue.job_input import as_data, decode_tensors, is_tensors
from jobqueue.model_signature import ModelSignature, parse_input
from jobqueue.protocol import Enqueued, NewJob
from jobqueue.settings import Settings
from jobqueue.shards import new_job_id
from jobqueue.states import JobStatus
from worker.model import OnnxModel


@dataclass
class FakeModelEntry:
    name: str
    version: str
    signature: ModelSignature | None
    ready: bool
    model: OnnxModel | None = None

    def require_signature(self) -> ModelSignature:
        assert self.signature is not None
        return self.signature


class FakeModels:
    def __init__(self, entries: list[FakeModelEntry]) -> None:
        self._entries = {entry.name: entry for entry in entries}

    def get(self, name: str) -> FakeModelEntry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return list(self._entries)


@dataclass
class FakeRecord:
    status: JobStatus
    result: str | None = None
    error: str | None = None
    result_object: str | None = None  # no result objects without a store
    job_id: str = ""


class FakeRedis:
    """What readiness asks Redis; `down` makes it fail as an unreachable server does."""

    down = False

    async def ping(self) -> bool:
        if self.down:
            raise redis.ConnectionError("connection refused")
        return True


class FakeStore:
    """The job store as a new job's id needs it (a standalone Redis: untagged uuid4 ids)."""

    def new_job_id(self, model: str, affinity: str | None = None) -> str:
        return new_job_id("")


class FakeEvents:
    """End notifications: the fake's jobs have ended (or never will) by the time anyone listens."""

    def add(self, job_id: str, ends_only: bool = False) -> asyncio.Future[str]:
        return asyncio.get_running_loop().create_future()

    def discard(self, job_id: str, future: asyncio.Future[str]) -> None:
        future.cancel()


@dataclass
class FakeState:
    settings: Settings
    models: FakeModels
    tokens: Any = None  # api.auth reads it: None = authentication off
    draining: bool = False
    callback_validator: Any = None
    probe: FakeRedis = field(default_factory=lambda: FakeRedis())
    events: FakeEvents = field(default_factory=lambda: FakeEvents())
    store: FakeStore = field(default_factory=lambda: FakeStore())
    jobs: dict[str, FakeRecord] = field(default_factory=dict)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    run_jobs: bool = True  # False: jobs stay pending (a worker-less queue)
    refuse: HTTPProblem | None = None  # raised by enqueue (a full queue, Redis down)
    outcome: FakeRecord | None = None  # how every job ends instead of running (a failure, say)
    objects: Any = None  # no OBJECT_STORE_URL: binary tensors stay inline

    validated_job = AppState.validated_job  # the very check every submit gets (a 422 naming the field)
    new_job = AppState.new_job

    async def enqueue(self, job: NewJob) -> Enqueued:
        if self.refuse is not None:
            raise self.refuse
        entry = self.models.get(job.model)
        assert entry is not None and entry.model is not None
        # the stored input read back as a worker reads it: the API's tensors (`job_input`), or JSON
        if is_tensors(job.payload):
            data = as_data(decode_tensors(job.payload), entry.require_signature())
        else:
            data = orjson.loads(job.payload)["data"]
        self.submitted.append({"model": job.model, "data": data, "priority": job.priority})
        if not self.run_jobs or self.outcome is not None:
            self.jobs[job.job_id] = replace(self.outcome or FakeRecord(JobStatus.PENDING), job_id=job.job_id)
        else:
            arrays = parse_input(data, entry.require_signature(), self.settings.max_rows_per_job)
            outputs = entry.model.run(arrays, timeout_s=10)
            rows = len(next(iter(arrays.values())))
            result = orjson.dumps(entry.model.results(outputs, 0, rows)).decode()
            self.jobs[job.job_id] = FakeRecord(JobStatus.COMPLETED, result, job_id=job.job_id)
        return Enqueued(job.job_id, True, JobStatus.PENDING)

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

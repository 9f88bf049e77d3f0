"""A synchronous view of the API's side of the protocol, for script-level tests and load generators.

It calls the same builders and parsers as `jobqueue.protocol.JobStore` (the API's async class), so a
test exercises exactly what the API sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis

from jobqueue.errors import JobNotFound, JobQueueError
from jobqueue.protocol import (
    Enqueued,
    JobRecord,
    NewJob,
    WorkerQueue,
    _record_fields,
    cancel_call,
    enqueue_call,
    enqueue_many_call,
    enqueue_result,
    lua_source,
    parse_record,
    retry_call,
    retry_result,
    state_change,
)
from jobqueue.settings import Settings
from jobqueue.states import JobStatus

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
PAYLOAD = orjson.dumps({"data": [IRIS_ROW]}).decode()
MODEL = "iris"


class SyncJobs(WorkerQueue):
    """A worker's queue plus the API's submit/read/cancel/retry, all synchronous."""

    def __init__(self, client: redis.Redis, settings: Settings, model: str = MODEL, version: str = "test") -> None:
        super().__init__(client, settings, model, version)
        self.api_scripts = {
            name: client.register_script(lua_source(name)) for name in ("enqueue", "enqueue_many", "cancel", "retry")
        }

    def new_job(self, job_id: str | None = None, payload: str = PAYLOAD, **fields: Any) -> NewJob:
        return NewJob(job_id=job_id or str(uuid.uuid4()), model=self.keys.name, payload=payload, **fields)

    def enqueue(self, job_id: str | None = None, payload: str = PAYLOAD, **fields: Any) -> Enqueued:
        call = enqueue_call(self.store, self.settings, self.new_job(job_id, payload, **fields))
        result = enqueue_result(self.api_scripts["enqueue"](keys=call.keys, args=call.args), self.settings)
        if isinstance(result, JobQueueError):
            raise result
        return result

    def enqueue_n(self, n: int, **fields: Any) -> list[str]:
        return [self.enqueue(**fields).job_id for _ in range(n)]

    def enqueue_many(self, jobs: Sequence[NewJob]) -> list[Enqueued | JobQueueError]:
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            call = enqueue_call(self.store, self.settings, job)
            self.api_scripts["enqueue"](keys=call.keys, args=call.args, client=pipe)
        return [enqueue_result(reply, self.settings) for reply in pipe.execute()]

    def enqueue_bulk(self, jobs: Sequence[NewJob]) -> list[Enqueued | JobQueueError]:
        """One bulk request's jobs in one script call, as the API sends them."""
        call = enqueue_many_call(self.store, self.settings, jobs)
        reply = self.api_scripts["enqueue_many"](keys=call.keys, args=call.args)
        return [enqueue_result(reply[i : i + 3], self.settings) for i in range(0, len(reply), 3)]

    def get(self, job_id: str, with_input: bool = False) -> JobRecord:
        fields = _record_fields(with_input)
        record = parse_record(job_id, fields, self.client.hmget(self.store.job(job_id), fields))
        if record is None:
            raise JobNotFound(job_id)
        return record

    def cancel(self, job_id: str) -> JobStatus:
        call = cancel_call(self.store, self.settings, self.get(job_id))
        return state_change(self.api_scripts["cancel"](keys=call.keys, args=call.args), job_id, "cancel", self.settings)

    def retry(self, job_id: str, token: str = "t") -> JobStatus:
        return self.retry_answer(job_id, token).status

    def retry_answer(self, job_id: str, token: str = "t") -> Enqueued:
        call = retry_call(self.store, self.settings, self.get(job_id), token)
        return retry_result(self.api_scripts["retry"](keys=call.keys, args=call.args), job_id, self.settings)

    def claimed_ids(self, worker_id: str, count: int, **kwargs: Any) -> list[str]:
        return [job.job_id for job in self.claim(worker_id, count, **kwargs).jobs]

"""Helpers of the fault suite: submit jobs straight into Redis, read records, wait, and check the
invariants every test ends with (no id lost or doubled, counters equal to what the records say)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

from jobqueue.keys import ModelKeys, StoreKeys
from jobqueue.protocol import ANONYMOUS, NewJob, ScriptCall, enqueue_call, lua_source
from jobqueue.settings import Settings
from jobqueue.shards import new_job_id
from tests.support.waiting import wait_until

PREFIX = "asyncinfer"
STORE = StoreKeys(PREFIX)
TERMINAL = {"completed", "failed", "canceled", "expired"}


def write_models_file(path: Path, models: dict[str, Path | dict[str, Any]]) -> Path:
    """A MODELS_FILE: name -> path (or a full spec); the first is the default."""
    spec = {name: (value if isinstance(value, dict) else {"path": str(value)}) for name, value in models.items()}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass
class Jobs:
    """Direct access to one Redis for a test: enqueue through the real script, read records raw. On a
    Cluster: one shard's keys (`store` with its tag) on the node serving them."""

    client: redis.Redis
    store: StoreKeys = STORE

    def enqueue(self, model: str, data: Any, priority: str = "normal", raw_payload: str | None = None) -> str:
        """Enqueue through enqueue.lua exactly as the API does, minus the API's validation: a payload
        the API would refuse can be written this way (the worker must then fail it on its own)."""
        job_id, call = self._enqueue_call(model, data, priority, raw_payload)
        reply = self.client.register_script(lua_source("enqueue"))(keys=call.keys, args=call.args)
        assert int(reply[0]) == 1, reply
        return job_id

    def pause_and_enqueue(self, model: str, inputs: Sequence[Any]) -> list[str]:
        """Pause `model` and enqueue one job per input in one transaction: a worker blocked in its wait
        sees the pause and the new ids together, as when a pause lands while it is blocked."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.store.model(model).paused, "1")
        job_ids = []
        for data in inputs:
            job_id, call = self._enqueue_call(model, data)
            self.client.register_script(lua_source("enqueue"))(keys=call.keys, args=call.args, client=pipe)
            job_ids.append(job_id)
        replies = pipe.execute()
        assert all(int(reply[0]) == 1 for reply in replies[1:]), replies
        return job_ids

    def _enqueue_call(
        self, model: str, data: Any, priority: str = "normal", raw_payload: str | None = None
    ) -> tuple[str, ScriptCall]:
        payload = raw_payload if raw_payload is not None else orjson.dumps({"data": data}).decode()
        job = NewJob(job_id=new_job_id(self.store.tag), model=model, payload=payload, priority=priority, owner=ANONYMOUS)
        return job.job_id, enqueue_call(self.store, Settings(), job)

    def record(self, job_id: str) -> dict[str, str]:
        return self.client.hgetall(self.store.job(job_id))

    def records(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.store.job(job_id))
        return pipe.execute()

    def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        return [r.get("status") for r in self.records(job_ids)]

    def all_ended(self, job_ids: Sequence[str]) -> bool:
        return all(status in TERMINAL for status in self.statuses(job_ids))

    def result(self, job_id: str) -> Any:
        raw = self.client.hget(self.store.job(job_id), "result")
        return None if raw is None else orjson.loads(raw)

    def stats(self, model: str) -> dict[str, int]:
        counters = ("enqueued", "completed", "failed", "retried", "recovered", "expired", "canceled")
        raw = self.client.hgetall(self.store.model(model).stats)
        return {name: int(raw.get(name, 0)) for name in counters}

    def processing_lists(self, model: str) -> dict[str, list[str]]:
        keys = self.store.model(model)
        return {key: self.client.lrange(key, 0, -1) for key in self.client.scan_iter(keys.processing_prefix + "*")}

    def pending_ids(self, model: str) -> list[str]:
        keys = self.store.model(model)
        return [job_id for key in keys.pending_all for job_id in self.client.lrange(key, 0, -1)]

    def job_ids(self) -> list[str]:
        return [key.removeprefix(self.store.job_prefix) for key in self.client.scan_iter(self.store.job_prefix + "*")]


def start_paused(jobs: Jobs, model: str, start_worker: Callable[[], Any]) -> Any:
    """Start a worker with its model paused and wait until it beats: jobs enqueued next are all taken by
    one claim when `resume` is called, however short REQUEST_TTL_SECONDS is (a worker takes seconds
    to import ONNX Runtime)."""
    keys = jobs.store.model(model)
    jobs.client.set(keys.paused, "1")
    before = set(jobs.client.zrange(keys.workers, 0, -1))
    proc = start_worker()
    wait_until(lambda: set(jobs.client.zrange(keys.workers, 0, -1)) - before, 30, "the worker to beat")
    return proc


def resume(jobs: Jobs, model: str) -> None:
    jobs.client.delete(jobs.store.model(model).paused)


def worker_id_prefix(pid: int) -> str:
    """Worker ids are '<host>-<pid>-<random>': the part after the host names the process."""
    return f"-{pid}-"


def assert_queue_consistent(jobs: Jobs, model: str, expect_idle: bool = True) -> None:
    """The queue's structures agree with the records: every pending id waits exactly once in a pending
    list, no terminal id is queued or held, counters match the records; with `expect_idle`, nothing is
    held or in flight any more."""
    keys: ModelKeys = jobs.store.model(model)
    pending = jobs.pending_ids(model)
    doubled = [job_id for job_id, n in Counter(pending).items() if n > 1]
    assert not doubled, f"ids queued twice: {doubled}"
    held = {job_id for ids in jobs.processing_lists(model).values() for job_id in ids}
    records = {job_id: jobs.record(job_id) for job_id in jobs.job_ids()}
    mine = {job_id: r for job_id, r in records.items() if r.get("model") == model}
    for job_id in pending:
        assert mine.get(job_id, {}).get("status") == "pending", f"{job_id} is queued but {mine.get(job_id)}"
    for job_id, record in mine.items():
        status = record["status"]
        if status == "pending":
            assert pending.count(job_id) + (job_id in held) == 1, f"pending job {job_id} is queued/held {pending.count(job_id)}x"
        if status in TERMINAL:
            assert job_id not in pending and job_id not in held, f"{status} job {job_id} still queued or held"
    by_status = Counter(r["status"] for r in mine.values())
    stats = jobs.stats(model)
    assert stats["completed"] == by_status["completed"], (stats, by_status)
    assert stats["enqueued"] == len(mine), (stats, len(mine))
    unfinished = jobs.client.hget(jobs.store.principal(ANONYMOUS), "unfinished")
    assert int(unfinished or 0) == sum(1 for r in records.values() if r["status"] not in TERMINAL), "principal's unfinished count"
    if expect_idle:
        assert not held, f"ids still held: {jobs.processing_lists(model)}"
        assert jobs.client.zcard(keys.inflight) == 0, jobs.client.zrange(keys.inflight, 0, -1, withscores=True)

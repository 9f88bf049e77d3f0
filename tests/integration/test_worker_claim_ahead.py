"""The worker's overlapped loop against real Redis: under a backlog the next batch is claimed while the
model runs and the last one recorded meanwhile, with every guarantee of the plain loop kept (each job run
once, lost replies reconciled, a stop runs and records what is held)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson
import pytest
import redis

from jobqueue.models import ModelConfig
from jobqueue.states import JobStatus
from tests.support.queue import SyncJobs
from tests.support.samples import IRIS
from worker.loop import Worker
from worker.model import OnnxModel

BATCH = 8


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    from tests.conftest import MODEL_PATH

    return OnnxModel(ModelConfig(name="iris", path=MODEL_PATH, max_batch_size=BATCH))


@pytest.fixture
def queue(settings, redis_client) -> SyncJobs:
    return SyncJobs(redis_client, settings)


def submit_many(queue: SyncJobs, n: int) -> list[str]:
    body = orjson.dumps({"data": [IRIS["virginica"]]}).decode()
    return [queue.enqueue(str(uuid.uuid4()), body).job_id for _ in range(n)]


def on_io_thread() -> bool:
    return threading.current_thread().name.startswith("redis-io")


class RowCounter:
    """Counts the rows the model runs: each job's one row must pass through it exactly once."""

    def __init__(self, model: OnnxModel) -> None:
        self.model, self.original, self.rows = model, model.run, 0

    def __enter__(self) -> RowCounter:
        def counting(feeds: Any, timeout_s: float) -> Any:
            self.rows += len(next(iter(feeds.values())))
            return self.original(feeds, timeout_s)

        self.model.run = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.run = self.original  # type: ignore[method-assign]


def assert_each_completed_once(queue: SyncJobs, ids: list[str], redis_client: redis.Redis, worker: Worker) -> None:
    records = [queue.get(i) for i in ids]
    assert all(r.status is JobStatus.COMPLETED and r.attempts == 1 for r in records), [
        (r.status, r.attempts) for r in records if r.status is not JobStatus.COMPLETED or r.attempts != 1
    ]
    assert all(orjson.loads(r.result)["class_name"] == "virginica" for r in records)
    assert int(redis_client.hget(queue.keys.stats, "completed")) == len(ids)  # nothing recorded twice
    assert queue.held(worker.worker_id) == []
    assert redis_client.zcard(queue.keys.inflight) == 0


def test_under_a_backlog_the_next_batch_is_claimed_while_the_model_runs(queue, redis_client, model):
    ids = submit_many(queue, 20 * BATCH)
    worker = Worker(queue.settings, model)
    held_at_call: list[int] = []
    original = model.run

    def counting(feeds: Any, timeout_s: float) -> Any:
        held_at_call.append(len(queue.held(worker.worker_id)))
        return original(feeds, timeout_s)

    model.run = counting
    try:
        worker.run(burst=True)
    finally:
        model.run = original
    # the batch being run and the one claimed ahead, and the last one while its results are still being
    # written; never a second batch ahead (a loaded machine may run a batch slowly enough that the next
    # is claimed after it instead, so not every call sees both)
    assert 2 * BATCH <= max(held_at_call) <= 3 * BATCH, held_at_call
    assert sum(held >= 2 * BATCH for held in held_at_call) >= 2, held_at_call
    assert worker.processed == len(ids)
    assert_each_completed_once(queue, ids, redis_client, worker)


def test_a_lost_reply_to_a_claim_ahead_is_adopted_and_each_job_runs_once(queue, redis_client, model):
    ids = submit_many(queue, 12 * BATCH)
    worker = Worker(queue.settings, model)
    real_claim = worker.queue.claim
    lost: list[list[str]] = []

    def claim(*args: Any, **kwargs: Any) -> Any:
        batch = real_claim(*args, **kwargs)
        if on_io_thread() and not lost and batch.jobs:
            lost.append([job.job_id for job in batch.jobs])
            raise redis.exceptions.ConnectionError("reply lost")  # Redis ran it; the worker never heard
        return batch

    worker.queue.claim = claim  # type: ignore[method-assign]
    with RowCounter(model) as counter:
        worker.run(burst=True)
    assert counter.rows == len(ids)
    assert lost and len(lost[0]) == BATCH, "a claim ahead ran"
    assert_each_completed_once(queue, ids, redis_client, worker)
    assert worker.processed == len(ids)  # the lost batch was adopted and run, once
    assert redis_client.hget(queue.keys.stats, "recovered") is None  # adopted by its own worker, not recovered


@pytest.mark.parametrize("reply_lost", [True, False], ids=["reply-lost", "refused"])
def test_an_overlapped_record_that_fails_is_recorded_again_counted_once_and_not_run_again(
    queue, redis_client, model, reply_lost: bool
):
    """reply lost: Redis recorded it and the worker does not know; refused: nothing reached Redis."""
    ids = submit_many(queue, 12 * BATCH)
    worker = Worker(queue.settings, model)
    real_finish = worker.queue.finish
    failed: list[int] = []

    def finish(worker_id: str, outcomes: Any) -> Any:
        outcomes = list(outcomes)
        if not (on_io_thread() and not failed):
            return real_finish(worker_id, outcomes)
        failed.append(len(outcomes))
        if reply_lost:
            real_finish(worker_id, outcomes)
        raise redis.exceptions.ConnectionError("reply lost" if reply_lost else "connection refused")

    worker.queue.finish = finish  # type: ignore[method-assign]
    with RowCounter(model) as counter:
        worker.run(burst=True)
    assert failed == [BATCH], "an overlapped record ran"
    assert counter.rows == len(ids), "a batch whose record failed was run again"
    assert_each_completed_once(queue, ids, redis_client, worker)
    if not reply_lost:
        assert worker.processed == len(ids)


def test_a_stop_runs_and_records_the_batch_claimed_ahead_then_exits(queue, redis_client, model):
    ids = submit_many(queue, 10 * BATCH)
    worker = Worker(queue.settings, model)
    in_third_call, release = threading.Event(), threading.Event()
    calls: list[int] = []
    original = model.run

    def third_call_waits(feeds: Any, timeout_s: float) -> Any:
        calls.append(1)
        if len(calls) == 3:
            in_third_call.set()
            release.wait(10)
        return original(feeds, timeout_s)

    model.run = third_call_waits
    thread = threading.Thread(target=worker.run)
    try:
        thread.start()
        assert in_third_call.wait(10)
        deadline = time.monotonic() + 5
        while len(queue.held(worker.worker_id)) < 2 * BATCH:  # the claim ahead lands while the model waits
            assert time.monotonic() < deadline, queue.held(worker.worker_id)
            time.sleep(0.01)
        held = queue.held(worker.worker_id)
        worker.stop()
        release.set()
        thread.join(10)
    finally:
        release.set()
        model.run = original
    assert not thread.is_alive()
    assert len(calls) == 4, "the batch in hand, then the one claimed ahead, then nothing more"
    assert all(queue.get(i).status is JobStatus.COMPLETED and queue.get(i).attempts == 1 for i in held)
    assert queue.held(worker.worker_id) == []
    assert redis_client.zscore(queue.keys.workers, worker.worker_id) is None  # deregistered
    pending = [i for i in ids if queue.get(i).status is JobStatus.PENDING]
    assert len(pending) == len(ids) - 4 * BATCH  # the rest waits for another worker, untouched
    assert all(queue.get(i).attempts == 0 for i in pending)

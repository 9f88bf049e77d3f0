"""The worker loop in-process against real Redis: batching, FIFO, isolation of bad jobs, concurrency."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import orjson
import pytest

from jobqueue.job_input import checked_payload, encode_tensors, is_tensors
from jobqueue.models import ModelConfig
from jobqueue.states import JobStatus
from tests.support.queue import SyncJobs
from tests.support.samples import IRIS
from worker.loop import Worker
from worker.model import OnnxModel


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    from tests.conftest import MODEL_PATH

    return OnnxModel(ModelConfig(name="iris", path=MODEL_PATH))


def submit(queue: SyncJobs, data) -> str:
    return queue.enqueue(str(uuid.uuid4()), orjson.dumps({"data": data}).decode()).job_id


@contextmanager
def model_calls(model: OnnxModel) -> Iterator[list[int]]:
    """The row count of each model call made while the block runs."""
    calls: list[int] = []
    original = model.run
    model.run = lambda feeds, timeout_s: calls.append(len(next(iter(feeds.values())))) or original(feeds, timeout_s)
    try:
        yield calls
    finally:
        model.run = original


def test_round_trip_gives_correct_iris_classes(settings, redis_client, model):
    queue = SyncJobs(redis_client, settings)
    ids = {name: submit(queue, [row]) for name, row in IRIS.items()}
    Worker(settings, model).run(burst=True)
    for name, job_id in ids.items():
        record = queue.get(job_id)
        assert record.status is JobStatus.COMPLETED, record
        result = orjson.loads(record.result)
        assert result["class_name"] == name
        assert result["prediction"] == list(IRIS).index(name)
        assert abs(sum(result["probabilities"]) - 1) < 1e-4 and len(result["probabilities"]) == 3
        assert record.attempts == 1


def test_multi_row_job_returns_one_result_per_row(settings, redis_client, model):
    queue = SyncJobs(redis_client, settings)
    job_id = submit(queue, list(IRIS.values()))
    Worker(settings, model).run(burst=True)
    results = orjson.loads(queue.get(job_id).result)
    assert [r["class_name"] for r in results] == list(IRIS)


def test_batch_runs_model_once_and_isolates_bad_job(settings, redis_client, model):
    queue = SyncJobs(redis_client, settings)
    good = [submit(queue, [IRIS["setosa"]]) for _ in range(5)]
    bad = submit(queue, [[1.0, 2.0]])  # wrong feature count, slipped past the API (e.g. model swapped)
    good += [submit(queue, [IRIS["virginica"]]) for _ in range(5)]
    with model_calls(model) as calls:
        Worker(settings, model).run(burst=True)
    assert calls == [10]  # one model call for the ten valid jobs
    assert all(queue.get(i).status is JobStatus.COMPLETED for i in good)
    record = queue.get(bad)
    assert record.status is JobStatus.FAILED and "4 values" in record.error


def test_tensor_records_share_the_model_call_with_json_ones_and_give_the_same_results(settings, redis_client, model):
    """Jobs the API stored as tensors (job_input) and old JSON records run in one call; a row's result is
    the same whichever way it was stored."""
    queue = SyncJobs(redis_client, settings)
    as_json = {name: submit(queue, [row]) for name, row in IRIS.items()}
    as_tensors = {
        name: queue.enqueue(str(uuid.uuid4()), checked_payload([row], model.signature, 100)).job_id for name, row in IRIS.items()
    }
    assert all(is_tensors(queue.get(i, with_input=True).input or "") for i in as_tensors.values())
    with model_calls(model) as calls:
        Worker(settings, model).run(burst=True)
    assert calls == [2 * len(IRIS)]
    for name in IRIS:
        stored, sent = queue.get(as_tensors[name]), queue.get(as_json[name])
        assert stored.status is JobStatus.COMPLETED and stored.result == sent.result


def test_stored_tensors_the_model_no_longer_takes_are_checked_again_and_a_damaged_record_fails_alone(
    settings, redis_client, model
):
    """Tensors of another dtype (the model changed after the API checked them) are converted again from
    their values; another row width fails with parse_input's message; an unreadable record fails with a
    reason; the jobs beside them complete."""
    queue = SyncJobs(redis_client, settings)
    row = IRIS["virginica"]
    wider_dtype = queue.enqueue(str(uuid.uuid4()), encode_tensors({"X": np.array([row], np.float64)})).job_id
    narrow = queue.enqueue(str(uuid.uuid4()), encode_tensors({"X": np.array([row[:2]], np.float32)})).job_id
    damaged = queue.enqueue(str(uuid.uuid4()), encode_tensors({"X": np.array([row], np.float32)})[:-3]).job_id
    good = submit(queue, [row])
    Worker(settings, model).run(burst=True)
    assert queue.get(wider_dtype).status is JobStatus.COMPLETED
    assert orjson.loads(queue.get(wider_dtype).result) == orjson.loads(queue.get(good).result)
    record = queue.get(narrow)
    assert record.status is JobStatus.FAILED and "each row must have 4 values" in record.error
    record = queue.get(damaged)
    assert record.status is JobStatus.FAILED and "stored input is not a tensor record" in record.error
    assert queue.get(good).status is JobStatus.COMPLETED


def test_model_error_fails_only_the_poison_job(settings, redis_client, model):
    queue = SyncJobs(redis_client, settings)
    poison_row = [6.6, 6.6, 6.6, 6.6]
    ids = [submit(queue, [IRIS["setosa"]]) for _ in range(3)]
    poison = submit(queue, [poison_row])
    original = model.run

    def flaky(feeds, timeout_s):
        if any(np.allclose(row, poison_row) for row in next(iter(feeds.values()))):
            raise RuntimeError("model exploded on this input")
        return original(feeds, timeout_s)

    model.run = flaky
    try:
        Worker(settings, model).run(burst=True)
    finally:
        model.run = original
    assert all(queue.get(i).status is JobStatus.COMPLETED for i in ids)
    record = queue.get(poison)
    assert record.status is JobStatus.FAILED and record.attempts == settings.max_attempts
    assert "model exploded" in record.error
    assert redis_client.lrange(queue.keys.dead, 0, -1) == [poison]


def test_a_model_error_in_a_batch_is_bisected_not_rerun_job_by_job(settings, redis_client, model):
    """One raising input among 64: each failing call is split in halves and only the half that raises
    again is split again, so the first attempt costs 1 + 2 x log2(64) calls, not 1 + 64."""
    queue = SyncJobs(redis_client, settings.model_copy(update={"max_batch_size": 64, "max_batch_wait_ms": 0}))
    poison_row = [6.6, 6.6, 6.6, 6.6]
    rows = [[4.0 + i / 100, 3.0, 1.4, 0.2] for i in range(63)]
    rows.insert(40, poison_row)
    ids = [submit(queue, [row]) for row in rows]
    calls: list[int] = []
    original = model.run

    def flaky(feeds, timeout_s):
        batch = next(iter(feeds.values()))
        calls.append(len(batch))
        if any(np.allclose(row, poison_row) for row in batch):
            raise RuntimeError("model exploded on this input")
        return original(feeds, timeout_s)

    model.run = flaky
    try:
        Worker(queue.settings, model).run(burst=True)
    finally:
        model.run = original
    first_attempt = calls[: 1 + 2 * 6]
    assert first_attempt[0] == 64 and sorted(first_attempt[1:3]) == [32, 32], calls
    # then the poison alone on each later attempt (a retry is a batch of one here: the rest completed)
    assert len(calls) == 1 + 2 * 6 + (settings.max_attempts - 1), calls
    poison = ids[40]
    assert queue.get(poison).status is JobStatus.FAILED
    for job_id in ids:
        if job_id != poison:
            record = queue.get(job_id)
            assert (record.status, record.attempts) == (JobStatus.COMPLETED, 1), record
            assert orjson.loads(record.result)["class_name"] == "setosa"


def test_fifo_with_one_worker(settings, redis_client, model):
    queue = SyncJobs(redis_client, settings.model_copy(update={"max_batch_size": 1}))
    ids = [submit(queue, [IRIS["setosa"]]) for _ in range(20)]
    Worker(queue.settings, model).run(burst=True)
    started = [queue.get(i).started_at for i in ids]
    assert started == sorted(started)


def test_two_concurrent_workers_process_each_job_once(settings, redis_client, model):
    queue = SyncJobs(redis_client, settings.model_copy(update={"max_batch_size": 16}))
    ids = [submit(queue, [IRIS["versicolor"]]) for _ in range(2000)]
    workers = [Worker(queue.settings, model) for _ in range(2)]
    threads = [threading.Thread(target=w.run, kwargs={"burst": True}) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    records = [queue.get(i) for i in ids]
    assert all(r.status is JobStatus.COMPLETED and r.attempts == 1 for r in records)
    assert sum(w.processed for w in workers) == len(ids)  # nobody ran a job twice
    assert all(w.processed > 0 for w in workers)
    assert redis_client.zcard(queue.keys.inflight) == 0


def test_stop_finishes_held_batch_then_exits(settings, redis_client, model):
    """stop() while the model runs: the batch in hand is finished and recorded, then the loop leaves."""
    queue = SyncJobs(redis_client, settings)
    worker = Worker(settings, model)
    in_model, release = threading.Event(), threading.Event()
    original = model.run

    def slow(feeds, timeout_s):
        in_model.set()
        release.wait(10)
        return original(feeds, timeout_s)

    model.run = slow
    try:
        ids = [submit(queue, [IRIS["setosa"]]) for _ in range(3)]
        thread = threading.Thread(target=worker.run)
        thread.start()
        assert in_model.wait(10)
        worker.stop()
        held = queue.held(worker.worker_id)
        assert held, "the worker holds its batch when it is told to stop"
        release.set()
        thread.join(10)
    finally:
        model.run = original
    assert not thread.is_alive()
    assert all(queue.get(i).status is JobStatus.COMPLETED and queue.get(i).attempts == 1 for i in held)
    assert queue.held(worker.worker_id) == []
    assert redis_client.zscore(queue.keys.workers, worker.worker_id) is None  # deregistered
    assert {queue.get(i).status for i in ids} <= {JobStatus.COMPLETED, JobStatus.PENDING}  # nothing lost or failed


def test_worker_reconciles_jobs_redis_says_it_holds(settings, redis_client, model):
    """A claim that ran but whose reply never reached the worker (and raised nothing): the worker finds
    the job in its processing list at its regular reconcile and runs it; no recovery is involved."""
    from worker.loop import RECONCILE_INTERVAL_S

    queue = SyncJobs(redis_client, settings)
    job_id = submit(queue, [IRIS["virginica"]])
    worker = Worker(settings, model)
    assert [job.job_id for job in queue.claim(worker.worker_id, 1).jobs] == [job_id]  # "lost" reply
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + RECONCILE_INTERVAL_S + 3
        while queue.get(job_id).status is not JobStatus.COMPLETED:
            assert time.monotonic() < deadline, "the held job was never adopted"
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(10)
    record = queue.get(job_id)
    assert record.attempts == 1 and orjson.loads(record.result)["class_name"] == "virginica"
    assert redis_client.hget(queue.keys.stats, "recovered") is None  # adopted, not recovered

"""Case 7: TTLs. A job that started is never ended as "not started" however long it then waits; live
records never expire, ended ones always do; settings that cannot work together stop the start."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import redis
from stack import BIN

from jobqueue.protocol import RECORD_FIELDS, WorkerQueue, cancel_call, lua_source, parse_record
from jobqueue.settings import Settings
from jobqueue.states import Outcome
from tests.conftest import service_env
from tests.faults.helpers import STORE, Jobs, assert_queue_consistent, resume, start_paused, wait_until, worker_id_prefix
from tests.faults.test_poison import HANG, loop_env


def test_started_job_requeued_by_recovery_after_a_slow_restart_is_not_expired(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path
):
    env = loop_env(
        redis_server.url, model_dir, tmp_path, REQUEST_TTL_SECONDS=1, WORKER_TTL_SECONDS=1, RECOVERY_INTERVAL_SECONDS=0.3
    )
    worker = start_paused(jobs, "loop", lambda: processes.worker(env))
    job = jobs.enqueue("loop", [[300_000]])  # ~2 s of work: the worker is killed in the middle
    resume(jobs, "loop")
    wait_until(lambda: jobs.record(job).get("status") == "processing", 30, "the job to start")
    assert worker_id_prefix(worker.pid) in jobs.record(job)["worker"]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(2.5)  # a slow restart: the job is now far older than REQUEST_TTL_SECONDS
    processes.worker(env)
    wait_until(lambda: jobs.all_ended([job]), 30, "the job to end")
    record = jobs.record(job)
    assert (record["status"], record["attempts"]) == ("completed", "2"), record
    assert jobs.result(job) == {"prediction": [300_000], "iterations": [300_000]}
    assert jobs.stats("loop")["expired"] == 0
    assert_queue_consistent(jobs, "loop")


def test_started_job_released_by_a_drain_after_a_slow_restart_is_not_expired(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path
):
    env = loop_env(redis_server.url, model_dir, tmp_path, REQUEST_TTL_SECONDS=1, DRAIN_TIMEOUT_SECONDS=0.5)
    worker = start_paused(jobs, "loop", lambda: processes.worker(env))
    job = jobs.enqueue("loop", [[300_000]])
    resume(jobs, "loop")
    wait_until(lambda: jobs.record(job).get("status") == "processing", 30, "the job to start")
    worker.send_signal(signal.SIGTERM)  # the drain deadline aborts the call and gives the job back
    worker.wait(15)
    assert (jobs.record(job)["status"], jobs.record(job)["attempts"]) == ("pending", "0")
    time.sleep(2.5)
    processes.worker(env)
    wait_until(lambda: jobs.all_ended([job]), 30, "the job to end")
    record = jobs.record(job)
    assert (record["status"], record["attempts"]) == ("completed", "1"), record
    assert jobs.stats("loop")["expired"] == 0
    assert_queue_consistent(jobs, "loop")


def test_jobs_isolated_after_a_hung_batch_are_not_expired(processes, redis_server, jobs: Jobs, model_dir, tmp_path):
    """The batch hangs past REQUEST_TTL_SECONDS; its innocent jobs, requeued to run alone, had started."""
    env = loop_env(redis_server.url, model_dir, tmp_path, REQUEST_TTL_SECONDS=1, JOB_TIMEOUT_SECONDS=1.5)
    values = [3, HANG, 5, 7]
    start_paused(jobs, "loop", lambda: processes.worker(env))
    ids = [jobs.enqueue("loop", [[v]]) for v in values]
    resume(jobs, "loop")  # one claim takes all four
    wait_until(lambda: jobs.all_ended(ids), 30, "the jobs to end")
    for job_id, value in zip(ids, values, strict=True):
        record = jobs.record(job_id)
        expected = "failed" if value == HANG else "completed"
        assert (record["status"], record["attempts"]) == (expected, "1"), record
    assert jobs.stats("loop")["expired"] == 0
    assert_queue_consistent(jobs, "loop")


def ttl(client: redis.Redis, job_id: str) -> int:
    return client.ttl(STORE.job(job_id))


def test_live_records_never_expire_and_ended_ones_get_job_ttl(redis_server, redis_client: redis.Redis, jobs: Jobs):
    settings = Settings(redis_url=redis_server.url, request_ttl_seconds=0, job_ttl_seconds=2, max_attempts=1)
    queue = WorkerQueue(redis_client, settings, "iris", "v1")
    pending, processing, to_cancel, to_fail, to_complete = (jobs.enqueue("iris", [[1.0, 2.0, 3.0, 4.0]]) for _ in range(5))
    # claim takes the oldest first: the first two enqueued become `processing`
    started = [j.job_id for j in queue.claim("w", 2).jobs]
    assert started == [pending, processing]
    queue.finish("w", [(pending, Outcome.RELEASE, "")])  # back to pending (attempt not counted)
    time.sleep(2.5)  # past JOB_TTL_SECONDS: live records must still be there, with no TTL at all
    assert (jobs.record(pending)["status"], ttl(redis_client, pending)) == ("pending", -1)
    assert (jobs.record(processing)["status"], ttl(redis_client, processing)) == ("processing", -1)
    assert ttl(redis_client, to_cancel) == -1

    record = parse_record(to_cancel, RECORD_FIELDS, redis_client.hmget(STORE.job(to_cancel), RECORD_FIELDS))
    call = cancel_call(STORE, settings, record)
    assert redis_client.register_script(lua_source("cancel"))(keys=call.keys, args=call.args) == [1, "canceled"]
    queue.claim("w", 3)  # pending (released), to_fail, to_complete
    queue.finish("w", [(processing, Outcome.COMPLETED, "{}"), (to_fail, Outcome.RETRY, "boom"),
                       (to_complete, Outcome.COMPLETED, "{}"), (pending, Outcome.FAILED, "bad input")])  # fmt: skip
    for job_id, status in ((processing, "completed"), (to_cancel, "canceled"), (to_fail, "failed"), (pending, "failed")):
        assert jobs.record(job_id)["status"] == status
        assert 0 < ttl(redis_client, job_id) <= 2, (status, ttl(redis_client, job_id))
    assert_queue_consistent(jobs, "iris")
    wait_until(
        lambda: not redis_client.exists(STORE.job(processing), STORE.job(to_cancel), STORE.job(to_fail)),
        5,
        "ended records to expire",
    )


def test_expired_record_gets_job_ttl(redis_server, redis_client: redis.Redis, jobs: Jobs):
    settings = Settings(redis_url=redis_server.url, request_ttl_seconds=1, job_ttl_seconds=2)
    queue = WorkerQueue(redis_client, settings, "iris", "v1")
    job = jobs.enqueue("iris", [[1.0, 2.0, 3.0, 4.0]])
    time.sleep(1.2)
    assert ttl(redis_client, job) == -1
    assert queue.claim("w", 1).jobs == []
    record = jobs.record(job)
    assert (record["status"], record["error"]) == ("expired", "not started within REQUEST_TTL_SECONDS")
    assert 0 < ttl(redis_client, job) <= 2
    assert jobs.stats("iris")["expired"] == 1
    assert_queue_consistent(jobs, "iris")


RECOVERY = (
    {"WORKER_TTL_SECONDS": "1", "RECOVERY_INTERVAL_SECONDS": "11"},
    "RECOVERY_INTERVAL_SECONDS must be at most 10x WORKER_TTL_SECONDS",
)
REQUEST_TTL = (
    {"REQUEST_TTL_SECONDS": "3000", "JOB_TTL_SECONDS": "2"},
    "REQUEST_TTL_SECONDS is beyond any sensible JOB_TTL_SECONDS multiple",
)
METRICS_PORT = ({"METRICS_PORT": "8123", "PORT": "8123"}, "METRICS_PORT must differ from PORT")


@pytest.mark.parametrize(
    "program, overrides, message",
    [
        ("asyncinfer-worker", *RECOVERY),
        ("asyncinfer-worker", *REQUEST_TTL),
        ("asyncinfer-api", *RECOVERY),
        ("asyncinfer-api", *METRICS_PORT),
    ],
)
def test_settings_that_cannot_work_together_stop_the_start(redis_server, program, overrides, message):
    env = service_env(redis_server.url, **overrides)
    done = subprocess.run([str(BIN / program)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-2000:]

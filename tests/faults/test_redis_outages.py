"""Case 4: Redis stalls and outages. Submits during a freeze are stored once or refused, never twice; a
worker whose replies were lost finds what it holds again; an outage longer than the worker TTL is not
mistaken for dead workers."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
import redis

from jobqueue.job_input import decode_tensors
from jobqueue.protocol import ANONYMOUS, WorkerQueue, now_ms
from jobqueue.settings import Settings
from tests.conftest import service_env
from tests.faults.helpers import STORE, Jobs, assert_queue_consistent, resume, start_paused, wait_until
from tests.faults.test_poison import loop_env
from tests.support.samples import ROW

pytestmark = pytest.mark.slow
FREEZE_PAST_SOCKET_TIMEOUT_S = 6  # jobqueue.connection.SOCKET_TIMEOUT_S is 5: replies in flight are lost
API_DEADLINE_S = 5  # REDIS_DEADLINE_SECONDS of the burst's API: the freeze outlasts it, so replies are lost
STALL_DEADLINE_S = 2  # REDIS_DEADLINE_SECONDS of the stall test: short, so the test is too


def freeze(server, seconds: float) -> None:
    """SIGSTOP the redis-server for `seconds`: connections stay open, nothing answers (a stalled host)."""
    server.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        server.proc.send_signal(signal.SIGCONT)


def test_recover_running_first_after_a_stall_declares_nobody_dead(redis_server, redis_client: redis.Redis, jobs: Jobs):
    """A recover sent just before Redis stalled runs first when it is back: every heartbeat deadline has
    passed meanwhile, but the workers are alive. It must grant the outage grace, not requeue."""
    queue = WorkerQueue(redis_client, Settings(redis_url=redis_server.url, worker_ttl_seconds=2), "iris", "v1")
    job = jobs.enqueue("iris", [[1.0, 2.0, 3.0, 4.0]])
    queue.claim("a", 1)
    stats_key, workers_key = STORE.model("iris").stats, STORE.model("iris").workers
    # the state a 5 s stall leaves: the last beat of anyone 5 s ago, a's deadline 3 s past
    redis_client.hset(stats_key, "beat_at", now_ms() - 5000)
    redis_client.zadd(workers_key, {"a": now_ms() - 3000})

    assert queue.recover("a") is None
    record = jobs.record(job)
    assert (record["status"], record["worker"], record["attempts"]) == ("processing", "a", "1"), record
    assert jobs.stats("iris")["recovered"] == 0
    assert redis_client.lrange(STORE.model("iris").processing("a"), 0, -1) == [job]


def first_value(payload: str) -> int:
    """The first value of a stored input: the API keeps it as tensors (job_input)."""
    return int(next(iter(decode_tensors(payload).values())).flat[0])


def test_submit_burst_across_a_freeze_stores_each_accepted_job_once(own_redis, processes, own_jobs: Jobs, models_file):
    env = service_env(own_redis.url, MODELS_FILE=models_file, MODEL_NAME="int64", MAX_BATCH_SIZE=32, INFERENCE_THREADS=1,
                      REDIS_DEADLINE_SECONDS=API_DEADLINE_S)  # fmt: skip
    _, api = processes.api(env)
    values = list(range(1, 161))
    answers: dict[int, httpx.Response | Exception] = {}
    latencies: list[float] = []

    def submit(value: int) -> None:
        started = time.monotonic()
        try:
            answers[value] = httpx.post(f"{api}/models/int64/predict", content=orjson.dumps({"data": [[value]]}), timeout=60)
        except httpx.HTTPError as exc:
            answers[value] = exc
        latencies.append(time.monotonic() - started)

    freezer = threading.Timer(0.3, freeze, (own_redis, FREEZE_PAST_SOCKET_TIMEOUT_S))
    freezer.start()
    with ThreadPoolExecutor(16) as pool:
        for value in values:
            pool.submit(submit, value)
            time.sleep(0.01)  # a steady stream across the freeze
    freezer.join()

    codes = Counter(a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers.values())
    print(f"answers {dict(codes)}, slowest {max(latencies):.1f}s")
    assert set(codes) <= {202, 503}, codes
    assert codes[202] > 0
    assert max(latencies) > API_DEADLINE_S - 1, "no submit waited for the frozen Redis"
    for answer in answers.values():
        if answer.status_code == 503:
            assert answer.headers.get("Retry-After") and "Redis" in answer.json()["detail"]
    accepted = {v: a.json()["job_id"] for v, a in answers.items() if a.status_code == 202}

    # No worker yet: every stored job waits in the pending list exactly once. Each value was sent
    # once: an accepted one is stored exactly once; a refused one at most once (its command may have
    # reached Redis before the reply was lost).
    stored: dict[int, list[str]] = {}
    for job_id in own_jobs.job_ids():
        stored.setdefault(first_value(own_jobs.record(job_id)["input"]), []).append(job_id)
    assert all(len(stored.get(v, [])) == 1 and stored[v][0] == job_id for v, job_id in accepted.items()), stored
    assert all(len(ids) == 1 for ids in stored.values()), stored
    pending = own_jobs.pending_ids("int64")
    assert sorted(pending) == sorted(ids[0] for ids in stored.values()), "pending list differs from the stored jobs"
    assert own_jobs.stats("int64")["enqueued"] == len(stored)

    processes.worker(env)
    wait_until(lambda: own_jobs.all_ended(own_jobs.job_ids()), 60, "every stored job to end")
    for value, ids in stored.items():
        record = own_jobs.record(ids[0])
        assert (record["status"], record["attempts"]) == ("completed", "1"), record
        assert own_jobs.result(ids[0]) == {"prediction": [value]}
    assert own_jobs.stats("int64")["completed"] == len(stored)
    assert_queue_consistent(own_jobs, "int64")


def test_worker_holding_jobs_when_its_connection_times_out_strands_nothing(
    own_redis, processes, own_jobs: Jobs, model_dir, tmp_path
):
    env = loop_env(own_redis.url, model_dir, tmp_path, MAX_BATCH_SIZE=4, MAX_BATCH_WAIT_MS=2, WORKER_TTL_SECONDS=2)
    start_paused(own_jobs, "loop", lambda: processes.worker(env))
    values = [20_000 + i for i in range(60)]  # ~0.15 s a batch: the worker is always holding some
    ids = [own_jobs.enqueue("loop", [[v]]) for v in values]
    resume(own_jobs, "loop")
    wait_until(lambda: own_jobs.statuses(ids).count("completed") >= 8, 30, "some batches to complete")
    wait_until(lambda: any(own_jobs.processing_lists("loop").values()), 5, "the worker to hold a batch", poll_s=0.001)
    freeze(own_redis, FREEZE_PAST_SOCKET_TIMEOUT_S)

    wait_until(lambda: own_jobs.all_ended(ids), 60, "every job to end")
    for job_id, value in zip(ids, values, strict=True):
        record = own_jobs.record(job_id)
        assert (record["status"], record["attempts"]) == ("completed", "1"), record
        result = own_jobs.result(job_id)
        assert result["prediction"] == [value] and result["iterations"][0] >= value, result  # loop ran its batch's max
    stats = own_jobs.stats("loop")
    assert (stats["completed"], stats["recovered"], stats["failed"]) == (len(ids), 0, 0), stats
    wait_until(lambda: not any(own_jobs.processing_lists("loop").values()), 10, "processing lists to empty")
    assert_queue_consistent(own_jobs, "loop")
    log = "\n".join(p.read_text() for p in processes.tmp_path.glob("worker-*.log"))
    assert "redis unavailable or refusing" in log  # the freeze really cut a call short


def test_outage_longer_than_worker_ttl_requeues_nothing(own_redis, processes, own_jobs: Jobs, model_dir, tmp_path, loop_speed):
    ttl_s = 1
    env = loop_env(own_redis.url, model_dir, tmp_path, MAX_BATCH_SIZE=2, WORKER_TTL_SECONDS=ttl_s,
                   RECOVERY_INTERVAL_SECONDS=0.3, JOB_TIMEOUT_SECONDS=30)  # fmt: skip
    start_paused(own_jobs, "loop", lambda: processes.worker(env))
    start_paused(own_jobs, "loop", lambda: processes.worker(env))
    slow = int(loop_speed * 4)  # each batch runs ~4 s: both workers hold theirs across the outage
    values = [slow, slow + 1, slow + 2, slow + 3]
    ids = [own_jobs.enqueue("loop", [[v]]) for v in values]
    resume(own_jobs, "loop")
    wait_until(lambda: set(own_jobs.statuses(ids)) == {"processing"}, 10, "both workers to hold a batch")
    holders = {job_id: own_jobs.record(job_id)["worker"] for job_id in ids}
    assert len(set(holders.values())) == 2, holders

    freeze(own_redis, 3 * ttl_s)

    wait_until(lambda: own_jobs.all_ended(ids), 30, "the jobs to end")
    for job_id in ids:
        record = own_jobs.record(job_id)
        assert (record["status"], record["attempts"], record["worker"]) == ("completed", "1", holders[job_id]), record
    stats = own_jobs.stats("loop")
    assert (stats["completed"], stats["recovered"], stats["failed"], stats["retried"]) == (4, 0, 0, 0), stats
    assert own_jobs.client.hget(STORE.model("loop").stats, "grace_until"), "the outage was not noticed"
    assert own_jobs.client.llen(STORE.model("loop").dead) == 0
    assert_queue_consistent(own_jobs, "loop")


def _timed(call: Callable[[int], httpx.Response], arg: int) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call(arg)
    return response, time.monotonic() - started


def test_a_stalled_redis_gets_503_within_the_deadline_and_a_keyed_retry_stores_once(own_redis, processes, own_jobs: Jobs):
    """REDIS_DEADLINE_SECONDS bounds every request to a stalled Redis (SIGSTOP: sockets stay open,
    nothing answers), whether it must connect first or its connection is open; once Redis resumes,
    repeating a refused submit with its Idempotency-Key leaves exactly one job for the key."""
    _, api = processes.api(service_env(own_redis.url, REDIS_DEADLINE_SECONDS=STALL_DEADLINE_S))
    bound_s = 3 * STALL_DEADLINE_S  # a correctness bound (redis-py's nested retries took ~100 s), not a speed target
    submit_body = orjson.dumps({"data": [ROW]})
    json_type = {"Content-Type": "application/json"}
    with httpx.Client(base_url=api, timeout=60) as http:
        calls: dict[str, Callable[[int], httpx.Response]] = {
            "submit": lambda i: http.post("/predict", content=submit_body, headers={**json_type, "Idempotency-Key": f"k{i}"}),
            "read": lambda _: http.get(f"/job/{'0' * 36}"),
            "pause (redis-py's client)": lambda _: http.post("/admin/models/iris/pause"),
        }
        refused: list[str] = []
        # round 0: no request has connected the API's shared connection yet; round 1: it is open
        for round_ in (0, 1):
            own_redis.proc.send_signal(signal.SIGSTOP)
            try:
                for what, call in calls.items():
                    response, took = _timed(call, round_)
                    assert response.status_code == 503, (round_, what, response.text)
                    assert "Redis" in response.json()["detail"] and response.headers["Retry-After"]
                    assert took < bound_s, f"round {round_}: {what} answered after {took:.1f}s"
            finally:
                own_redis.proc.send_signal(signal.SIGCONT)
            refused.append(f"k{round_}")
            wait_until(lambda: http.get("/readyz").status_code == 200, 30, "the API to see Redis again")
            assert http.post("/admin/models/iris/resume").status_code == 200
            assert http.post("/predict", content=submit_body, headers=json_type).status_code == 202

        # A command already written when the deadline hit may have run when Redis resumed (the README
        # says so): the keyed retry answers with that job, or stores it now; never twice.
        for key in refused:
            again = http.post("/predict", content=submit_body, headers={**json_type, "Idempotency-Key": key})
            assert again.status_code == 202, again.text
    owners = Counter(own_jobs.client.get(STORE.idempotency(ANONYMOUS, key)) for key in refused)
    assert len(owners) == len(refused) and None not in owners, owners
    assert len(own_jobs.job_ids()) == len(refused) + 2

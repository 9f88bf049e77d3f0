"""The API as a real process against real Redis: no workers, overload, outages, cancel, retry, shutdown."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from stack import RedisServer, wait_http

from jobqueue.states import Outcome
from tests.conftest import MODEL_PATH, service_env
from tests.support.queue import SyncJobs
from tests.support.samples import ROW

PENDING = "asyncinfer:iris:pending:normal"


def test_accepts_and_validates_with_no_worker_running(processes, redis_server, redis_client):
    _, url = processes.api(service_env(redis_server.url))
    with httpx.Client(base_url=url) as http:
        assert http.get("/readyz").status_code == 200  # readiness never depends on a worker
        accepted = http.post("/predict", json={"data": [ROW]})
        assert accepted.status_code == 202
        assert http.post("/predict", json={"data": [[1, 2]]}).status_code == 422
        assert http.get(f"/job/{accepted.json()['job_id']}").json()["status"] == "pending"
    assert redis_client.llen(PENDING) == 1  # the rejected one enqueued nothing


def test_full_queue_answers_429_with_retry_after(processes, redis_server, redis_client):
    _, url = processes.api(service_env(redis_server.url, MAX_QUEUE_LENGTH=3))
    with httpx.Client(base_url=url) as http:
        codes = [http.post("/predict", json={"data": [ROW]}).status_code for _ in range(5)]
        refused = http.post("/predict", json={"data": [ROW]})
    assert codes == [202, 202, 202, 429, 429]
    assert refused.headers["retry-after"] == "1" and "MAX_QUEUE_LENGTH" in refused.json()["detail"]
    assert redis_client.llen(PENDING) == 3


def test_cancel_pending_then_worker_skips_it(processes, redis_server, redis_client):
    env = service_env(redis_server.url)
    _, url = processes.api(env)
    with httpx.Client(base_url=url) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        canceled = http.delete(f"/job/{job_id}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert redis_client.llen(PENDING) == 0
        assert http.get(f"/job/{job_id}", params={"wait": 1}).json()["status"] == "canceled"


def test_retry_requeues_a_failed_job(processes, redis_server, redis_client, settings):
    _, url = processes.api(service_env(redis_server.url))
    queue = SyncJobs(redis_client, settings)
    with httpx.Client(base_url=url) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        queue.claim("w", 1)
        queue.finish("w", [(job_id, Outcome.FAILED, "boom")])
        assert http.get(f"/job/{job_id}").json()["error"] == "boom"
        assert redis_client.lrange(queue.keys.dead, 0, -1) == [job_id]
        retried = http.post(f"/job/{job_id}/retry")
        assert retried.status_code == 202 and retried.json()["status"] == "pending"
        assert retried.json()["attempts"] == 0 and retried.json()["error"] is None
        processes.worker(service_env(redis_server.url))
        assert http.get(f"/job/{job_id}", params={"wait": 20}).json()["status"] == "completed"


def test_finished_records_expire_after_the_ttl_live_ones_never(processes, redis_server):
    env = service_env(redis_server.url, JOB_TTL_SECONDS=1, REQUEST_TTL_SECONDS=0)
    _, url = processes.api(env)
    with httpx.Client(base_url=url) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        time.sleep(1.5)
        assert http.get(f"/job/{job_id}").json()["status"] == "pending"  # no TTL while it waits
        processes.worker(env)
        assert http.get(f"/job/{job_id}", params={"wait": 15}).json()["status"] == "completed"
        time.sleep(1.5)
        assert http.get(f"/job/{job_id}").status_code == 404


def test_unstarted_job_ends_expired(processes, redis_server):
    env = service_env(redis_server.url, REQUEST_TTL_SECONDS=1)
    _, url = processes.api(env)
    with httpx.Client(base_url=url) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        time.sleep(1.3)
        processes.worker(env)
        body = http.get(f"/job/{job_id}", params={"wait": 15}).json()
    assert body["status"] == "expired" and "REQUEST_TTL_SECONDS" in body["error"]


def test_redis_outage_gives_503_then_recovers_by_itself(processes, tmp_path):
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        _, url = processes.api(service_env(server.url))
        with httpx.Client(base_url=url, timeout=10) as http:
            job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
            server.kill()
            down = http.post("/predict", json={"data": [ROW]})
            assert down.status_code == 503 and down.headers["retry-after"] == "1"
            assert "Redis" in down.json()["detail"]
            assert http.get(f"/job/{job_id}").status_code == 503
            assert http.get("/readyz").status_code == 503
            assert http.get("/healthz").status_code == 200  # liveness: no restart for a Redis outage
            server.start()
            deadline = time.monotonic() + 15
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert http.get(f"/job/{job_id}").json()["status"] == "pending"  # AOF kept it
            assert http.post("/predict", json={"data": [ROW]}).status_code == 202
    finally:
        server.stop()


def test_sigterm_turns_readiness_503_before_stopping(processes, redis_server):
    proc, url = processes.api(service_env(redis_server.url, SHUTDOWN_DELAY_SECONDS=2))
    with httpx.Client(base_url=url) as http:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert http.get("/readyz").status_code == 503  # still serving, but out of rotation
        assert http.post("/predict", json={"data": [ROW]}).status_code == 202  # in-flight traffic still works
    assert proc.wait(15) == 0


@pytest.mark.parametrize("header", ["x" * 201])
def test_overlong_idempotency_key_is_422(processes, redis_server, header):
    _, url = processes.api(service_env(redis_server.url))
    with httpx.Client(base_url=url) as http:
        response = http.post("/predict", json={"data": [ROW]}, headers={"Idempotency-Key": header})
    assert response.status_code == 422 and "Idempotency-Key" in str(response.json()["detail"])


def test_missing_model_keeps_api_up_but_unready(processes, redis_server, tmp_path):
    """A model volume not mounted yet: the API serves, /readyz and submits say why, until the file appears."""
    model = tmp_path / "later.onnx"
    env = service_env(redis_server.url, MODEL_PATH=model)
    proc = processes.spawn_api_unready(env)
    url = f"http://127.0.0.1:{env['PORT']}"
    with httpx.Client(base_url=url) as http:
        wait_http(f"{url}/healthz", proc=proc)
        ready = http.get("/readyz")
        assert ready.status_code == 503 and "model later" in ready.json()["detail"]
        refused = http.post("/predict", json={"data": [ROW]})
        assert refused.status_code == 503 and str(model) in refused.json()["detail"]
        model.write_bytes(Path(MODEL_PATH).read_bytes())
        deadline = time.monotonic() + 15
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert http.post("/predict", json={"data": [ROW]}).status_code == 202


def test_no_waiter_misses_its_job_ending(processes, redis_server, redis_client):
    """Every `Prefer: wait` under concurrent load is answered by the job's own "ended" event, never by
    the slow re-check (LONG_POLL_RECHECK_S): a waiter woken by "processing" listens again before it
    re-reads the job, so an "ended" landing during that read is heard."""
    import asyncio

    from api.state import LONG_POLL_RECHECK_S

    env = service_env(redis_server.url)
    processes.worker(env)
    _, url = processes.api(env)

    async def one(client: httpx.AsyncClient) -> tuple[int, float]:
        started = time.monotonic()
        response = await client.post("/predict", json={"data": [ROW]}, headers={"Prefer": "wait=10"})
        return response.status_code, time.monotonic() - started

    async def load() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            results: list[tuple[int, float]] = []
            for _ in range(10):
                results += await asyncio.gather(*(one(client) for _ in range(32)))
            return results

    results = asyncio.run(load())
    assert {code for code, _ in results} == {200}
    slowest = max(elapsed for _, elapsed in results)
    assert slowest < LONG_POLL_RECHECK_S * 0.9, f"a wait took {slowest:.2f}s: it was woken by the re-check"

"""POST /job/{id}/retry against a real API and Redis: it counts like a submit (issue 20, defect 5), and
the same request again answers as the first did, whatever the job did since (defect 4)."""

from __future__ import annotations

import threading

import httpx
import pytest

from jobqueue.protocol import ANONYMOUS, scripts_by_name
from jobqueue.states import Outcome
from tests.conftest import service_env
from tests.faults.helpers import STORE
from tests.support.proxy import ReplyLosingProxy
from tests.support.queue import SyncJobs
from tests.support.samples import ROW


@pytest.fixture
def queue(redis_client, settings) -> SyncJobs:
    """The worker's side, played by the test: claim and finish jobs with any outcome."""
    return SyncJobs(redis_client, settings)


def run_once(queue: SyncJobs, job_id: str, outcome: Outcome) -> None:
    """Start the job and end it with `outcome`."""
    assert queue.claimed_ids("w", 1) == [job_id]
    queue.finish("w", [(job_id, outcome, "boom" if outcome is Outcome.FAILED else "[1]")])


def failed_job(http: httpx.Client, queue: SyncJobs) -> str:
    job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
    run_once(queue, job_id, Outcome.FAILED)
    return job_id


def assert_not_retried(queue: SyncJobs, job_id: str) -> None:
    """A refused retry stored nothing: the job is still a failed dead letter."""
    assert queue.get(job_id).status == "failed"
    assert queue.client.lrange(queue.keys.dead, 0, -1) == [job_id]
    assert int(queue.client.hget(queue.keys.stats, "retried") or 0) == 0


def test_retry_counts_against_the_unfinished_jobs_limit(processes, redis_server, queue):
    _, url = processes.api(service_env(redis_server.url, MAX_PENDING_PER_PRINCIPAL=1))
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = failed_job(http, queue)
        other = http.post("/predict", json={"data": [ROW]})
        assert other.status_code == 202  # the failed job is finished: the one unfinished slot is free
        refused = http.post(f"/job/{job_id}/retry")
        assert refused.status_code == 429 and "MAX_PENDING_PER_PRINCIPAL" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        assert_not_retried(queue, job_id)
        assert queue.client.hget(STORE.principal(ANONYMOUS), "unfinished") == "1"
        assert http.delete(f"/job/{other.json()['job_id']}").status_code == 200
        assert http.post(f"/job/{job_id}/retry").status_code == 202


def test_retry_is_rate_limited_like_a_submit(processes, redis_server, queue):
    _, url = processes.api(service_env(redis_server.url, RATE_LIMIT_PER_SECOND=0.1, RATE_LIMIT_BURST=1))
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = failed_job(http, queue)  # its submit took the bucket's one token
        refused = http.post(f"/job/{job_id}/retry")
        assert refused.status_code == 429 and "RATE_LIMIT_PER_SECOND" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert_not_retried(queue, job_id)


def test_a_retry_sent_again_with_its_key_answers_as_the_first_did_and_applies_once(processes, redis_server, queue):
    _, url = processes.api(service_env(redis_server.url))
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = failed_job(http, queue)

        def retry(key: str) -> httpx.Response:
            return http.post(f"/job/{job_id}/retry", headers={"Idempotency-Key": key})

        first = retry("first")
        assert first.status_code == 202 and first.json()["status"] == "pending"
        assert "idempotent-replayed" not in first.headers
        run_once(queue, job_id, Outcome.FAILED)  # it failed again: retryable, but not by the same request
        again = retry("first")
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["status"] == "failed" and queue.get(job_id).status == "failed"
        assert queue.client.hget(queue.keys.stats, "retried") == "1"

        assert retry("second").status_code == 202  # another request: a second retry
        run_once(queue, job_id, Outcome.COMPLETED)
        for key in ("first", "second"):
            replayed = retry(key)
            assert replayed.status_code == 202 and replayed.headers["idempotent-replayed"] == "true"
            assert replayed.json()["status"] == "completed"
        assert retry("third").status_code == 409  # a new request for a completed job
    assert queue.get(job_id).status == "completed" and queue.client.llen(queue.keys.pending()) == 0
    assert queue.client.hget(queue.keys.stats, "retried") == "2"


def test_a_lost_retry_reply_resent_after_the_job_moved_on_answers_202(processes, redis_server, redis_client, queue):
    """The API's Redis client sends the retry again after losing its reply; meanwhile a worker started
    and finished the retried job. The resent retry must answer 202 (it happened), not 409."""
    sha, source = scripts_by_name()["retry"]
    redis_client.script_load(source)  # the API sends EVALSHA: the proxy recognises it by the SHA
    proxy = ReplyLosingProxy(redis_server.port, sha.encode())
    try:
        _, url = processes.api(service_env(proxy.url))
        with httpx.Client(base_url=url, timeout=30) as http:
            job_id = failed_job(http, queue)
            answers: list[httpx.Response] = []
            sender = threading.Thread(target=lambda: answers.append(http.post(f"/job/{job_id}/retry")))
            sender.start()
            assert proxy.dropped.wait(30), "the retry never reached Redis"
            assert queue.get(job_id).status == "pending"  # it ran; the API has not heard so
            run_once(queue, job_id, Outcome.COMPLETED)
            proxy.release()
            sender.join(30)
        assert answers and answers[0].status_code == 202, answers and answers[0].text
        assert answers[0].json()["status"] == "completed" and "idempotent-replayed" not in answers[0].headers
        assert queue.client.hget(queue.keys.stats, "retried") == "1"
    finally:
        proxy.close()

"""The Lua scripts against a real redis-server: every transition and its refusals."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from jobqueue.errors import JobNotFound, QueueFull, WrongState
from jobqueue.protocol import JobQueue
from jobqueue.states import JobStatus, Outcome

PAYLOAD = orjson.dumps({"data": [[5.1, 3.5, 1.4, 0.2]]}).decode()


def enqueue_n(queue: JobQueue, n: int) -> list[str]:
    return [queue.enqueue(str(uuid.uuid4()), PAYLOAD)[0] for _ in range(n)]


@pytest.fixture
def queue(redis_client, settings) -> JobQueue:
    return JobQueue(redis_client, settings)


def test_enqueue_writes_record_and_list_atomically(queue, redis_client):
    job_id, created = queue.enqueue("a", PAYLOAD)
    assert (job_id, created) == ("a", True)
    assert redis_client.lrange(queue.keys.pending, 0, -1) == ["a"]
    record = queue.get("a", with_input=True)
    assert record.status is JobStatus.PENDING and record.attempts == 0 and record.input == PAYLOAD
    assert queue.get("a").input is None  # polls leave the input in Redis
    assert 0 < redis_client.ttl(queue.keys.job("a")) <= queue.settings.job_ttl_seconds


def test_pending_list_holds_only_waiting_ids(queue, redis_client):
    ids = enqueue_n(queue, 5)
    claimed = queue.claim("w1", 2)
    assert [job.job_id for job in claimed] == ids[:2]  # FIFO
    assert redis_client.lrange(queue.keys.pending, 0, -1) == list(reversed(ids[2:]))
    assert redis_client.zcard(queue.keys.inflight) == 2
    assert queue.held("w1") == ids[:2]


def test_idempotency_key_returns_same_job(queue, redis_client):
    first = queue.enqueue("a", PAYLOAD, idempotency_key="k1")
    second = queue.enqueue("b", PAYLOAD, idempotency_key="k1")
    assert first == ("a", True) and second == ("a", False)
    assert redis_client.llen(queue.keys.pending) == 1
    with pytest.raises(JobNotFound):
        queue.get("b")


def test_queue_full_enqueues_nothing(redis_client, settings):
    queue = JobQueue(redis_client, settings.model_copy(update={"max_queue_length": 2}))
    enqueue_n(queue, 2)
    with pytest.raises(QueueFull):
        queue.enqueue("c", PAYLOAD)
    assert redis_client.llen(queue.keys.pending) == 2
    assert not redis_client.exists(queue.keys.job("c"))


def test_claim_marks_processing_and_counts_attempts(queue):
    [job_id] = enqueue_n(queue, 1)
    [claimed] = queue.claim("w1", 10)
    assert claimed.job_id == job_id and claimed.attempts == 1 and claimed.payload == PAYLOAD
    record = queue.get(job_id)
    assert record.status is JobStatus.PROCESSING and record.started_at is not None


def test_finish_first_result_wins(queue, redis_client):
    [job_id] = enqueue_n(queue, 1)
    queue.claim("w1", 1)
    counts = queue.finish("w1", [(job_id, Outcome.COMPLETED, '{"prediction": 1}')])
    assert counts.completed == 1
    # a second (duplicate) run after recovery must not overwrite or flip the result
    again = queue.finish("w2", [(job_id, Outcome.COMPLETED, '{"prediction": 2}')])
    late_failure = queue.finish("w2", [(job_id, Outcome.FAILED, "boom")])
    assert again.ignored == 1 and late_failure.ignored == 1
    record = queue.get(job_id)
    assert record.status is JobStatus.COMPLETED and record.result == '{"prediction": 1}' and record.error is None
    assert queue.held("w1") == [] and redis_client.zcard(queue.keys.inflight) == 0


def test_retry_outcome_requeues_at_front_then_dead_letters(queue, redis_client):
    [poison, other] = enqueue_n(queue, 2)
    for attempt in range(1, queue.settings.max_attempts + 1):
        [claimed] = queue.claim("w1", 1)
        assert claimed.job_id == poison and claimed.attempts == attempt  # requeued ahead of `other`
        queue.finish("w1", [(poison, Outcome.RETRY, "model error: boom")])
    record = queue.get(poison)
    assert record.status is JobStatus.FAILED and "after 3 attempts" in record.error
    assert redis_client.lrange(queue.keys.dead, 0, -1) == [poison]
    assert redis_client.lrange(queue.keys.pending, 0, -1) == [other]


def test_release_gives_back_without_counting_attempt(queue):
    [job_id] = enqueue_n(queue, 1)
    queue.claim("w1", 1)
    counts = queue.finish("w1", [(job_id, Outcome.RELEASE, "")])
    assert counts.requeued == 1
    record = queue.get(job_id)
    assert record.status is JobStatus.PENDING and record.attempts == 0
    # releasing an id no longer held does not queue it twice
    assert queue.finish("w1", [(job_id, Outcome.RELEASE, "")]).ignored == 1
    assert queue.client.llen(queue.keys.pending) == 1


def test_recover_requeues_dead_workers_jobs_in_fifo_order(queue, redis_client, settings):
    ids = enqueue_n(queue, 4)
    queue.claim("dead-worker", 3)
    moved = queue.wait_for_job("dead-worker", 0.1)  # moved by BLMOVE, never started
    assert moved == ids[3]
    redis_client.zadd(queue.keys.workers, {"dead-worker": 0})  # its heartbeat ran out
    counts = queue.recover("reaper")
    assert counts.requeued == 4 and counts.dead_workers == 1
    assert [job.job_id for job in queue.claim("w2", 10)] == ids
    assert [queue.get(i).attempts for i in ids] == [2, 2, 2, 1]
    assert not redis_client.exists(queue.keys.processing("dead-worker"))
    # the lock lets one recovery run per interval
    assert queue.recover("reaper") is None


def test_recover_dead_letters_after_max_attempts(queue, redis_client):
    [job_id] = enqueue_n(queue, 1)
    for _ in range(queue.settings.max_attempts):
        queue.claim("w", 1)
        redis_client.zadd(queue.keys.workers, {"w": 0})
        redis_client.delete(queue.keys.recovery_lock)
        queue.recover("reaper")
    record = queue.get(job_id)
    assert record.status is JobStatus.FAILED and "worker lost" in record.error
    assert redis_client.lrange(queue.keys.dead, 0, -1) == [job_id]


def test_recover_fails_jobs_past_timeout(redis_client, settings):
    queue = JobQueue(redis_client, settings.model_copy(update={"job_timeout_seconds": 0.05}))
    [job_id] = enqueue_n(queue, 1)
    queue.claim("slow-but-alive", 1)
    time.sleep(0.1)
    counts = queue.recover("reaper")
    assert counts.timed_out == 1
    assert queue.get(job_id).error == "exceeded JOB_TIMEOUT_SECONDS"
    # the slow worker's late result is ignored: the job stays failed
    assert queue.finish("slow-but-alive", [(job_id, Outcome.COMPLETED, "{}")]).ignored == 1


def test_cancel_pending_only(queue, redis_client):
    [a, b] = enqueue_n(queue, 2)
    assert queue.cancel(a) is JobStatus.CANCELED
    assert redis_client.lrange(queue.keys.pending, 0, -1) == [b]
    queue.claim("w", 1)
    with pytest.raises(WrongState):
        queue.cancel(b)
    with pytest.raises(JobNotFound):
        queue.cancel("nope")


def test_canceled_job_moved_by_blocking_wait_is_skipped(queue):
    [a] = enqueue_n(queue, 1)
    moved = queue.wait_for_job("w", 0.1)
    queue.cancel(a)
    assert queue.claim("w", 0, moved=[moved]) == []
    assert queue.held("w") == []


def test_retry_failed_job(queue, redis_client):
    [a] = enqueue_n(queue, 1)
    queue.claim("w", 1)
    queue.finish("w", [(a, Outcome.FAILED, "bad")])
    with pytest.raises(WrongState):
        queue.retry(enqueue_n(queue, 1)[0])
    assert queue.retry(a) is JobStatus.PENDING
    record = queue.get(a)
    assert record.attempts == 0 and record.error is None
    assert redis_client.llen(queue.keys.dead) == 0


def test_request_ttl_expires_unstarted_jobs(redis_client, settings):
    queue = JobQueue(redis_client, settings.model_copy(update={"request_ttl_seconds": 1}))
    [a] = enqueue_n(queue, 1)
    time.sleep(1.1)
    assert queue.claim("w", 5) == []
    record = queue.get(a)
    assert record.status is JobStatus.EXPIRED and "REQUEST_TTL_SECONDS" in record.error


def test_job_ttl_removes_records(redis_client, settings):
    queue = JobQueue(redis_client, settings.model_copy(update={"job_ttl_seconds": 1, "request_ttl_seconds": 1}))
    [a] = enqueue_n(queue, 1)
    time.sleep(1.2)
    with pytest.raises(JobNotFound):
        queue.get(a)
    assert queue.claim("w", 5) == []  # the orphan id is dropped, not run
    assert queue.held("w") == []


def test_claim_adopts_ids_whose_reply_was_lost(queue):
    """A claim or BLMOVE executed but its reply lost: the worker adopts what Redis says it holds."""
    ids = enqueue_n(queue, 3)
    queue.claim("w", 2)  # pretend this reply never arrived
    moved = queue.wait_for_job("w", 0.1)  # and this one too
    assert moved == ids[2]
    counts = queue.finish("w", [])
    assert counts.still_held == 3
    adopted = queue.claim("w", 0, moved=queue.held("w"))
    assert [job.job_id for job in adopted] == ids and [job.attempts for job in adopted] == [1, 1, 1]
    assert queue.held("w") == ids  # nothing dropped
    # another worker cannot adopt what is not its own
    assert queue.claim("other", 0, moved=[ids[0]]) == []


def test_enqueue_many_pipelines_and_respects_queue_limit(redis_client, settings):
    queue = JobQueue(redis_client, settings.model_copy(update={"max_queue_length": 3}))
    created = queue.enqueue_many([(f"id{i}", PAYLOAD) for i in range(5)])
    assert created == ["id0", "id1", "id2"]
    assert [job.job_id for job in queue.claim("w", 10)] == created

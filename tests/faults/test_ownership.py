"""Case 5: a worker acts only on jobs it owns. Script-level, against the real scripts in a real redis:
recover never takes a live worker's job back, claim never starts ids it does not hold, finish never
requeues another worker's job, and a late result from a presumed-dead worker is counted once."""

from __future__ import annotations

import pytest
import redis

from jobqueue.protocol import RECORD_FIELDS, WorkerQueue, lua_source, now_ms, parse_record, retry_call
from jobqueue.settings import Settings
from jobqueue.states import Outcome
from tests.faults.helpers import STORE, Jobs, assert_queue_consistent

MODEL = "iris"
KEYS = STORE.model(MODEL)


@pytest.fixture
def queue(redis_server, redis_client: redis.Redis) -> WorkerQueue:
    settings = Settings(redis_url=redis_server.url, worker_ttl_seconds=2, recovery_interval_seconds=0.5, max_attempts=3)
    return WorkerQueue(redis_client, settings, MODEL, "v1")


def declare_dead(client: redis.Redis, worker_id: str) -> None:
    """The worker's heartbeat deadline passed long ago (and others beat since: no outage grace)."""
    client.zadd(KEYS.workers, {worker_id: now_ms() - 60_000})


def test_recover_leaves_a_job_that_another_live_worker_holds(queue: WorkerQueue, jobs: Jobs):
    job = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]])
    assert [j.job_id for j in queue.claim("live", 1).jobs] == [job]
    # A stale copy of the id in a dead worker's list (it held the job before; its LREM never landed).
    jobs.client.lpush(KEYS.processing("dead"), job)
    declare_dead(jobs.client, "dead")
    queue.heartbeat("live")

    counts = queue.recover("live")

    assert counts is not None and (counts.requeued, counts.failed, counts.dead_workers) == (0, 0, 1)
    record = jobs.record(job)
    assert (record["status"], record["worker"], record["attempts"]) == ("processing", "live", "1")
    assert "suspect" not in record
    assert jobs.pending_ids(MODEL) == []
    assert jobs.client.lrange(KEYS.processing("live"), 0, -1) == [job]
    assert not jobs.client.exists(KEYS.processing("dead"))
    assert jobs.stats(MODEL)["recovered"] == 0
    assert queue.finish("live", [(job, Outcome.COMPLETED, '{"prediction": 1}')]).completed == 1
    assert_queue_consistent(jobs, MODEL)


def retry(client: redis.Redis, job_id: str, token: str) -> list:
    """POST /job/{id}/retry, as the API runs it (retry.lua through the shared call builder)."""
    record = parse_record(job_id, RECORD_FIELDS, client.hmget(STORE.job(job_id), RECORD_FIELDS))
    call = retry_call(STORE, Settings(), record, token)
    return client.register_script(lua_source("retry"))(keys=call.keys, args=call.args)


def test_job_failed_by_the_backstop_and_retried_is_queued_once_when_its_stuck_worker_dies(queue: WorkerQueue, jobs: Jobs):
    """A worker stops answering inside a model call (alive by its heartbeat thread): recovery fails the
    job at its backstop deadline, a client retries it, then the stuck worker dies or drains. The retried
    job must wait in the pending list once, not once more for the stale id in the stuck worker's list."""
    job = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]])
    queue.claim("stuck", 1)
    jobs.client.zadd(KEYS.inflight, {job: now_ms() - 1})  # its backstop deadline has passed
    queue.heartbeat("other")
    assert queue.recover("other").timed_out == 1
    assert jobs.record(job)["status"] == "failed"
    assert int(retry(jobs.client, job, "t1")[0]) == 1

    # the stuck worker is declared dead at last (or drains and releases what it holds)
    declare_dead(jobs.client, "stuck")
    jobs.client.delete(KEYS.recovery_lock)
    queue.recover("other")
    queue.finish("stuck", [(job, Outcome.RELEASE, "")])

    assert jobs.pending_ids(MODEL) == [job]
    record = jobs.record(job)
    assert (record["status"], record["attempts"]) == ("pending", "0"), record
    assert_queue_consistent(jobs, MODEL)


def test_claim_ignores_ids_it_does_not_hold(queue: WorkerQueue, jobs: Jobs):
    pending = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]])
    others = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]], priority="high")
    assert [j.job_id for j in queue.claim("b", 1).jobs] == [others]  # high first

    batch = queue.claim("a", 0, moved=[pending, others, "no-such-id"])  # none of them is in a's list

    assert batch.jobs == []
    assert (jobs.record(pending)["status"], jobs.record(pending)["attempts"]) == ("pending", "0")
    assert jobs.pending_ids(MODEL) == [pending]
    record = jobs.record(others)
    assert (record["status"], record["worker"], record["attempts"]) == ("processing", "b", "1")
    assert jobs.client.llen(KEYS.processing("a")) == 0


def test_claim_drops_a_held_id_that_another_worker_runs(queue: WorkerQueue, jobs: Jobs):
    job = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]])
    assert [j.job_id for j in queue.claim("b", 1).jobs] == [job]
    jobs.client.lpush(KEYS.processing("a"), job)  # stale copy in a's list

    assert queue.claim("a", 0, moved=[job]).jobs == []

    assert jobs.client.llen(KEYS.processing("a")) == 0
    record = jobs.record(job)
    assert (record["status"], record["worker"], record["attempts"]) == ("processing", "b", "1")


def test_finish_never_requeues_or_releases_another_workers_job(queue: WorkerQueue, jobs: Jobs):
    job = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]])
    queue.claim("b", 1)
    jobs.client.lpush(KEYS.processing("a"), job)
    counts = queue.finish("a", [(job, Outcome.RETRY, "boom"), (job, Outcome.RELEASE, ""), (job, Outcome.ISOLATE, "")])
    assert (counts.requeued, counts.ignored) == (0, 3)
    record = jobs.record(job)
    assert (record["status"], record["worker"], record["attempts"]) == ("processing", "b", "1")
    assert "suspect" not in record and "error" not in record
    assert jobs.pending_ids(MODEL) == []


def test_late_result_of_a_presumed_dead_worker_is_counted_once(queue: WorkerQueue, jobs: Jobs):
    """At-least-once runs, exactly-once results: the first result wins and is counted once."""
    job = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]])
    queue.claim("a", 1)
    declare_dead(jobs.client, "a")
    queue.heartbeat("b")
    assert queue.recover("b").requeued == 1
    assert [j.attempts for j in queue.claim("b", 1).jobs] == [2]

    assert queue.finish("a", [(job, Outcome.COMPLETED, '{"prediction": "from a"}')]).completed == 1
    assert queue.finish("b", [(job, Outcome.COMPLETED, '{"prediction": "from b"}')]).ignored == 1

    assert jobs.result(job) == {"prediction": "from a"}
    assert jobs.stats(MODEL)["completed"] == 1
    assert jobs.client.llen(KEYS.processing("b")) == 0
    assert_queue_consistent(jobs, MODEL)


@pytest.mark.parametrize("outcome", [Outcome.RETRY, Outcome.RELEASE, Outcome.ISOLATE])
def test_a_requeuing_outcome_sent_again_after_a_lost_reply_leaves_the_run_a_claim_started_since(
    queue: WorkerQueue, jobs: Jobs, outcome: Outcome
):
    """The overlapped loop records batch k while it claims batch k+1: if the record's reply is lost after
    Redis ran it, the claim may already have started the requeued job again, and the loop sends the
    record again. That copy names the run it is for (its start), so it leaves the new run alone: not
    requeued again, no attempt counted or given back twice, still held."""
    job = jobs.enqueue(MODEL, [[1.0, 2.0, 3.0, 4.0]])
    (first,) = queue.claim("w", 1).jobs
    record = (job, outcome, "boom", first.started_at)
    assert queue.finish("w", [record]).requeued == 1  # Redis ran it; the worker never read the reply
    while now_ms() <= int(first.started_at):
        pass  # the next run starts in a later millisecond
    (second,) = queue.claim("w", 1).jobs  # the claim ahead starts it again
    before = jobs.record(job)

    counts = queue.finish("w", [record])  # the record, sent again

    assert (counts.requeued, counts.ignored, counts.still_held) == (0, 1, 1)
    assert jobs.record(job) == before  # status processing, same attempts, no new error or suspect mark
    assert jobs.client.lrange(KEYS.processing("w"), 0, -1) == [job]
    assert jobs.pending_ids(MODEL) == []
    assert jobs.stats(MODEL)["retried"] == (1 if outcome is Outcome.RETRY else 0)
    assert queue.finish("w", [(job, Outcome.COMPLETED, '{"prediction": 2}', second.started_at)]).completed == 1
    assert_queue_consistent(jobs, MODEL)

"""The notify_*.lua scripts against a real redis-server: leases, fencing, idempotent re-runs, give-up."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
import redis.asyncio

import jobqueue.notifications as notifications
from jobqueue.errors import JobNotFound
from jobqueue.notifications import NotificationStore, TransitionCode
from jobqueue.settings import Settings
from jobqueue.states import Outcome
from tests.notifier.helpers import KEYS, seed_finished_job
from tests.support.queue import SyncJobs

T = TypeVar("T")
LEASE_MS = 60_000


@pytest.fixture
def run_store(redis_server, redis_client) -> Callable[[Callable[[NotificationStore], Awaitable[T]]], T]:
    """Run `fn(store)` on a fresh asyncio client (scripts loaded as the notifier loads them)."""

    def run(fn: Callable[[NotificationStore], Awaitable[T]], **settings: object) -> T:
        async def go() -> T:
            client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                return await fn(NotificationStore(client, Settings(redis_url=redis_server.url, **settings)))  # type: ignore[arg-type]
            finally:
                await client.aclose()

        return asyncio.run(go())

    return run


def seed(client: redis.Redis, n: int = 1) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for job_id in ids:
        seed_finished_job(client, job_id, "https://hooks.example.com/x")
    return ids


def now_ms() -> int:
    return int(time.time() * 1000)


def test_claim_leases_due_ids_once_and_drops_expired_records(run_store, redis_client: redis.Redis):
    due, gone = seed(redis_client, 2)
    later = seed(redis_client)[0]
    redis_client.zadd(KEYS.notify, {later: now_ms() + 60_000})
    redis_client.delete(KEYS.job(gone))

    leases = run_store(lambda s: s.claim(10, LEASE_MS))
    assert [lease.job_id for lease in leases] == [due]
    assert leases[0].token == int(redis_client.zscore(KEYS.notify, due)) >= now_ms() + LEASE_MS - 1000
    assert redis_client.zscore(KEYS.notify, gone) is None, "an id whose record expired leaves the outbox"
    assert run_store(lambda s: s.claim(10, LEASE_MS)) == [], "a leased id is invisible to other claims"
    assert run_store(lambda s: s.claim(0, LEASE_MS)) == []


def test_claim_drops_jobs_that_run_again(run_store, redis_client: redis.Redis):
    rerun, done = seed(redis_client, 2)
    redis_client.hset(KEYS.job(rerun), "status", "pending")  # retried via POST /job/{id}/retry
    assert [lease.job_id for lease in run_store(lambda s: s.claim(10, LEASE_MS))] == [done]
    assert redis_client.zscore(KEYS.notify, rerun) is None, "re-added by the core's scripts when it ends again"


def test_claim_respects_the_limit(run_store, redis_client: redis.Redis):
    seed(redis_client, 5)
    assert len(run_store(lambda s: s.claim(3, LEASE_MS))) == 3
    assert len(run_store(lambda s: s.claim(3, LEASE_MS))) == 2


def test_expired_lease_is_reclaimed_and_the_old_holder_is_fenced_off(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    (old,) = run_store(lambda s: s.claim(1, 50))
    time.sleep(0.1)
    (new,) = run_store(lambda s: s.claim(1, LEASE_MS))
    assert new.job_id == job_id and new.token > old.token

    assert run_store(lambda s: s.delivered(old, 200)) is TransitionCode.LEASE_LOST
    assert run_store(lambda s: s.failed_attempt(old, 500, "x", False, 0)).code is TransitionCode.LEASE_LOST
    assert run_store(lambda s: s.release(old)) is TransitionCode.LEASE_LOST
    fields = redis_client.hgetall(KEYS.job(job_id))
    assert fields["notify_state"] == "pending" and fields["notify_attempts"] == "0", "the stale holder changed nothing"

    assert run_store(lambda s: s.delivered(new, 204)) is TransitionCode.DONE
    fields = redis_client.hgetall(KEYS.job(job_id))
    assert (fields["notify_state"], fields["notify_attempts"], fields["notify_last_status"]) == ("delivered", "1", "204")
    assert redis_client.zscore(KEYS.notify, job_id) is None


def test_rerunning_a_transition_is_harmless(run_store, redis_client: redis.Redis):
    first, second = seed(redis_client, 2)
    leases = {lease.job_id: lease for lease in run_store(lambda s: s.claim(2, LEASE_MS))}
    for _ in range(2):  # as when a reply is lost and the client retries the script
        run_store(lambda s: s.delivered(leases[first], 200))
        run_store(lambda s: s.failed_attempt(leases[second], 503, "HTTP 503", False, 1000))
    assert redis_client.hget(KEYS.job(first), "notify_attempts") == "1"
    assert redis_client.hget(KEYS.job(second), "notify_attempts") == "1"


def test_failed_attempt_reschedules_then_gives_up_at_max(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    results = []
    for attempt in range(3):
        (lease,) = run_store(lambda s: s.claim(1, LEASE_MS))
        before = now_ms()
        status = None if attempt == 1 else 500 + attempt
        results.append(
            run_store(
                lambda s, lease=lease, status=status, attempt=attempt: s.failed_attempt(
                    lease, status, f"error {attempt}", False, 0
                ),
                webhook_max_attempts=3,
            )
        )
        fields = redis_client.hgetall(KEYS.job(job_id))
        assert fields["notify_last_error"] == f"error {attempt}"
        assert fields.get("notify_last_status") == (None if status is None else str(status))
        if attempt < 2:
            assert before - 1000 <= redis_client.zscore(KEYS.notify, job_id) <= now_ms() + 1000, "due again after delay 0"
    assert [(r.code, r.attempts) for r in results] == [
        (TransitionCode.DONE, 1),
        (TransitionCode.DONE, 2),
        (TransitionCode.GIVEN_UP, 3),
    ]
    assert redis_client.hget(KEYS.job(job_id), "notify_state") == "failed"
    assert redis_client.zscore(KEYS.notify, job_id) is None
    assert redis_client.lrange(KEYS.notify_failed, 0, -1) == [job_id]


def test_failed_attempt_delay_sets_the_next_due_time(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    (lease,) = run_store(lambda s: s.claim(1, LEASE_MS))
    run_store(lambda s: s.failed_attempt(lease, 429, "HTTP 429", False, 30_000))
    assert redis_client.zscore(KEYS.notify, job_id) == pytest.approx(now_ms() + 30_000, abs=2000)
    assert run_store(lambda s: s.claim(1, LEASE_MS)) == [], "not due before the delay"


def test_permanent_failure_gives_up_at_once_and_the_failed_list_is_bounded(run_store, redis_client, monkeypatch):
    monkeypatch.setattr(notifications, "MAX_FAILED_NOTIFICATIONS", 3)
    ids = seed(redis_client, 5)
    for lease in run_store(lambda s: s.claim(5, LEASE_MS)):
        result = run_store(lambda s, lease=lease: s.failed_attempt(lease, 410, "HTTP 410", True, 0))
        assert (result.code, result.attempts) == (TransitionCode.GIVEN_UP, 1)
    assert redis_client.llen(KEYS.notify_failed) == 3
    assert all(redis_client.hget(KEYS.job(j), "notify_state") == "failed" for j in ids)


def test_release_makes_it_due_now_without_counting(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    (lease,) = run_store(lambda s: s.claim(1, LEASE_MS))
    assert run_store(lambda s: s.release(lease)) is TransitionCode.DONE
    assert redis_client.hget(KEYS.job(job_id), "notify_attempts") == "0"
    assert [x.job_id for x in run_store(lambda s: s.claim(1, LEASE_MS))] == [job_id]


def test_record_gone_after_claim_drops_the_id(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    (lease,) = run_store(lambda s: s.claim(1, LEASE_MS))
    redis_client.delete(KEYS.job(job_id))
    assert run_store(lambda s: s.failed_attempt(lease, None, "gone", True, 0)).code is TransitionCode.NO_SUCH_JOB
    assert redis_client.zcard(KEYS.notify) == 0
    assert not redis_client.exists(KEYS.job(job_id)), "no half record is created"
    with pytest.raises(JobNotFound):
        run_store(lambda s: s.resend(job_id))


def test_resend_of_a_pending_delivery_leaves_its_lease_alone(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    (lease,) = run_store(lambda s: s.claim(1, LEASE_MS))
    run_store(lambda s: s.resend(job_id))
    assert redis_client.zscore(KEYS.notify, job_id) == lease.token
    assert run_store(lambda s: s.delivered(lease, 200)) is TransitionCode.DONE


def test_read_builds_the_delivery_record(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    record = run_store(lambda s: s.read(job_id))
    assert record is not None and record.callback_url == "https://hooks.example.com/x"
    assert record.message_id == f"msg_{job_id}_{record.finished_at}"
    assert record.view["job_id"] == job_id and record.view["notification"]["state"] == "pending"
    assert run_store(lambda s: s.read("nope")) is None


def test_an_attempt_for_an_end_the_job_left_behind_records_nothing(run_store, redis_client: redis.Redis, settings):
    # The real job scripts end the job twice (retry.lua in between); end 1's lease outlives both.
    queue = SyncJobs(redis_client, settings)
    job_id = queue.enqueue(callback_url="https://hooks.example.com/x").job_id
    queue.claim("w", 1)
    queue.finish("w", [(job_id, Outcome.FAILED, "boom")])
    (first,) = run_store(lambda s: s.claim(1, LEASE_MS))
    assert first.end == 1

    queue.retry(job_id)
    assert not run_store(lambda s: s.read(job_id)).describes(first), "a running job's view is not end 1's"
    assert run_store(lambda s: s.delivered(first, 200)) is TransitionCode.SUPERSEDED
    assert "notify_state" not in redis_client.hgetall(KEYS.job(job_id)), "a running job was not marked delivered"

    queue.claim("w", 1)
    queue.finish("w", [(job_id, Outcome.COMPLETED, "[1]")])
    assert redis_client.zscore(KEYS.notify, job_id) <= now_ms(), "end 2 is due at once, whatever end 1 still holds"
    assert run_store(lambda s: s.delivered(first, 200)) is TransitionCode.SUPERSEDED
    assert run_store(lambda s: s.failed_attempt(first, 410, "HTTP 410", True, 0)).code is TransitionCode.SUPERSEDED
    fields = redis_client.hgetall(KEYS.job(job_id))
    assert (fields["notify_state"], fields["notify_attempts"], fields["notify_end"]) == ("pending", "0", "2")
    assert redis_client.llen(KEYS.notify_failed) == 0, "end 1's give-up was not recorded against end 2"

    (second,) = run_store(lambda s: s.claim(1, LEASE_MS))
    assert second.end == 2 and second.token > first.token
    record = run_store(lambda s: s.read(job_id))
    assert record.describes(second) and not record.describes(first)
    assert run_store(lambda s: s.delivered(second, 200)) is TransitionCode.DONE
    assert redis_client.hget(KEYS.job(job_id), "notify_state") == "delivered"


def test_a_record_that_ended_before_ends_were_numbered_is_delivered(run_store, redis_client: redis.Redis):
    (job_id,) = seed(redis_client)
    redis_client.hdel(KEYS.job(job_id), "notify_end")  # written by a release without notify_end
    (lease,) = run_store(lambda s: s.claim(1, LEASE_MS))
    assert lease.end == 0 and run_store(lambda s: s.read(job_id)).describes(lease)
    assert run_store(lambda s: s.delivered(lease, 200)) is TransitionCode.DONE

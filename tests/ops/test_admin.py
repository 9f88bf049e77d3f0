"""Admin reads and actions (jobqueue/admin.py) and the queue metrics built from them, against a real
redis-server seeded through the key layout of jobqueue/keys.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from jobqueue import admin, metrics
from jobqueue.keys import StoreKeys
from jobqueue.protocol import JobStore
from jobqueue.settings import Settings
from tests.support.queue import SyncJobs

T = TypeVar("T")
KEYS = StoreKeys("asyncinfer")


def run(redis_url: str, action: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
    """Run one coroutine against a fresh asyncio client (closed afterwards)."""

    async def main() -> T:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await action(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def now_ms() -> int:
    return int(time.time() * 1000)


def seed_job(r: redis.Redis, job_id: str, model: str, status: str, priority: str = "normal", **fields: object) -> None:
    """A job record as the contract lays it out, and its id on the list its status implies."""
    k = KEYS.model(model)
    record = {
        "status": status,
        "model": model,
        "priority": priority,
        "owner": "alice",
        "input": '{"data": [[1, 2, 3, 4]]}',
        "attempts": 0,
        "created_at": now_ms(),
        "queued_at": now_ms(),
    }
    record.update(fields)
    r.hset(KEYS.job(job_id), mapping=record)
    if status == "pending":
        r.lpush(k.pending(priority), job_id)
    elif status in ("failed", "expired"):
        r.lpush(k.dead, job_id)


def test_overview_reads_every_model_in_one_call(redis_server, redis_client):
    r = redis_client
    seed_job(r, "old", "iris", "pending", queued_at=now_ms() - 90_000)  # tail of normal: the oldest
    seed_job(r, "new", "iris", "pending", queued_at=now_ms() - 1_000)
    seed_job(r, "urgent", "iris", "pending", "high", queued_at=now_ms() - 5_000)
    r.zadd(KEYS.model("iris").inflight, {"running-1": now_ms() + 60_000, "running-2": now_ms() + 60_000})
    r.zadd(KEYS.model("iris").workers, {"w-live": now_ms() + 10_000, "w-dead": now_ms() - 10_000})
    r.rpush(KEYS.model("iris").processing("w-live"), "running-1", "running-2")
    r.hset(KEYS.model("iris").stats, mapping={"enqueued": 10, "completed": 6, "failed": 1, "recovery_grace": "x"})
    seed_job(r, "broken", "iris", "failed", error="boom")
    r.set(KEYS.model("resnet").paused, "1")

    o = run(redis_server.url, lambda c: admin.overview(c, KEYS, ["iris", "resnet"]))
    iris, resnet = o.models
    assert iris.pending == {"high": 1, "normal": 2, "low": 0}
    assert 89 <= iris.oldest_pending_age_s["normal"] < 100 and 4 <= iris.oldest_pending_age_s["high"] < 15
    assert iris.oldest_pending_age_s["low"] == 0
    assert iris.inflight == 2 and iris.dead == 1 and not iris.paused
    assert {(w.id, w.holding, w.alive) for w in iris.workers} == {("w-live", 2, True), ("w-dead", 0, False)}
    assert iris.stats == {"enqueued": 10, "completed": 6, "failed": 1, "retried": 0, "recovered": 0, "expired": 0, "canceled": 0}
    assert resnet.paused and resnet.pending == {"high": 0, "normal": 0, "low": 0} and resnet.workers == []
    assert o.redis_memory_used_bytes > 0 and o.redis_memory_max_bytes == 0
    assert abs(o.now_ms - now_ms()) < 5_000


class ClaimsBetweenReads:
    """The overview's client, except that a worker claims every pending job right after the
    overview's first round trip: what a busy queue does between any two reads."""

    def __init__(self, client: redis.asyncio.Redis, claim: Callable[[], object]) -> None:
        self.client, self.claim, self.claimed = client, claim, False

    def pipeline(self, transaction: bool = True) -> object:
        pipe = self.client.pipeline(transaction=transaction)
        if not self.claimed:
            self.claimed = True
            execute = pipe.execute

            async def execute_then_claim(raise_on_error: bool = True) -> list[object]:
                replies = await execute(raise_on_error)
                self.claim()
                return replies

            pipe.execute = execute_then_claim  # type: ignore[method-assign]
        return pipe


@pytest.mark.parametrize("registered", [True, False], ids=["known-worker", "worker-registers-meanwhile"])
def test_overview_is_one_snapshot_when_a_worker_claims_between_reads(redis_server, redis_client, settings, registered):
    queue = SyncJobs(redis_client, settings)
    queue.enqueue_n(7)
    if registered:
        queue.claim("w", 0)  # registered, holding nothing yet

    o = run(redis_server.url, lambda c: admin.overview(ClaimsBetweenReads(c, lambda: queue.claim("w", 7)), KEYS, ["iris"]))  # type: ignore[arg-type]
    (iris,) = o.models
    (worker,) = iris.workers
    # 7 jobs, each counted once: pending before the claim, or in flight and held after it, never both
    # (read at two moments, the console showed a model idle with 0 in flight beside "holding 7").
    assert sum(iris.pending.values()) + iris.inflight == 7
    assert worker.holding == iris.inflight == 7


def test_queue_metrics_from_the_overview(redis_server, redis_client):
    r = redis_client
    seed_job(r, "a", "iris", "pending", "low", queued_at=now_ms() - 30_000)
    r.zadd(KEYS.model("iris").workers, {"w": now_ms() + 10_000})
    r.hset(KEYS.model("iris").stats, mapping={"enqueued": 7, "completed": 4, "failed": 2, "canceled": 1, "retried": 3})
    r.config_set("maxmemory", 100 * 1024 * 1024)
    try:
        o = run(redis_server.url, lambda c: admin.overview(c, KEYS, ["iris"]))
    finally:
        r.config_set("maxmemory", 0)
    body, content_type = metrics.render(o, with_queue=True)
    assert content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("asyncinfer_queue_pending_jobs", (("model", "iris"), ("priority", "low")))] == 1
    assert 29 <= samples[("asyncinfer_queue_oldest_pending_age_seconds", (("model", "iris"), ("priority", "low")))] < 40
    assert samples[("asyncinfer_jobs_finished_total", (("model", "iris"), ("outcome", "failed")))] == 2
    assert samples[("asyncinfer_jobs_finished_total", (("model", "iris"), ("outcome", "expired")))] == 0
    assert samples[("asyncinfer_jobs_enqueued_total", (("model", "iris"),))] == 7
    assert samples[("asyncinfer_jobs_retried_total", (("model", "iris"),))] == 3
    assert samples[("asyncinfer_workers", (("model", "iris"),))] == 1
    assert samples[("asyncinfer_redis_memory_max_bytes", ())] == 100 * 1024 * 1024
    assert samples[("asyncinfer_redis_up", ())] == 1
    # Without Redis the scrape still answers, saying so.
    down = {f.name: f for f in text_string_to_metric_families(metrics.render(None, with_queue=True)[0].decode())}
    assert down["asyncinfer_redis_up"].samples[0].value == 0 and "asyncinfer_queue_pending_jobs" not in down


def test_dead_letters_newest_first_and_gone_records_skipped(redis_server, redis_client):
    r = redis_client
    seed_job(r, "first", "iris", "failed", error="shape mismatch")
    seed_job(r, "second", "iris", "expired", error="not started in time")
    r.lpush(KEYS.model("iris").dead, "record-expired")  # its record is gone (JOB_TTL_SECONDS)
    items = run(redis_server.url, lambda c: admin.dead_letters(c, KEYS, ["iris"], 10))
    assert [i.record.job_id for i in items] == ["second", "first"]
    first = items[1]
    assert first.record.error == "shape mismatch" and first.input_bytes == len('{"data": [[1, 2, 3, 4]]}')
    assert first.record.input is None and first.record.owner == "alice" and first.queued_at is not None
    assert [i.record.job_id for i in run(redis_server.url, lambda c: admin.dead_letters(c, KEYS, ["iris"], 1))] == []


def test_pause_and_resume_set_the_flag_workers_read(redis_server, redis_client):
    k = KEYS.model("iris")
    run(redis_server.url, lambda c: admin.pause(c, k))
    assert redis_client.exists(k.paused)
    run(redis_server.url, lambda c: admin.resume(c, k))
    assert not redis_client.exists(k.paused)


def test_retry_all_moves_dead_letters_back_to_their_priority(redis_server, redis_client):
    r = redis_client
    seed_job(r, "f1", "iris", "failed", "high", attempts=3, error="boom", started_at=1, finished_at=2, worker="w", queued_at=1)
    seed_job(r, "f2", "iris", "expired", "low", error="late")
    r.lpush(KEYS.model("iris").dead, "gone")  # record expired: dropped from the list
    seed_job(r, "retried-already", "iris", "pending")
    r.lpush(KEYS.model("iris").dead, "retried-already")  # retried one by one meanwhile: dropped too
    seed_job(r, "other-model", "resnet", "failed", error="x")
    received = []
    pubsub = r.pubsub()
    pubsub.subscribe(KEYS.events)

    assert run(redis_server.url, lambda c: admin.DeadLetterRetrier(JobStore(c, Settings(max_queue_length=0))).retry("iris")) == 2
    k = KEYS.model("iris")
    assert r.llen(k.dead) == 0
    assert r.lrange(k.pending("high"), 0, -1) == ["f1"] and r.lrange(k.pending("low"), 0, -1) == ["f2"]
    f1 = r.hgetall(KEYS.job("f1"))
    assert f1["status"] == "pending" and f1["attempts"] == "0" and int(f1["queued_at"]) > now_ms() - 5_000
    assert not {"error", "started_at", "finished_at", "worker"} & f1.keys()
    assert r.ttl(KEYS.job("f1")) == -1  # live again: retry.lua keeps it until it ends
    assert r.hget(k.stats, "retried") == "2"
    assert r.hget(KEYS.principal("alice"), "unfinished") == "2"  # the one retry transition, as POST /job/{id}/retry
    assert r.llen(KEYS.model("resnet").dead) == 1  # other models untouched
    for _ in range(20):
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            received.append(message["data"])
    pubsub.close()
    assert received == ["pending f1", "pending f2"]


def test_retry_all_stops_at_max_queue_length_and_keeps_the_rest(redis_server, redis_client):
    r = redis_client
    for i in range(5):
        seed_job(r, f"d{i}", "iris", "failed", error="boom")
    seed_job(r, "waiting", "iris", "pending")

    retried = run(redis_server.url, lambda c: admin.DeadLetterRetrier(JobStore(c, Settings(max_queue_length=3))).retry("iris"))
    assert retried == 2
    k = KEYS.model("iris")
    assert r.llen(k.pending("normal")) == 3
    # two went back; the other three stay dead letters, in their order, still failed
    assert len(r.lrange(k.dead, 0, -1)) == 3 and r.lrange(k.dead, 0, -1) == [
        d for d in ["d4", "d3", "d2", "d1", "d0"] if d in r.lrange(k.dead, 0, -1)
    ]
    assert sorted(r.hget(KEYS.job(d), "status") for d in r.lrange(k.dead, 0, -1)) == ["failed"] * 3


def test_retry_all_is_not_held_back_by_the_owners_limits(redis_server, redis_client):
    """One job retried by its owner counts like a submit; an operator's retry-all must not leave dead
    letters behind because their owner is at its limits."""
    r = redis_client
    for i in range(3):
        seed_job(r, f"d{i}", "iris", "failed", error="boom")
    r.hset(KEYS.principal("alice"), mapping={"unfinished": 1, "tokens": 0, "at": now_ms()})  # at both limits
    limited = Settings(max_queue_length=0, max_pending_per_principal=1, rate_limit_per_second=0.1, rate_limit_burst=1)
    assert run(redis_server.url, lambda c: admin.DeadLetterRetrier(JobStore(c, limited)).retry("iris")) == 3
    assert r.llen(KEYS.model("iris").dead) == 0 and r.hget(KEYS.principal("alice"), "unfinished") == "4"


def test_retry_all_works_in_slices(redis_server, redis_client):
    count = 1200  # several slices
    r = redis_client
    pipe = r.pipeline()
    for i in range(count):
        pipe.hset(KEYS.job(f"j{i}"), mapping={"status": "failed", "model": "iris", "priority": "normal", "attempts": 3})
        pipe.lpush(KEYS.model("iris").dead, f"j{i}")
    pipe.execute()

    retried = run(redis_server.url, lambda c: admin.DeadLetterRetrier(JobStore(c, Settings(max_queue_length=0))).retry("iris"))
    assert retried == count > admin.RETRY_SLICE
    assert r.llen(KEYS.model("iris").pending("normal")) == count

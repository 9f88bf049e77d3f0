"""The Lua scripts against a real redis-server: every transition, its refusals, and its repeat-safety."""

from __future__ import annotations

import time

import pytest
import redis

from jobqueue.errors import IdempotencyConflict, JobNotFound, QueueFull, RateLimited, TooManyUnfinished, WrongState
from jobqueue.protocol import Enqueued
from jobqueue.states import JobStatus, Outcome
from tests.support.queue import PAYLOAD, SyncJobs


@pytest.fixture
def queue(redis_client, settings) -> SyncJobs:
    return SyncJobs(redis_client, settings)


def make_queue(redis_client, settings, **overrides) -> SyncJobs:
    return SyncJobs(redis_client, settings.model_copy(update=overrides))


def test_enqueue_writes_record_and_list_atomically(queue, redis_client):
    result = queue.enqueue("a")
    assert (result.job_id, result.created, result.status) == ("a", True, JobStatus.PENDING)
    assert redis_client.lrange(queue.keys.pending("normal"), 0, -1) == ["a"]
    record = queue.get("a", with_input=True)
    assert record.status is JobStatus.PENDING and record.attempts == 0 and record.input == PAYLOAD
    assert record.model == "iris" and record.owner == "anonymous" and record.priority == "normal"
    assert queue.get("a").input is None  # polls leave the input in Redis
    assert redis_client.ttl(queue.store.job("a")) == -1  # a live job's record never expires under it


def test_enqueue_twice_with_the_same_id_is_one_job(queue, redis_client):
    """A lost reply retried: the second run finds its own record and queues nothing."""
    queue.enqueue("a")
    again = queue.enqueue("a")
    assert again.job_id == "a" and again.created
    assert redis_client.lrange(queue.keys.pending("normal"), 0, -1) == ["a"]
    assert redis_client.hget(queue.keys.stats, "enqueued") == "1"


def test_pending_list_holds_only_waiting_ids(queue, redis_client):
    ids = queue.enqueue_n(5)
    assert queue.claimed_ids("w1", 2) == ids[:2]  # FIFO
    assert redis_client.lrange(queue.keys.pending("normal"), 0, -1) == list(reversed(ids[2:]))
    assert redis_client.zcard(queue.keys.inflight) == 2
    assert queue.held("w1") == ids[:2]


def test_idempotency_key_is_per_principal_and_checks_the_body(queue, redis_client):
    first = queue.enqueue("a", idempotency_key="k1", owner="alice", fingerprint="f1")
    replay = queue.enqueue("b", idempotency_key="k1", owner="alice", fingerprint="f1")
    assert first.created and (replay.job_id, replay.created, replay.status) == ("a", False, JobStatus.PENDING)
    with pytest.raises(IdempotencyConflict) as conflict:
        queue.enqueue("c", idempotency_key="k1", owner="alice", fingerprint="other body")
    assert conflict.value.job_id == "a"
    other = queue.enqueue("d", idempotency_key="k1", owner="bob", fingerprint="f1")  # bob's own key space
    assert other.job_id == "d" and other.created
    assert redis_client.llen(queue.keys.pending("normal")) == 2
    with pytest.raises(JobNotFound):
        queue.get("b")
    # a replay answers the job's real current status
    queue.claim("w", 10)
    assert queue.enqueue("e", idempotency_key="k1", owner="alice", fingerprint="f1").status is JobStatus.PROCESSING


def test_queue_full_enqueues_nothing(redis_client, settings):
    queue = make_queue(redis_client, settings, max_queue_length=2)
    queue.enqueue_n(2)
    with pytest.raises(QueueFull):
        queue.enqueue("c")
    assert redis_client.llen(queue.keys.pending("normal")) == 2
    assert not redis_client.exists(queue.store.job("c"))


def test_rate_limit_refuses_without_writing_then_refills(redis_client, settings):
    queue = make_queue(redis_client, settings, rate_limit_per_second=20, rate_limit_burst=3)
    queue.enqueue_n(3, owner="alice")
    with pytest.raises(RateLimited) as refused:
        queue.enqueue("x", owner="alice")
    assert 0 < refused.value.retry_after_ms <= 50
    assert not redis_client.exists(queue.store.job("x"))
    queue.enqueue("y", owner="bob")  # buckets are per principal
    time.sleep(0.06)
    assert queue.enqueue("z", owner="alice").created


def test_unfinished_limit_counts_until_jobs_end(redis_client, settings):
    queue = make_queue(redis_client, settings, max_pending_per_principal=2)
    a, _ = queue.enqueue_n(2, owner="alice")
    with pytest.raises(TooManyUnfinished):
        queue.enqueue("x", owner="alice")
    queue.cancel(a)
    queue.enqueue("y", owner="alice")  # a slot freed by the cancel
    for job in queue.claim("w", 10).jobs:
        queue.finish("w", [(job.job_id, Outcome.COMPLETED, "{}")])
    assert redis_client.hget(queue.store.principal("alice"), "unfinished") == "0"


def test_claim_marks_processing_counts_attempts_and_records_the_version(queue):
    [job_id] = queue.enqueue_n(1)
    [claimed] = queue.claim("w1", 10).jobs
    assert claimed.job_id == job_id and claimed.attempts == 1 and claimed.payload == PAYLOAD
    record = queue.get(job_id)
    assert record.status is JobStatus.PROCESSING and record.started_at is not None and record.model_version == "test"


def test_priorities_share_slots_eight_three_one(queue):
    for priority in ("low", "normal", "high"):
        queue.enqueue_n(24, priority=priority)
    started = [queue.get(job_id).priority for job_id in queue.claimed_ids("w", 12)]
    assert (started.count("high"), started.count("normal"), started.count("low")) == (8, 3, 1)
    # one job at a time keeps the same shares over a cycle of 12 claims
    singles = [queue.get(queue.claimed_ids("w", 1)[0]).priority for _ in range(12)]
    assert (singles.count("high"), singles.count("normal"), singles.count("low")) == (8, 3, 1)


def test_empty_priorities_give_their_slots_away(queue):
    ids = queue.enqueue_n(12, priority="low")
    assert queue.claimed_ids("w", 12) == ids


def test_finish_first_result_wins(queue, redis_client):
    [job_id] = queue.enqueue_n(1)
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
    assert 0 < redis_client.ttl(queue.store.job(job_id)) <= queue.settings.job_ttl_seconds
    assert redis_client.hget(queue.keys.stats, "completed") == "1"


def test_finish_twice_counts_once(queue, redis_client):
    """A lost reply retried: the second run changes nothing, counters included."""
    ids = queue.enqueue_n(2)
    queue.claim("w", 2)
    outcomes = [(ids[0], Outcome.COMPLETED, "{}"), (ids[1], Outcome.RETRY, "boom")]
    queue.finish("w", outcomes)
    second = queue.finish("w", outcomes)
    assert second.ignored == 2 and second.completed == 0 and second.requeued == 0
    assert redis_client.hget(queue.keys.stats, "completed") == "1"
    assert redis_client.lrange(queue.keys.pending("normal"), 0, -1) == [ids[1]]


def test_finish_stops_holding_only_its_ids_and_keeps_the_rest_in_order(queue, redis_client):
    """finish reads the processing list once and writes it once: the ids it ends leave it wherever they
    sit (the oldest: a trim; any others: a rewrite), each as `LREM list -1 id` would take it."""
    ids = queue.enqueue_n(6)
    queue.claim("w", 3)
    queue.claim("w", 3)
    assert queue.held("w") == ids
    middle = queue.finish("w", [(ids[1], Outcome.COMPLETED, "{}"), (ids[4], Outcome.COMPLETED, "{}")])
    assert middle.completed == 2 and middle.still_held == 4
    assert queue.held("w") == [ids[0], ids[2], ids[3], ids[5]]
    oldest = queue.finish("w", [(ids[0], Outcome.COMPLETED, "{}"), (ids[2], Outcome.COMPLETED, "{}")])
    assert oldest.still_held == 2 and queue.held("w") == [ids[3], ids[5]]
    # an id sent twice leaves once: its second triple is not held (and ends nothing)
    twice = queue.finish("w", [(ids[3], Outcome.COMPLETED, "{}"), (ids[3], Outcome.COMPLETED, "{}")])
    assert (twice.completed, twice.ignored, twice.still_held) == (1, 1, 1) and queue.held("w") == [ids[5]]
    # an id held twice: the occurrence nearest the tail (the oldest) goes, as LREM -1 takes it
    processing = queue.keys.processing("w")
    redis_client.rpush(processing, "other", ids[5])  # the list, head first: ids[5], other, ids[5]
    assert queue.finish("w", [(ids[5], Outcome.COMPLETED, "{}")]).still_held == 2
    assert redis_client.lrange(processing, 0, -1) == [ids[5], "other"]
    queue.finish("w", [("other", Outcome.RELEASE, ""), (ids[5], Outcome.RELEASE, "")])
    assert not redis_client.exists(processing) and redis_client.zcard(queue.keys.inflight) == 0


def test_finish_records_results_while_redis_is_over_maxmemory(queue, redis_client):
    """Over maxmemory Redis refuses a command that may grow memory as a script's first write: finish writes
    the processing list first (a trim, changing nothing when no id was held), so results still land."""
    held, released = queue.enqueue_n(2)
    queue.claim("w", 2)
    queue.finish("w", [(released, Outcome.RELEASE, "")])  # handed back: no longer held
    redis_client.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="OOM"):
            queue.claim("w", 1)  # Redis is full indeed: nothing starts
        counts = queue.finish("w", [(released, Outcome.COMPLETED, "{}")])
        assert counts.completed == 1 and counts.still_held == 1
        assert queue.finish("w", [(held, Outcome.COMPLETED, "{}")]).completed == 1
    finally:
        redis_client.config_set("maxmemory", "0")
    assert queue.get(held).status is queue.get(released).status is JobStatus.COMPLETED
    assert queue.held("w") == []


def test_the_in_flight_set_holds_exactly_the_started_ids_as_a_skiplist(queue, redis_client):
    """claim's first ZADD member, longer than any listpack member, makes even a small in-flight set a
    skiplist (inserts and removals in log time, not a scan of the whole set each) and leaves it at once."""
    ids = queue.enqueue_n(3)
    queue.claim("w", 3)
    assert sorted(redis_client.zrange(queue.keys.inflight, 0, -1)) == sorted(ids)
    assert redis_client.object("encoding", queue.keys.inflight) == "skiplist"


def test_finish_reports_each_ended_jobs_timings_as_its_claim_read_them(queue, redis_client, settings):
    """finish returns the ids it ended; their priority and created/queued/started times (the worker's
    latency histograms) come from the claim that started them, adopted ones included."""
    [high] = queue.enqueue_n(1, priority="high")
    [low, lost] = queue.enqueue_n(2, priority="low")
    queue.claim("w", 2)
    time.sleep(0.005)  # an adopting claim runs later than the lost one that started the job
    assert queue.claimed_ids("w", 1) == [lost]  # its reply lost: another queue (a restarted client) adopts it
    adopting = SyncJobs(redis_client, settings)
    assert [job.job_id for job in adopting.claim("w", 0, moved=[lost]).jobs] == [lost]
    retried = queue.finish("w", [(high, Outcome.COMPLETED, "{}"), (low, Outcome.RETRY, "boom")])
    ended = adopting.finish("w", [(lost, Outcome.FAILED, "bad")]).ended + retried.ended
    assert [timing.job_id for timing in ended] == [lost, high]  # the requeued one has not ended
    for timing, priority in zip(ended, ("low", "high"), strict=True):
        record = queue.get(timing.job_id)
        queued_at = int(redis_client.hget(queue.store.job(timing.job_id), "queued_at"))
        assert (timing.priority, timing.created_at, timing.queued_at, timing.started_at) == (
            priority, record.created_at, queued_at, record.started_at,
        )  # fmt: skip
    assert queue.finish("w", [(high, Outcome.COMPLETED, "{}")]).ended == ()  # ended once


def test_retry_outcome_requeues_at_front_then_dead_letters(queue, redis_client):
    [poison, other] = queue.enqueue_n(2)
    for attempt in range(1, queue.settings.max_attempts + 1):
        [claimed] = queue.claim("w1", 1).jobs
        assert claimed.job_id == poison and claimed.attempts == attempt  # requeued ahead of `other`
        queue.finish("w1", [(poison, Outcome.RETRY, "model error: boom")])
    record = queue.get(poison)
    assert record.status is JobStatus.FAILED and "after 3 attempts" in record.error
    assert redis_client.lrange(queue.keys.dead, 0, -1) == [poison]
    assert redis_client.lrange(queue.keys.pending("normal"), 0, -1) == [other]


def test_dead_letters_are_bounded(redis_client, settings):
    queue = make_queue(redis_client, settings, max_dead_letters=3)
    ids = queue.enqueue_n(5)
    queue.claim("w", 5)
    queue.finish("w", [(i, Outcome.FAILED, "bad") for i in ids])
    assert redis_client.lrange(queue.keys.dead, 0, -1) == list(reversed(ids))[:3]


def test_release_gives_back_without_counting_attempt(queue):
    [job_id] = queue.enqueue_n(1)
    queue.claim("w1", 1)
    counts = queue.finish("w1", [(job_id, Outcome.RELEASE, "")])
    assert counts.requeued == 1
    record = queue.get(job_id)
    assert record.status is JobStatus.PENDING and record.attempts == 0
    # releasing an id no longer held does not queue it twice
    assert queue.finish("w1", [(job_id, Outcome.RELEASE, "")]).ignored == 1
    assert queue.client.llen(queue.keys.pending("normal")) == 1


def test_a_result_after_a_release_counts_its_run_and_the_job_runs_no_more(queue, redis_client):
    """A second signal releases what the worker holds while its batch runs to the end: the batch's
    results still land (first result wins), counted as one attempt, and the requeued id leaves the
    pending list (which holds only jobs waiting to start: KEDA reads its length)."""
    [job_id] = queue.enqueue_n(1)
    queue.claim("w1", 1)
    assert queue.finish("w1", [(job_id, Outcome.RELEASE, "")]).requeued == 1  # from the signal thread
    assert redis_client.lrange(queue.keys.pending(), 0, -1) == [job_id]
    assert queue.finish("w1", [(job_id, Outcome.COMPLETED, "[1]")]).completed == 1  # the batch's own finish
    record = queue.get(job_id)
    assert record.status is JobStatus.COMPLETED and record.attempts == 1
    assert redis_client.llen(queue.keys.pending()) == 0
    assert queue.claim("w2", 10).jobs == []  # the requeued id is dropped, not run again
    assert queue.get(job_id).attempts == 1


def test_a_worker_reloads_its_scripts_after_a_flush_and_errors_keep_their_class(queue, redis_client):
    """A new or flushed Redis has none of the worker's scripts: its calls fall back to EVAL once. An
    error reply stays redis-py's ResponseError, and the connection stays usable after it."""
    [job_id] = queue.enqueue_n(1)
    redis_client.script_flush()
    assert [j.job_id for j in queue.claim("w1", 1).jobs] == [job_id]
    assert queue.finish("w1", [(job_id, Outcome.COMPLETED, "[1]")]).completed == 1
    redis_client.set(queue.keys.workers, "not a sorted set")  # the heartbeat's ZADD now fails
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        queue.heartbeat("w1")
    redis_client.delete(queue.keys.workers)
    assert queue.heartbeat("w1") > 0


def test_isolated_jobs_run_alone(queue):
    """A batch that hung is handed back as suspects: each then starts alone, and not beside others."""
    ids = queue.enqueue_n(3)
    queue.claim("w", 3)
    queue.finish("w", [(i, Outcome.ISOLATE, "") for i in ids])
    assert [queue.get(i).attempts for i in ids] == [0, 0, 0]  # not counted
    innocent = queue.enqueue("innocent").job_id
    first = queue.claim("w", 10)
    assert first.suspects and [j.job_id for j in first.jobs] == [ids[0]]
    # a suspect never joins a batch being collected: it goes back to the head of its list
    assert queue.claimed_ids("w2", 10, held_in_batch=1) == [innocent]
    second = queue.claim("w3", 10)
    assert second.suspects and [j.job_id for j in second.jobs] == [ids[1]]
    third = queue.claim("w4", 10)
    assert [j.job_id for j in third.jobs] == [ids[2]]
    assert queue.claimed_ids("w5", 10) == []


def test_recover_requeues_dead_workers_jobs_in_fifo_order_as_suspect_halves(queue, redis_client):
    ids = queue.enqueue_n(4)
    queue.claim("dead-worker", 3)
    moved = queue.wait_for_job("dead-worker", 0.1)  # moved by BLMOVE, never started
    assert moved == ids[3]
    redis_client.zadd(queue.keys.workers, {"dead-worker": 0})  # its heartbeat ran out
    counts = queue.recover("reaper")
    assert counts.requeued == 4 and counts.dead_workers == 1
    assert not redis_client.exists(queue.keys.processing("dead-worker"))
    # The batch of three that died is halved, oldest first: [ids[0]] alone, then [ids[1], ids[2]] as one
    # suspect group; the never-started one is no suspect and starts a batch of its own after them.
    assert [queue.get(i).attempts for i in ids] == [0, 0, 0, 0]  # a death in a batch is blamed on nobody
    batches = [queue.claim(f"w{i}", 10) for i in range(3)]
    assert [[j.job_id for j in b.jobs] for b in batches] == [[ids[0]], [ids[1], ids[2]], [ids[3]]]
    assert [b.suspects for b in batches] == [True, True, False]


def kill(queue, redis_client, worker_id: str) -> None:
    """The worker's heartbeat runs out and recovery requeues what it held."""
    redis_client.zadd(queue.keys.workers, {worker_id: 0})
    redis_client.delete(queue.keys.recovery_lock)
    queue.recover("reaper")


def test_a_batch_that_keeps_dying_is_bisected_down_to_its_culprit(queue, redis_client):
    """Each death halves the batch that died; only the half holding the culprit dies again. 16 jobs take
    1 + 2 x log2(16) runs to corner it (not 1 + 16), no innocent has an attempt counted, and the culprit,
    once alone, dies MAX_ATTEMPTS times before it fails."""
    ids = queue.enqueue_n(16)
    culprit = ids[5]
    runs = 0
    while batch := queue.claim(worker := f"w{runs}", 16):
        if not batch.jobs:
            break
        runs += 1
        held = [job.job_id for job in batch.jobs]
        assert batch.suspects == (runs > 1), (runs, held)
        if culprit in held:
            kill(queue, redis_client, worker)
        else:
            queue.finish(worker, [(job_id, Outcome.COMPLETED, "[1]") for job_id in held])
    max_attempts = queue.settings.max_attempts
    assert runs == 1 + 2 * 4 + (max_attempts - 1)
    record = queue.get(culprit)
    assert (record.status, record.attempts) == (JobStatus.FAILED, max_attempts)
    assert record.error == f"worker lost while processing, {max_attempts} attempts"
    innocents = [queue.get(i) for i in ids if i != culprit]
    assert {(r.status, r.attempts) for r in innocents} == {(JobStatus.COMPLETED, 1)}


def test_a_suspect_group_takes_only_its_members_and_a_batch_takes_no_suspect(queue, redis_client):
    ids = queue.enqueue_n(4)
    queue.claim("dead", 4)
    kill(queue, redis_client, "dead")  # halves: [ids[0], ids[1]] and [ids[2], ids[3]]
    fresh = queue.enqueue("fresh").job_id
    assert queue.claimed_ids("w1", 10) == ids[:2]
    # a batch being collected takes no suspect, even of a group
    assert queue.claimed_ids("w2", 10, held_in_batch=1) == [fresh]
    assert queue.claimed_ids("w3", 10) == ids[2:]


def test_recover_leaves_jobs_another_worker_owns(queue, redis_client):
    [job_id] = queue.enqueue_n(1)
    queue.claim("live", 1)
    redis_client.lpush(queue.keys.processing("dead"), job_id)  # a stale copy in a dead worker's list
    redis_client.zadd(queue.keys.workers, {"dead": 0})
    counts = queue.recover("reaper")
    assert counts.requeued == 0 and counts.dead_workers == 1
    record = queue.get(job_id)
    assert record.status is JobStatus.PROCESSING and redis_client.llen(queue.keys.pending("normal")) == 0


def test_claim_ignores_ids_not_in_the_callers_list(queue):
    [job_id] = queue.enqueue_n(1)
    assert queue.claimed_ids("intruder", 0, moved=[job_id]) == []
    assert queue.get(job_id).status is JobStatus.PENDING


def test_recover_dead_letters_after_max_attempts(queue, redis_client):
    [job_id] = queue.enqueue_n(1)
    for _ in range(queue.settings.max_attempts):
        queue.claim("w", 1)
        redis_client.zadd(queue.keys.workers, {"w": 0})
        redis_client.delete(queue.keys.recovery_lock)
        queue.recover("reaper")
    record = queue.get(job_id)
    assert record.status is JobStatus.FAILED and "worker lost" in record.error
    assert redis_client.lrange(queue.keys.dead, 0, -1) == [job_id]


def test_no_worker_is_declared_dead_right_after_an_outage(queue, redis_client):
    """Every heartbeat stopped for longer than the TTL (Redis was away): one TTL of grace."""
    [job_id] = queue.enqueue_n(1)
    queue.claim("w", 1)
    ttl_ms = int(queue.settings.worker_ttl_seconds * 1000)
    now_ms = int(redis_client.time()[0]) * 1000
    redis_client.hset(queue.keys.stats, "beat_at", now_ms - 3 * ttl_ms)  # the last beat was long ago
    redis_client.zadd(queue.keys.workers, {"w": now_ms - 2 * ttl_ms})  # so every deadline has passed
    queue.heartbeat("other")  # the first beat after the outage starts the grace period
    assert queue.recover("reaper") is None
    assert queue.get(job_id).status is JobStatus.PROCESSING


def test_recover_fails_jobs_past_their_backstop(redis_client, settings):
    queue = make_queue(redis_client, settings, job_timeout_seconds=0.01, worker_ttl_seconds=0.3)  # backstop 0.32 s
    [job_id] = queue.enqueue_n(1)
    queue.claim("slow-but-alive", 1)
    for _ in range(2):
        time.sleep(0.2)
        queue.heartbeat("slow-but-alive")  # alive: only the job's deadline passes
    counts = queue.recover("reaper")
    assert counts.timed_out == 1
    assert "JOB_TIMEOUT_SECONDS" in queue.get(job_id).error
    # the slow worker's late result is ignored: the job stays failed
    assert queue.finish("slow-but-alive", [(job_id, Outcome.COMPLETED, "{}")]).ignored == 1


def test_cancel_pending_only_and_twice_is_fine(queue, redis_client):
    [a, b] = queue.enqueue_n(2)
    assert queue.cancel(a) is JobStatus.CANCELED
    assert queue.cancel(a) is JobStatus.CANCELED  # a repeated request is not a failure
    assert redis_client.lrange(queue.keys.pending("normal"), 0, -1) == [b]
    assert 0 < redis_client.ttl(queue.store.job(a)) <= queue.settings.job_ttl_seconds
    queue.claim("w", 1)
    with pytest.raises(WrongState):
        queue.cancel(b)


def test_canceled_job_moved_by_blocking_wait_is_skipped(queue):
    [a] = queue.enqueue_n(1)
    moved = queue.wait_for_job("w", 0.1)
    queue.cancel(a)
    assert queue.claimed_ids("w", 0, moved=[moved]) == []
    assert queue.held("w") == []


def test_retry_failed_job_and_repeat_safety(queue, redis_client):
    [a] = queue.enqueue_n(1, idempotency_key="k")
    queue.claim("w", 1)
    queue.finish("w", [(a, Outcome.FAILED, "bad")])
    assert redis_client.ttl(queue.store.idempotency("anonymous", "k")) > 0
    with pytest.raises(WrongState):
        queue.retry(queue.enqueue_n(1)[0])
    assert queue.retry(a, token="t1") is JobStatus.PENDING
    assert queue.retry(a, token="t1") is JobStatus.PENDING  # same request again: done, not 409
    with pytest.raises(WrongState):
        queue.retry(a, token="t2")  # another request while it is pending: 409
    record = queue.get(a)
    assert record.attempts == 0 and record.error is None
    assert redis_client.llen(queue.keys.dead) == 0
    assert redis_client.ttl(queue.store.job(a)) == -1 and redis_client.ttl(queue.store.idempotency("anonymous", "k")) == -1


def test_a_retry_token_answers_as_its_first_run_whatever_the_job_did_since(queue, redis_client):
    [a] = queue.enqueue_n(1)
    queue.claim("w", 1)
    queue.finish("w", [(a, Outcome.FAILED, "bad")])
    assert queue.retry_answer(a, "t1") == Enqueued(a, True, JobStatus.PENDING)
    queue.claim("w", 1)
    queue.finish("w", [(a, Outcome.FAILED, "bad again")])
    assert queue.retry_answer(a, "t1") == Enqueued(a, False, JobStatus.FAILED)  # replayed, not applied again
    assert queue.get(a).status is JobStatus.FAILED and redis_client.llen(queue.keys.pending()) == 0
    assert queue.retry_answer(a, "t2") == Enqueued(a, True, JobStatus.PENDING)
    assert queue.retry_answer(a, "t1").created is False and queue.retry_answer(a, "t2").created is False
    assert redis_client.hget(queue.keys.stats, "retried") == "2"


def test_request_ttl_expires_unstarted_jobs_only(redis_client, settings):
    queue = make_queue(redis_client, settings, request_ttl_seconds=1)
    [a, started] = queue.enqueue_n(2)
    queue.claim("w", 1)  # takes `a`
    queue.finish("w", [(a, Outcome.RETRY, "boom")])  # started once, requeued
    time.sleep(1.1)
    claimed = queue.claimed_ids("w", 5)
    assert claimed == [a]  # a job that started once never expires as "not started"
    record = queue.get(started)
    assert record.status is JobStatus.EXPIRED and "REQUEST_TTL_SECONDS" in record.error
    assert 0 < redis_client.ttl(queue.store.job(started)) <= queue.settings.job_ttl_seconds


def test_pending_records_outlive_the_job_ttl(redis_client, settings):
    queue = make_queue(redis_client, settings, job_ttl_seconds=1, request_ttl_seconds=0)
    [a] = queue.enqueue_n(1)
    time.sleep(1.2)
    assert queue.get(a).status is JobStatus.PENDING
    assert queue.claimed_ids("w", 5) == [a]


def test_claim_adopts_ids_whose_reply_was_lost(queue):
    """A claim or BLMOVE executed but its reply lost: the worker adopts what Redis says it holds."""
    ids = queue.enqueue_n(3)
    queue.claim("w", 2)  # pretend this reply never arrived
    moved = queue.wait_for_job("w", 0.1)  # and this one too
    assert moved == ids[2]
    counts = queue.finish("w", [])
    assert counts.still_held == 3
    adopted = queue.claim("w", 0, moved=queue.held("w")).jobs
    assert [job.job_id for job in adopted] == ids and [job.attempts for job in adopted] == [1, 1, 1]
    assert queue.held("w") == ids  # nothing dropped
    # another worker cannot adopt what is not its own
    assert queue.claimed_ids("other", 0, moved=[ids[0]]) == []


def test_paused_model_starts_nothing(queue, redis_client):
    [a] = queue.enqueue_n(1)
    redis_client.set(queue.keys.paused, "1")
    batch = queue.claim("w", 10)
    assert batch.paused and batch.jobs == []
    redis_client.delete(queue.keys.paused)
    assert queue.claimed_ids("w", 10) == [a]


def test_a_paused_claim_gives_back_what_the_blocking_wait_moved_in_order(queue, redis_client):
    [a, b] = queue.enqueue_n(2)
    moved = queue.wait_for_job("w", 0.1)  # the oldest, taken by a wait that began before the pause
    redis_client.set(queue.keys.paused, "1")
    batch = queue.claim("w", 10, moved=[moved])
    assert batch.paused and batch.jobs == [] and queue.held("w") == []
    assert redis_client.lrange(queue.keys.pending(), 0, -1) == [b, a] and queue.get(a).status is JobStatus.PENDING
    redis_client.delete(queue.keys.paused)
    assert queue.claimed_ids("w", 10) == [a, b]


def test_enqueue_many_pipelines_and_respects_queue_limit(redis_client, settings):
    queue = make_queue(redis_client, settings, max_queue_length=3)
    results = queue.enqueue_many([queue.new_job(f"id{i}") for i in range(5)])
    created = [r.job_id for r in results if not isinstance(r, Exception)]
    assert created == ["id0", "id1", "id2"] and all(isinstance(r, QueueFull) for r in results[3:])
    assert queue.claimed_ids("w", 10) == created


def test_terminal_jobs_with_a_callback_enter_the_webhook_outbox(queue, redis_client):
    [a, b] = queue.enqueue_n(2, callback_url="https://example.com/hook")
    [c] = queue.enqueue_n(1)
    queue.claim("w", 3)
    queue.finish("w", [(a, Outcome.COMPLETED, "{}"), (b, Outcome.FAILED, "bad"), (c, Outcome.COMPLETED, "{}")])
    assert set(redis_client.zrange(queue.store.notify, 0, -1)) == {a, b}
    assert queue.get(a).notify_state == "pending" and queue.get(c).notify_state is None


def test_a_bulk_request_is_one_call_with_each_job_answered_on_its_own(redis_client, settings):
    queue = make_queue(redis_client, settings, max_queue_length=3, rate_limit_per_second=0)
    queue.enqueue("earlier", idempotency_key="k0", owner="alice", fingerprint="f0")
    jobs = [
        queue.new_job("a", owner="alice"),
        queue.new_job("b", owner="alice", priority="high", callback_url="https://example.com/h"),
        queue.new_job("c", owner="alice", idempotency_key="k0", fingerprint="f0"),  # a replay of "earlier"
        queue.new_job("d", owner="alice", idempotency_key="k0", fingerprint="other"),  # a conflict
        queue.new_job("e", owner="alice"),
        queue.new_job("f", owner="alice"),  # the normal list is full by now (earlier, a, e)
    ]
    results = queue.enqueue_bulk(jobs)
    assert [(r.job_id, r.created) for r in results[:3]] == [("a", True), ("b", True), ("earlier", False)]
    assert isinstance(results[3], IdempotencyConflict) and results[3].job_id == "earlier"
    assert results[4].job_id == "e" and isinstance(results[5], QueueFull)
    assert redis_client.lrange(queue.keys.pending("normal"), 0, -1) == ["e", "a", "earlier"]
    assert redis_client.lrange(queue.keys.pending("high"), 0, -1) == ["b"]
    assert queue.get("b").callback_url == "https://example.com/h" and queue.get("a").owner == "alice"
    assert not redis_client.exists(queue.store.job("c")) and not redis_client.exists(queue.store.job("f"))
    assert redis_client.hget(queue.store.principal("alice"), "unfinished") == "4"
    assert queue.enqueue_bulk(jobs[:2])[0].created  # repeated (a lost reply): the same jobs, no more
    assert redis_client.llen(queue.keys.pending("normal")) == 3

"""Every job a worker's finish ends reaches its latency histograms with the timings its claim read, also
when no claim of this process read them: those are read from the records after the finish, in one round
trip, and a record gone by then is counted in a debug line, never dropped silently."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import REGISTRY

from jobqueue.models import ModelConfig
from jobqueue.protocol import ClaimedBatch, EndedTiming
from jobqueue.states import JobStatus, Outcome
from tests.support.queue import SyncJobs
from tests.support.samples import IRIS
from worker.loop import Worker
from worker.model import OnnxModel


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    from tests.conftest import MODEL_PATH

    return OnnxModel(ModelConfig(name="iris", path=MODEL_PATH))


@pytest.fixture
def queue(settings, redis_client) -> SyncJobs:
    return SyncJobs(redis_client, settings)


def submit(queue: SyncJobs, priority: str = "normal") -> str:
    body = orjson.dumps({"data": [IRIS["virginica"]]}).decode()
    return queue.enqueue(str(uuid.uuid4()), body, priority=priority).job_id


def as_claimed(batch: ClaimedBatch) -> dict[str, EndedTiming]:
    """What a claim reply says of each job's timings, as finish reports them."""
    return {job_id: EndedTiming(str(t[0]), int(t[1]), int(t[2]), int(t[3]), job_id) for job_id, t in batch.timings.items()}


class ReadSpy:
    """Counts the record reads a queue makes for ended jobs no claim of its own read."""

    def __init__(self, queue: Any) -> None:
        self.calls: list[list[str]] = []
        real = queue.ended_timings

        def spying(job_ids: Any) -> Any:
            self.calls.append(list(job_ids))
            return real(job_ids)

        queue.ended_timings = spying


def histogram(name: str, **labels: str) -> tuple[float, float]:
    """(count, sum) of one series of a worker latency histogram, 0 before its first observation."""
    count = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0


def test_jobs_a_worker_ends_without_having_claimed_them_are_in_its_latency_histograms(queue, redis_client, model):
    """Another queue (a previous incarnation of this worker id, whose claim reply this process never read)
    claimed the jobs; this worker runs and records them. Each reaches the histograms with the times its
    record holds, as the claim read them."""
    ids = [submit(queue, "high"), submit(queue), submit(queue)]
    worker = Worker(queue.settings, model, worker_id="restarted")
    claimed = queue.claim(worker.worker_id, len(ids))
    assert [job.job_id for job in claimed.jobs] == ids
    spy = ReadSpy(worker.queue)
    run_before = histogram("asyncinfer_job_run_seconds", model="iris")
    e2e_before = {p: histogram("asyncinfer_job_e2e_seconds", model="iris", priority=p) for p in ("high", "normal")}
    worker._unrecorded = worker.process(claimed.jobs)
    worker._record()
    records = [queue.get(job_id) for job_id in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records)
    run_count, run_sum = histogram("asyncinfer_job_run_seconds", model="iris")
    assert run_count - run_before[0] == len(ids)
    expected_run = sum(r.finished_at - r.started_at for r in records) / 1000
    assert run_sum - run_before[1] == pytest.approx(expected_run, abs=1e-6)
    for priority, n in (("high", 1), ("normal", 2)):
        count, total = histogram("asyncinfer_job_e2e_seconds", model="iris", priority=priority)
        ended = [r for r in records if r.priority == priority]
        assert count - e2e_before[priority][0] == n == len(ended)
        expected = sum(r.finished_at - r.created_at for r in ended) / 1000
        assert total - e2e_before[priority][1] == pytest.approx(expected, abs=1e-6)
    assert spy.calls == [ids]  # one read, after the finish, for all of them


def test_a_released_batch_that_still_records_its_results_is_in_the_latency_histograms(queue, model):
    """A second signal hands the held jobs back (`release_held`, whose finish takes their timings) while
    their batch runs on to the end and records its results: those jobs end too, and are observed."""
    ids = [submit(queue) for _ in range(3)]
    worker = Worker(queue.settings, model)
    claimed = worker.queue.claim(worker.worker_id, len(ids))
    worker.release_held()
    assert all(queue.get(job_id).status is JobStatus.PENDING for job_id in ids)
    spy = ReadSpy(worker.queue)
    before = histogram("asyncinfer_job_run_seconds", model="iris")[0]
    worker._unrecorded = worker.process(claimed.jobs)
    worker._record()
    assert all(queue.get(job_id).status is JobStatus.COMPLETED for job_id in ids)
    assert histogram("asyncinfer_job_run_seconds", model="iris")[0] - before == len(ids)
    assert spy.calls == [ids]


def test_the_timings_read_from_the_records_are_the_claims(queue, settings, redis_client):
    """Exact: a queue that did not claim the jobs reports each ended one with the very timings the claim
    reply carried (priority, created, queued, started), a retried job's included."""
    [high, low] = submit(queue, "high"), submit(queue, "low")
    queue.claim("w", 2)
    queue.finish("w", [(low, Outcome.RETRY, "boom")])  # requeued: started again by the next claim
    again = queue.claim("w", 1)
    claimed = {**as_claimed(again), high: as_claimed(queue.claim("w", 0, moved=[high]))[high]}  # adopted
    other = SyncJobs(redis_client, settings)
    counts = other.finish("w", [(high, Outcome.COMPLETED, "{}"), (low, Outcome.FAILED, "bad")])
    assert counts.untimed == ()
    assert {t.job_id: t for t in counts.ended} == claimed
    assert claimed[low].queued_at < claimed[low].started_at and claimed[low].priority == "low"


def test_a_record_gone_before_it_is_read_is_counted_in_one_debug_line(queue, settings, redis_client, caplog):
    """A record deleted between the finish and the read: the job is left out of the histograms, counted
    once at debug, and the finish succeeds; the others are reported."""
    [kept, deleted] = submit(queue), submit(queue)
    queue.claim("w", 2)
    other = SyncJobs(redis_client, settings)
    real_run = other._run

    def run_then_delete(name: str, keys: list[str], args: list[Any]) -> Any:
        reply = real_run(name, keys, args)
        if name == "finish":
            redis_client.delete(other.store.job(deleted))  # an operator's delete, say
        return reply

    other._run = run_then_delete
    with caplog.at_level(logging.DEBUG, logger="asyncinfer.queue"):
        counts = other.finish("w", [(kept, Outcome.COMPLETED, "{}"), (deleted, Outcome.COMPLETED, "{}")])
    assert counts.completed == 2
    assert [t.job_id for t in counts.ended] == [kept] and counts.untimed == (deleted,)
    lines = [r for r in caplog.records if r.name == "asyncinfer.queue"]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.DEBUG, "ended jobs left out of the latency histograms: 1 record(s) gone, 0 never started")
    ]


def test_a_failed_read_leaves_the_recorded_finish_standing(queue, settings, caplog, monkeypatch):
    """The outcomes are in Redis once finish answered: a read that fails after it is one warning, not a
    failed finish (which the loop would send again)."""
    job_id = submit(queue)
    queue.claim("w", 1)
    other = SyncJobs(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)
    real_pipeline = other.client.pipeline

    def reset(raise_on_error: bool = True) -> Any:
        raise redis.exceptions.ConnectionError("reset")

    def reset_pipeline(transaction: bool = True) -> Any:
        pipe = real_pipeline(transaction=transaction)
        pipe.execute = reset
        return pipe

    monkeypatch.setattr(other.client, "pipeline", reset_pipeline)
    with caplog.at_level(logging.WARNING, logger="asyncinfer.queue"):
        counts = other.finish("w", [(job_id, Outcome.COMPLETED, "{}")])
    assert counts.completed == 1 and counts.ended == () and counts.untimed == (job_id,)
    assert queue.get(job_id).status is JobStatus.COMPLETED
    assert "1 ended job(s) left out of the latency histograms: no records read (reset)" in caplog.text
    other.client.close()


def test_jobs_this_process_claimed_take_no_extra_round_trip(queue, redis_client, model):
    """The usual path: a worker's own claims carry every ended job's timings; nothing is read again."""
    ids = [submit(queue) for _ in range(20)]
    worker = Worker(queue.settings, model)
    spy = ReadSpy(worker.queue)
    before = histogram("asyncinfer_job_run_seconds", model="iris")[0]
    worker.run(burst=True)
    assert all(queue.get(job_id).status is JobStatus.COMPLETED for job_id in ids)
    assert histogram("asyncinfer_job_run_seconds", model="iris")[0] - before == len(ids)
    assert spy.calls == []


def test_a_job_claimed_again_while_the_finish_that_requeued_it_returns_keeps_its_new_timings(queue, redis_client):
    """The overlapped loop's claim ahead (one I/O thread) may start a job as soon as a finish (the other)
    has requeued it in Redis, before that finish's reply is handled: the new claim's timings stay, so the
    job's end later needs no read."""
    [retried, done] = submit(queue), submit(queue)
    queue.claim("w", 2)
    real_run = queue._run
    claimed_between: list[ClaimedBatch] = []

    def finish_then_claim(name: str, keys: list[str], args: list[Any]) -> Any:
        reply = real_run(name, keys, args)
        if name == "finish" and not claimed_between:
            claimed_between.append(queue.claim("w", 1))  # the claim ahead, between Redis and the reply
        return reply

    queue._run = finish_then_claim
    spy = ReadSpy(queue)
    queue.finish("w", [(retried, Outcome.RETRY, "boom"), (done, Outcome.COMPLETED, "{}")])
    assert [job.job_id for job in claimed_between[0].jobs] == [retried]
    counts = queue.finish("w", [(retried, Outcome.COMPLETED, "{}")])
    assert counts.ended == (as_claimed(claimed_between[0])[retried],)
    assert spy.calls == []

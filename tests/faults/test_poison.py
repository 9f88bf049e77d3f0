"""Case 2: a poison input (one that hangs the model, or one that kills its worker every time) fails alone;
the jobs that shared its batch complete with their own results and the service keeps serving."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import service_env
from tests.faults.helpers import Jobs, assert_queue_consistent, wait_until, worker_id_prefix, write_models_file

HANG = 10**12  # Loop iterations: hours of work, so only the watchdog can end the call


def loop_env(redis_url: str, model_dir: Path, tmp_path: Path, **overrides: object) -> dict[str, str]:
    models_file = write_models_file(tmp_path / "loop.yaml", {"loop": model_dir / "loop.onnx"})
    settings: dict[str, object] = {"MODELS_FILE": models_file, "MODEL_NAME": "loop", "MAX_BATCH_SIZE": 64, "MAX_BATCH_WAIT_MS": 50,
                                   "INFERENCE_THREADS": 1}  # fmt: skip
    return service_env(redis_url, **{**settings, **overrides})


def test_hanging_input_is_bisected_out_fails_alone_by_timeout_and_the_other_nine_complete(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path
):
    """RunOptions.terminate really interrupts ONNX Runtime's Loop (checked here end to end: the worker
    keeps serving after the hung call), the batch is isolated in halves, and only the half that hangs
    again is halved again, until the poison hangs alone."""
    env = loop_env(redis_server.url, model_dir, tmp_path, JOB_TIMEOUT_SECONDS=1)
    values = [3, 5, 7, 11, HANG, 13, 17, 19, 23, 29]  # no worker yet: all ten are claimed in one batch
    ids = [jobs.enqueue("loop", [[v]]) for v in values]
    started = time.monotonic()
    processes.worker(env)
    wait_until(lambda: jobs.all_ended(ids), 30, "the ten jobs to end")
    took = time.monotonic() - started

    for job_id, value in zip(ids, values, strict=True):
        record = jobs.record(job_id)
        if value == HANG:
            assert (record["status"], record["attempts"]) == ("failed", "1"), record
            assert "JOB_TIMEOUT_SECONDS" in record["error"] and "aborted" in record["error"], record
            assert "result" not in record
        else:
            assert (record["status"], record["attempts"]) == ("completed", "1"), record
            # its own prediction, from a call without the poison (a call's trip count is its largest input's)
            result = jobs.result(job_id)
            assert result["prediction"] == [value] and max(values) > result["iterations"][0] >= value, result
            assert "error" not in record
    # hung calls of 10, 5, 3, 2 and 1 jobs (1 s each) + start-up; a watchdog that did not interrupt ORT would hang
    assert took < 30, took

    later = jobs.enqueue("loop", [[2]])
    wait_until(lambda: jobs.all_ended([later]), 10, "a later job to complete: the worker keeps serving")
    assert (jobs.record(later)["status"], jobs.result(later)) == ("completed", {"prediction": [2], "iterations": [2]})
    stats = jobs.stats("loop")
    assert (stats["completed"], stats["failed"], stats["recovered"], stats["retried"]) == (10, 1, 0, 0), stats
    assert jobs.client.lrange("asyncinfer:loop:dead", 0, -1) == [ids[values.index(HANG)]]
    assert_queue_consistent(jobs, "loop")


class Killer(threading.Thread):
    """Watches one job; whenever it is `processing` on one of our workers, SIGKILLs that worker at once
    and starts a replacement (a stand-in for an input that crashes the runtime)."""

    def __init__(self, jobs: Jobs, victim: str, start_worker, first_worker) -> None:
        super().__init__(daemon=True)
        self.jobs, self.victim, self.start_worker = jobs, victim, start_worker
        self.workers = [first_worker]
        self.kills = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            record = self.jobs.client.hmget(f"asyncinfer:job:{self.victim}", "status", "worker")
            if record[0] == "processing" and record[1]:
                for proc in self.workers:
                    if proc.poll() is None and worker_id_prefix(proc.pid) in record[1]:
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                        self.kills += 1
                        self.workers.append(self.start_worker())
            elif record[0] in ("completed", "failed"):
                return
            time.sleep(0.005)


class ClaimCounter(threading.Thread):
    """Counts the batches started (one `processing` event per claim). The jobs here share one input
    shape, so each batch is exactly one model call."""

    def __init__(self, jobs: Jobs) -> None:
        super().__init__(daemon=True)
        self.pubsub = jobs.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe("asyncinfer:events")
        self.sizes: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message and str(message["data"]).startswith("processing "):
                self.sizes.append(len(str(message["data"]).split()) - 1)
        self.pubsub.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_input_that_kills_its_worker_every_time_is_bisected_out_of_128_and_fails_alone(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path
):
    # The victim takes ~1 s of Loop work, so the killer sees it `processing` every time it runs.
    env = loop_env(redis_server.url, model_dir, tmp_path, JOB_TIMEOUT_SECONDS=30, WORKER_TTL_SECONDS=1, MAX_BATCH_SIZE=128,
                   RECOVERY_INTERVAL_SECONDS=0.3, MAX_ATTEMPTS=3)  # fmt: skip
    victim_value = 150_000
    values = [3 + i % 40 for i in range(128)]
    values[77] = victim_value
    ids = [jobs.enqueue("loop", [[v]]) for v in values]  # no worker yet: all 128 are claimed in one batch
    victim = ids[77]
    counter = ClaimCounter(jobs)
    counter.start()
    killer = Killer(jobs, victim, lambda: processes.worker(env), processes.worker(env))
    killer.start()
    try:
        wait_until(lambda: jobs.all_ended(ids), 240, "every job to end")
    finally:
        killer.done.set()
        killer.join(5)
        counter.done.set()
        counter.join(5)

    record = jobs.record(victim)
    assert (record["status"], record["attempts"]) == ("failed", "3"), record
    assert record["error"] == "worker lost while processing, 3 attempts", record
    # Bisection: the batch of 128, then two halves per level down to the victim alone (7 levels), then
    # the victim alone twice more; one model call per job would be 1 + 128 + 2.
    assert counter.sizes[0] == 128, counter.sizes
    assert len(counter.sizes) <= 1 + 2 * 7 + 2, counter.sizes
    assert killer.kills == 1 + 7 + 2, (killer.kills, counter.sizes)
    for job_id, value in zip(ids, values, strict=True):
        if job_id == victim:
            continue
        record = jobs.record(job_id)
        # the death of a batch is blamed on none of its members: each innocent has one counted attempt
        assert (record["status"], record["attempts"]) == ("completed", "1"), record
        result = jobs.result(job_id)
        # its own prediction, from a half without the victim (a call holding the victim never returned)
        assert result["prediction"] == [value] and result["iterations"][0] < victim_value, result
    stats = jobs.stats("loop")
    assert (stats["completed"], stats["failed"]) == (127, 1), stats
    wait_until(lambda: not any(jobs.processing_lists("loop").values()), 10, "the dead workers' lists to be reaped")
    assert_queue_consistent(jobs, "loop")


@pytest.mark.slow
def test_batch_of_many_model_calls_each_within_the_timeout_is_not_failed_by_the_backstop(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path, loop_speed
):
    """Jobs of different row shapes share a claim but not a model call: the batch runs one call per shape,
    each well within JOB_TIMEOUT_SECONDS. Recovery's backstop (2x JOB_TIMEOUT + WORKER_TTL after the
    start) must not fail them while the worker keeps making progress."""
    models_file = write_models_file(tmp_path / "wide.yaml", {"loop-wide": model_dir / "loop-wide.onnx"})
    env = service_env(redis_server.url, MODELS_FILE=models_file, MODEL_NAME="loop-wide", MAX_BATCH_SIZE=64, MAX_BATCH_WAIT_MS=50,
                      INFERENCE_THREADS=1, JOB_TIMEOUT_SECONDS=2, WORKER_TTL_SECONDS=0.5, RECOVERY_INTERVAL_SECONDS=0.3)  # fmt: skip
    backstop_s = 2 * 2 + 0.5
    trips = int(loop_speed * 0.5)  # each call ~0.5 s (4x under the timeout); 16 calls ~8 s > the 4.5 s backstop
    ids = {width: jobs.enqueue("loop-wide", [[trips] * width]) for width in range(1, 17)}
    processes.worker(env)
    wait_until(lambda: jobs.all_ended(list(ids.values())), 60, "the jobs to end")
    records = jobs.records(list(ids.values()))
    assert len({r["started_at"] for r in records}) == 1, "one claim"
    took_s = (max(int(r["finished_at"]) for r in records) - int(records[0]["started_at"])) / 1000
    for width, job_id in ids.items():
        record = jobs.record(job_id)
        assert (record["status"], record["attempts"]) == ("completed", "1"), (took_s, record)
        assert jobs.result(job_id) == {"prediction": [trips] * width, "iterations": [trips] * width}
    assert took_s > backstop_s, f"the batch took {took_s:.1f}s: too fast to test the backstop"
    assert jobs.stats("loop-wide")["failed"] == 0
    assert_queue_consistent(jobs, "loop-wide")

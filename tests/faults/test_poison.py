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


def test_hanging_input_fails_alone_by_timeout_and_the_other_nine_complete(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path
):
    """RunOptions.terminate really interrupts ONNX Runtime's Loop (checked here end to end: the worker
    keeps serving after the hung call), the batch is isolated, each job reruns alone."""
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
            # iterations == its own value: it ran alone, not in a call whose trip count was the poison's
            assert jobs.result(job_id) == {"prediction": [value], "iterations": [value]}
            assert "error" not in record
    # one hung batch (1 s) + the poison alone (1 s) + start-up; a watchdog that did not interrupt ORT would hang
    assert took < 20, took

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


@pytest.mark.slow
def test_input_that_kills_its_worker_every_time_fails_alone_as_worker_lost(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path
):
    # The victim takes ~1 s of Loop work, so the killer sees it `processing` every time it runs.
    env = loop_env(redis_server.url, model_dir, tmp_path, JOB_TIMEOUT_SECONDS=30, WORKER_TTL_SECONDS=1,
                   RECOVERY_INTERVAL_SECONDS=0.3, MAX_ATTEMPTS=3)  # fmt: skip
    values = [3, 5, 7, 11, 150_000, 13, 17, 19, 23, 29]
    victim_value = 150_000
    ids = [jobs.enqueue("loop", [[v]]) for v in values]
    victim = ids[values.index(victim_value)]
    killer = Killer(jobs, victim, lambda: processes.worker(env), processes.worker(env))
    killer.start()
    try:
        wait_until(lambda: jobs.all_ended(ids), 90, "every job to end")
    finally:
        killer.done.set()
        killer.join(5)

    record = jobs.record(victim)
    assert (record["status"], record["attempts"]) == ("failed", "3"), record
    assert record["error"] == "worker lost while processing, 3 attempts", record
    assert killer.kills == 3
    for job_id, value in zip(ids, values, strict=True):
        if job_id == victim:
            continue
        record = jobs.record(job_id)
        # attempt 1 died in the victim's batch, attempt 2 ran alone (a suspect) and completed
        assert (record["status"], record["attempts"]) == ("completed", "2"), record
        assert jobs.result(job_id) == {"prediction": [value], "iterations": [value]}
    stats = jobs.stats("loop")
    assert (stats["completed"], stats["failed"]) == (9, 1), stats
    assert stats["recovered"] == 10 + 1 + 0, stats  # the whole first batch, then the victim alone once more
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

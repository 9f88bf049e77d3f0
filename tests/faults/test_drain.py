"""Case 3: SIGTERM during a long model call. The drain starts at once (the signal thread does not wait
for the call), the call is aborted at DRAIN_TIMEOUT_SECONDS, held jobs go back unrun (attempt not
counted) and the process exits; a second SIGTERM does the same at once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.helpers import Jobs, assert_queue_consistent, wait_until
from tests.faults.test_poison import loop_env

pytestmark = pytest.mark.slow
CALL_S = 5  # how long the batch's model call would run if nobody stopped it


def newest_worker_log(tmp_path: Path) -> Path:
    return max(tmp_path.glob("worker-*.log"), key=lambda p: int(p.stem.split("-")[1]))


def when_logged(log: Path, text: str, since: float, timeout_s: float = 10) -> float:
    """Seconds after `since` at which `text` showed up in the log (polled every 10 ms)."""
    wait_until(lambda: text in log.read_text(), timeout_s, f"{text!r} in {log.name}", poll_s=0.01)
    return time.monotonic() - since


def exits_after(proc: subprocess.Popen, since: float, timeout_s: float = 15) -> float:
    proc.wait(timeout_s)
    return time.monotonic() - since


def hold_a_long_batch(processes, jobs: Jobs, env: dict[str, str], loop_speed: float) -> tuple[subprocess.Popen, list[str]]:
    """Three jobs in one batch whose model call takes about CALL_S; returns once the call is running."""
    ids = [jobs.enqueue("loop", [[v]]) for v in (int(loop_speed * CALL_S), 3, 5)]
    worker = processes.worker(env)
    wait_until(lambda: set(jobs.statuses(ids)) == {"processing"}, 30, "the batch to start")
    time.sleep(0.3)  # inside session.run by now
    return worker, ids


def assert_given_back_unrun(jobs: Jobs, ids: list[str]) -> None:
    for record in jobs.records(ids):
        assert (record["status"], record["attempts"]) == ("pending", "0"), record
        assert "worker" not in record and "suspect" not in record and "result" not in record, record
    assert sorted(jobs.pending_ids("loop")) == sorted(ids)
    assert jobs.stats("loop")["retried"] == 0 and jobs.stats("loop")["completed"] == 0
    assert_queue_consistent(jobs, "loop")


def test_sigterm_drains_at_once_and_aborts_the_call_at_the_deadline(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path, loop_speed
):
    env = loop_env(redis_server.url, model_dir, tmp_path, DRAIN_TIMEOUT_SECONDS=1, JOB_TIMEOUT_SECONDS=60)
    worker, ids = hold_a_long_batch(processes, jobs, env, loop_speed)
    log = newest_worker_log(processes.tmp_path)

    signaled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    drain_logged = when_logged(log, "SIGTERM: draining", signaled)
    exited = exits_after(worker, signaled)

    print(f"drain logged after {drain_logged:.3f}s, exited after {exited:.3f}s")
    assert drain_logged < 0.5 + 0.5, drain_logged  # within ~0.5 s; margin for a loaded machine
    assert 1.0 <= exited < 1.0 + 2.0 + 1.0, exited  # the deadline, then out within ~2 s (+1 s margin)
    assert exited < CALL_S - 1, "the model call ran to its end instead of being aborted"
    assert worker.returncode == 1
    assert "drain timeout: aborting the model call" in log.read_text()
    assert_given_back_unrun(jobs, ids)


def test_second_sigterm_aborts_and_exits_at_once(processes, redis_server, jobs: Jobs, model_dir, tmp_path, loop_speed):
    env = loop_env(redis_server.url, model_dir, tmp_path, DRAIN_TIMEOUT_SECONDS=60, JOB_TIMEOUT_SECONDS=60)
    worker, ids = hold_a_long_batch(processes, jobs, env, loop_speed)
    log = newest_worker_log(processes.tmp_path)

    worker.send_signal(signal.SIGTERM)
    when_logged(log, "SIGTERM: draining", time.monotonic())
    time.sleep(0.3)
    assert worker.poll() is None, "the first SIGTERM must drain, not exit"
    signaled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    exited = exits_after(worker, signaled)

    print(f"second SIGTERM: exited after {exited:.3f}s")
    assert exited < 1.5, exited
    assert worker.returncode == 1
    assert "second SIGTERM: aborting the model call" in log.read_text()
    assert_given_back_unrun(jobs, ids)

"""Case 6: Redis refusing writes. At maxmemory (noeviction) the API answers 503 with Retry-After and a
clear message, never 500, and stores nothing for a refused submit; the worker backs off, keeps the
results it holds, and once memory is raised every accepted job completes. Any other error reply
(here: an ACL user without the needed commands) is a 503 too."""

from __future__ import annotations

import signal
import time
from collections import Counter

import httpx
import orjson
import pytest
from stack import RedisServer

from tests.conftest import service_env
from tests.faults.helpers import Jobs, assert_queue_consistent, wait_until
from tests.faults.test_poison import loop_env

ROWS = 1000  # rows per filler job: ~6 KB of input each, so 2 MB fill up in a few hundred submits


@pytest.mark.slow
def test_full_redis_answers_503_worker_keeps_results_and_everything_accepted_completes(
    own_redis: RedisServer, processes, own_jobs: Jobs, model_dir, tmp_path
):
    client = own_jobs.client
    env = loop_env(own_redis.url, model_dir, tmp_path, MAX_ROWS_PER_JOB=ROWS, MAX_BATCH_SIZE=16)
    _, api = processes.api(env)
    worker = processes.worker(env)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "2mb")

    slow = httpx.post(f"{api}/predict", json={"data": [[300_000]]}, timeout=10)  # ~2 s: held while memory fills
    assert slow.status_code == 202, slow.text
    slow_id = slow.json()["job_id"]
    wait_until(lambda: own_jobs.record(slow_id).get("status") == "processing", 30, "the slow job to start")

    accepted: dict[int, str] = {}
    refusals: list[httpx.Response] = []
    with httpx.Client(base_url=api, timeout=10) as http:
        for value in range(1, 1000):
            answer = http.post("/predict", content=orjson.dumps({"data": [[value]] * ROWS}))
            if answer.status_code == 202:
                assert not refusals, "accepted again while Redis was still full"
                accepted[value] = answer.json()["job_id"]
            else:
                refusals.append(answer)
                if len(refusals) == 5:
                    break
        # reads still work at maxmemory
        assert http.get(f"/job/{slow_id}").status_code == 200
    assert accepted and len(refusals) == 5, (len(accepted), [r.status_code for r in refusals])
    for answer in refusals:
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert "(OOM: Redis is full (maxmemory))" in answer.json()["detail"] and "nothing was stored" in answer.json()["detail"]

    wait_until(lambda: own_jobs.record(slow_id)["status"] == "completed", 30, "the held job's result to be recorded")
    log_path = next(processes.tmp_path.glob("worker-*.log"))
    wait_until(lambda: "command not allowed when used memory" in log_path.read_text(), 15, "the worker to be refused")
    assert worker.poll() is None, "the worker must back off, not exit"

    client.config_set("maxmemory", "0")
    ids = list(accepted.values())
    wait_until(lambda: own_jobs.all_ended(ids), 60, "every accepted job to end")

    record = own_jobs.record(slow_id)
    assert (record["status"], record["attempts"]) == ("completed", "1"), record
    assert own_jobs.result(slow_id) == {"prediction": [300_000], "iterations": [300_000]}
    for value, job_id in accepted.items():
        record = own_jobs.record(job_id)
        assert (record["status"], record["attempts"]) == ("completed", "1"), record
        assert [row["prediction"] for row in own_jobs.result(job_id)] == [[value]] * ROWS
    assert len(own_jobs.job_ids()) == len(accepted) + 1, "a refused submit stored something"
    stats = own_jobs.stats("loop")
    assert (stats["enqueued"], stats["completed"], stats["failed"]) == (len(accepted) + 1, len(accepted) + 1, 0), stats
    assert_queue_consistent(own_jobs, "loop")
    print(f"accepted {len(accepted)} before Redis was full")


def test_any_redis_error_reply_is_503_never_500(own_redis: RedisServer, processes, own_jobs: Jobs, models_file):
    """An API whose Redis user may only PING and read job records (a broken ACL, a read-only replica)."""
    own_jobs.client.execute_command(
        "ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "-@all", "+ping", "+hmget", "+auth", "+hello", "+subscribe"
    )
    limited_url = own_redis.url.replace("redis://", "redis://limited:pw@")
    env = service_env(limited_url, MODELS_FILE=models_file)
    _, api = processes.api(env)
    with httpx.Client(base_url=api, timeout=10) as http:
        answers = {
            "submit (hot path)": http.post("/predict", json={"data": [[1]]}),
            "submit to a model": http.post("/models/float/predict", json={"data": [[1.5]]}),
            "bulk submit": http.post("/predict/batch", json={"items": [{"data": [[1]]}, {"data": [[2]]}]}),
            "lookup": http.post("/jobs/lookup", json={"ids": ["nope"]}),
            "read": http.get("/job/nope"),
            "cancel": http.delete("/job/nope"),
            "metrics": http.get("/metrics"),
        }
    codes = {name: answer.status_code for name, answer in answers.items()}
    assert codes == {"submit (hot path)": 503, "submit to a model": 503, "bulk submit": 503, "lookup": 200,
                     "read": 404, "cancel": 404, "metrics": 200}, codes  # fmt: skip
    for name in ("submit (hot path)", "submit to a model", "bulk submit"):
        assert answers[name].headers.get("Retry-After"), name
        assert "(NOPERM: the Redis user lacks a permission)" in answers[name].json()["detail"], answers[name].text
    assert "asyncinfer_redis_up 0" in answers["metrics"].text  # a scrape still answers, saying Redis is not usable
    assert Counter(own_jobs.client.scan_iter("asyncinfer:job:*")) == Counter(), "a refused submit stored something"


@pytest.mark.slow
def test_worker_keeps_its_results_while_redis_refuses_its_writes(
    own_redis: RedisServer, processes, own_jobs: Jobs, model_dir, tmp_path
):
    """Redis refuses the worker's scripts (here its ACL loses EVALSHA) from the middle of a model call
    until after the worker TTL: the finished results are recorded once Redis accepts again, not rerun."""
    client = own_jobs.client
    client.execute_command("ACL", "SETUSER", "worker", "on", ">pw", "~*", "&*", "+@all")
    env = loop_env(own_redis.url.replace("redis://", "redis://worker:pw@"), model_dir, tmp_path, WORKER_TTL_SECONDS=1,
                   RECOVERY_INTERVAL_SECONDS=0.3)  # fmt: skip
    worker = processes.worker(env)
    job = own_jobs.enqueue("loop", [[300_000]])  # ~2 s
    wait_until(lambda: own_jobs.record(job).get("status") == "processing", 30, "the job to start")
    time.sleep(0.5)  # past the batch wait (its claims): inside the model call
    client.execute_command("ACL", "SETUSER", "worker", "-evalsha")
    log_path = next(processes.tmp_path.glob("worker-*.log"))
    assert "no permissions" not in log_path.read_text()
    wait_until(lambda: "no permissions" in log_path.read_text(), 15, "the finish to be refused")
    time.sleep(2)  # past WORKER_TTL_SECONDS with no heartbeat accepted either
    assert own_jobs.record(job)["status"] == "processing"
    client.execute_command("ACL", "SETUSER", "worker", "+evalsha")

    wait_until(lambda: own_jobs.all_ended([job]), 30, "the job to end")
    record = own_jobs.record(job)
    assert (record["status"], record["attempts"]) == ("completed", "1"), record
    assert own_jobs.result(job) == {"prediction": [300_000], "iterations": [300_000]}
    stats = own_jobs.stats("loop")
    assert (stats["completed"], stats["recovered"], stats["retried"], stats["failed"]) == (1, 0, 0, 0), stats
    assert worker.poll() is None
    assert_queue_consistent(own_jobs, "loop")


def test_event_listener_refused_by_redis_keeps_trying_and_recovers(own_redis: RedisServer, processes, own_jobs: Jobs):
    """The API's one Pub/Sub listener (it wakes long polls, SSE and WebSocket waiters) is refused
    SUBSCRIBE (an ACL missing a permission): requests still work, and once the permission is granted
    the listener is back without a restart; the API stops cleanly."""
    client = own_jobs.client
    client.execute_command("ACL", "SETUSER", "nosub", "on", ">pw", "~*", "&*", "+@all", "-subscribe")
    env = service_env(own_redis.url.replace("redis://", "redis://nosub:pw@"))
    api_proc, api = processes.api(env)
    answer = httpx.post(f"{api}/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10)
    assert answer.status_code == 202, answer.text
    assert httpx.get(f"{api}/job/{answer.json()['job_id']}?wait=1", timeout=10).status_code == 200
    assert client.pubsub_numsub("asyncinfer:events") == [("asyncinfer:events", 0)]

    client.execute_command("ACL", "SETUSER", "nosub", "+subscribe")
    wait_until(lambda: client.pubsub_numsub("asyncinfer:events") == [("asyncinfer:events", 1)], 10, "the listener to subscribe")

    api_proc.send_signal(signal.SIGTERM)
    assert api_proc.wait(30) == 0
    log = next(processes.tmp_path.glob("api-*.log")).read_text()
    assert "Application shutdown failed" not in log and "Traceback" not in log, log[-2000:]

"""Case 1: jobs that share a batch never change each other's results; inputs of the wrong type are refused
at the API (422) and failed alone at the worker; models whose outputs are not per row never give values."""

from __future__ import annotations

import subprocess

import httpx
import orjson
import pytest

from tests.conftest import service_env
from tests.faults.helpers import Jobs, assert_queue_consistent, wait_until, write_models_file

BIG = 2**53 + 1  # the first integer float64 cannot hold: a batch promoted to float would round it
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def submit(api: str, model: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{api}/models/{model}/predict", content=body, headers={"Content-Type": "application/json"}, timeout=10)


def test_int64_results_are_exactly_each_jobs_own_input_in_one_mixed_batch(processes, redis_server, jobs: Jobs, models_file):
    env = service_env(redis_server.url, MODELS_FILE=models_file, MAX_BATCH_SIZE=256, MAX_BATCH_WAIT_MS=50, INFERENCE_THREADS=1)
    _, api = processes.api(env)
    # Raw JSON, so `1` and `1.0` really reach the API as an integer and a float.
    bodies = {
        b'{"data": [[1]]}': [1],
        b'{"data": [[1.0]]}': [1],
        b'{"data": [[9007199254740993]]}': [BIG],
        b'{"data": [[-9223372036854775808]]}': [INT64_MIN],
        b'{"data": [[9223372036854775807]]}': [INT64_MAX],
        b'{"data": [[-1.0]]}': [-1],
        b'{"data": [[1], [1.0], [9007199254740993], [-9223372036854775808]]}': [1, 1, BIG, INT64_MIN],
        b'{"data": [[2.0], [9007199254740993]]}': [2, BIG],  # one float in the job makes numpy float64
    }
    ids: dict[str, list[int]] = {}
    for body, expected in bodies.items():
        answer = submit(api, "int64", body)
        assert answer.status_code == 202, answer.text
        ids[answer.json()["job_id"]] = expected
    for body in (b'{"data": [[1.5]]}', b'{"data": [[true]]}', b'{"data": [[9223372036854775808]]}', b'{"data": [["1"]]}'):
        answer = submit(api, "int64", body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["detail"][0]["loc"][:2] == ["body", "data"]

    processes.worker(dict(env, MODEL_NAME="int64"))  # started only now: every job waits for one claim
    wait_until(lambda: jobs.all_ended(list(ids)), 30, "the int64 jobs to end")

    records = jobs.records(list(ids))
    assert {r["status"] for r in records} == {"completed"}, records
    assert {r["attempts"] for r in records} == {"1"}
    assert len({r["started_at"] for r in records}) == 1, "all jobs must have started in one claim (one batch)"
    for job_id, expected in ids.items():
        view = orjson.loads(httpx.get(f"{api}/job/{job_id}", timeout=10).content)  # orjson: exact 64-bit ints
        rows = [{"prediction": [v]} for v in expected]
        assert view["result"] == (rows[0] if len(rows) == 1 else rows), (job_id, view)
        assert view["error"] is None
    assert_queue_consistent(jobs, "int64")


def test_wrong_types_are_refused_at_the_api_and_fail_alone_at_the_worker(processes, redis_server, jobs: Jobs, models_file):
    env = service_env(redis_server.url, MODELS_FILE=models_file, MAX_BATCH_SIZE=64, MAX_BATCH_WAIT_MS=50, INFERENCE_THREADS=1)
    _, api = processes.api(env)
    refused = {
        ("float", b'{"data": [[true]]}'): "booleans",
        ("float", b'{"data": [[1.0], [false]]}'): "booleans",
        ("text", b'{"data": [[1]]}'): "strings",
        ("text", b'{"data": [[1.5]]}'): "strings",
        ("text", b'{"data": [["a"], [2]]}'): "strings",
    }
    for (model, body), word in refused.items():
        answer = submit(api, model, body)
        assert answer.status_code == 422, (model, body, answer.text)
        detail = answer.json()["detail"][0]
        assert detail["loc"][:2] == ["body", "data"] and word in detail["msg"], detail

    # The same inputs written straight into Redis (an old API, a bug, a hand-made job), mixed with good jobs.
    good = {
        jobs.enqueue("float", [[1.5]]): {"prediction": [1.5]},
        jobs.enqueue("float", [[1]]): {"prediction": [1.0]},
        jobs.enqueue("text", [["a"]]): {"prediction": ["a"]},
        jobs.enqueue("text", [["1"]]): {"prediction": ["1"]},
    }
    bad = [
        jobs.enqueue("float", [[True]]),
        jobs.enqueue("float", [[1.0], [False]]),
        jobs.enqueue("text", [[1]]),
        jobs.enqueue("text", [["a"], [2]]),
        jobs.enqueue("float", None, raw_payload="not json"),
        jobs.enqueue("float", None, raw_payload='{"rows": [[1.0]]}'),
    ]
    processes.worker(dict(env, MODEL_NAME="float"))
    processes.worker(dict(env, MODEL_NAME="text"))
    wait_until(lambda: jobs.all_ended([*good, *bad]), 30, "the jobs to end")

    for job_id, expected in good.items():
        record = jobs.record(job_id)
        assert (record["status"], record["attempts"], record.get("error")) == ("completed", "1", None), record
        assert jobs.result(job_id) == expected
    for job_id in bad:
        record = jobs.record(job_id)
        assert (record["status"], record["attempts"]) == ("failed", "1"), record
        assert record["error"].startswith("invalid input"), record
        assert "result" not in record
    for model in ("float", "text"):
        assert_queue_consistent(jobs, model)
    assert jobs.stats("float")["failed"] == 4 and jobs.stats("text")["failed"] == 2


def test_batch_reduced_output_fails_every_job_of_the_call_and_never_gives_a_value(
    processes, redis_server, jobs: Jobs, models_file
):
    env = service_env(redis_server.url, MODELS_FILE=models_file, MAX_BATCH_SIZE=64, MAX_BATCH_WAIT_MS=50, INFERENCE_THREADS=1)
    _, api = processes.api(env)
    ids = []
    for rows in ([[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]], [[0.5, 0.5]]):
        answer = submit(api, "batch-mean", orjson.dumps({"data": rows}))
        assert answer.status_code == 202, answer.text  # the declared output shape looks per-row
        ids.append(answer.json()["job_id"])
    processes.worker(dict(env, MODEL_NAME="batch-mean"))
    wait_until(lambda: jobs.all_ended(ids), 30, "the batch-mean jobs to end")
    for record in jobs.records(ids):
        assert (record["status"], record["attempts"]) == ("failed", "1"), record
        assert "result" not in record
        assert record["error"].startswith("model output does not map to jobs"), record
        assert "1 entries for 5 input rows" in record["error"], record
    assert_queue_consistent(jobs, "batch-mean")


def test_declared_fixed_output_batch_is_refused_by_worker_and_unready_at_api(
    processes, redis_server, jobs: Jobs, model_dir, tmp_path
):
    models_file = write_models_file(
        tmp_path / "fixed.yaml", {"int64": model_dir / "int64.onnx", "fixed-one": model_dir / "fixed-one.onnx"}
    )
    env = service_env(redis_server.url, MODELS_FILE=models_file, INFERENCE_THREADS=1)
    _, api = processes.api(env)
    listed = {m["name"]: m for m in httpx.get(f"{api}/models", timeout=10).json()["models"]}
    assert listed["int64"]["ready"] is True
    assert listed["fixed-one"]["ready"] is False
    assert "fixed first dimension 1" in listed["fixed-one"]["error"]
    answer = submit(api, "fixed-one", b'{"data": [[1.0, 2.0]]}')
    assert answer.status_code == 503 and "fixed first dimension 1" in answer.json()["detail"], answer.text
    assert "Retry-After" in answer.headers

    waiting = jobs.enqueue("fixed-one", [[1.0, 2.0]])  # a job that got in anyway is never run
    worker = processes.worker(dict(env, MODEL_NAME="fixed-one"))
    try:
        code = worker.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker kept running with a model whose output is not per row")
    assert code != 0
    log = next(p for p in processes.tmp_path.glob("worker-*.log")).read_text()
    assert "cannot start: model fixed-one: output 'y' has a fixed first dimension 1, not the batch dimension" in log, log[-2000:]
    assert "Traceback" not in log
    record = jobs.record(waiting)
    assert (record["status"], record["attempts"]) == ("pending", "0")
    assert jobs.pending_ids("fixed-one") == [waiting]

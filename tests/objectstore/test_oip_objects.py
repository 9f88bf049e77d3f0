"""OIP binary tensors through the object store (issue #26), driven by tritonclient against real API and
worker processes, a real redis-server and SeaweedFS: binary input data over INLINE_RESULT_MAX_BYTES is
stored as an input object by the API (Redis keeps a reference), its result comes back through the
result object as an ordinary OIP response; below the threshold nothing changes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis
import tritonclient.http as triton

from jobqueue.job_input import TENSORS_PREFIX, is_tensors
from tests.conftest import Processes, service_env
from tests.objectstore.test_object_jobs import expected, features, job_keys, redis_bytes
from tests.support.seaweed import BUCKET, PREFIX, SeaweedServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

INLINE_LIMIT = 65_536  # INLINE_RESULT_MAX_BYTES's default: the threshold for binary input data too


def infer(base: str, array: np.ndarray, binary: bool = True, headers: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    client = triton.InferenceServerClient(base.removeprefix("http://"), connection_timeout=120, network_timeout=120)
    try:
        tensor = triton.InferInput("X", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        outputs = [triton.InferRequestedOutput(name, binary_data=True) for name in ("label", "probabilities")]
        answer = client.infer("iris", [tensor], outputs=outputs, headers=headers)
        return {name: answer.as_numpy(name) for name in ("label", "probabilities")}
    finally:
        client.close()


def job_payloads(client: redis.Redis) -> list[str]:
    """What each stored job holds as its input (`input_url`, or the API's tensors: job_input)."""
    found = []
    for key in job_keys(client):
        found += [v for v in client.hgetall(key).values() if v.startswith(('{"input_url"', '{"data"', TENSORS_PREFIX))]
    return found


def assert_outputs(got: dict[str, np.ndarray], array: np.ndarray) -> None:
    labels, probabilities = expected(array)
    np.testing.assert_array_equal(got["label"], labels)
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-6)


def start_stack(processes: Processes, redis_server: Any, redis_client: redis.Redis, env: dict[str, str]) -> str:
    _, base = processes.api(env)
    processes.worker(env)
    wait_until(lambda: redis_client.zcard("asyncinfer:iris:workers"), 30, "the worker to register")
    return base


@pytest.fixture
def oip_stack(store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes) -> str:
    env = service_env(redis_server.url, **store_up.env(OIP_WAIT_SECONDS=60, MAX_BODY_BYTES=400_000))
    return start_stack(processes, redis_server, redis_client, env)


def test_large_binary_tensors_go_through_the_object_store_and_redis_holds_a_reference(
    oip_stack: str, store_up: SeaweedServer, redis_client: redis.Redis
) -> None:
    infer(oip_stack, features(2))  # warm: the worker's model and the API's S3 client
    redis_client.flushall()
    wait_until(lambda: redis_client.zcard("asyncinfer:iris:workers"), 30, "the worker to register again")
    redis_before = redis_bytes(redis_client)
    uploads_before = len(store_up.keys(f"{PREFIX}/uploads/"))

    array = features(12_000, seed=5)  # 192 KB of binary FP32: over the threshold, under MAX_BODY_BYTES
    assert array.nbytes > INLINE_LIMIT
    assert_outputs(infer(oip_stack, array), array)

    payloads = job_payloads(redis_client)
    assert len(payloads) == 1 and orjson.loads(payloads[0])["input_url"].startswith(f"s3://{BUCKET}/{PREFIX}/uploads/")
    redis_per_job = redis_bytes(redis_client) - redis_before
    print(f"\nOIP binary input of {array.nbytes} bytes: Redis bytes for the job {redis_per_job}")
    assert redis_per_job < 2048
    assert len(store_up.keys(f"{PREFIX}/uploads/")) == uploads_before + 1
    # an idempotent replay names the same object, so it is the same request: one job, its answer again
    key = {"Idempotency-Key": "oip-large-1"}
    assert_outputs(infer(oip_stack, array, headers=key), array)
    assert_outputs(infer(oip_stack, array, headers=key), array)
    assert len(job_payloads(redis_client)) == 2 and len(store_up.keys(f"{PREFIX}/uploads/")) == uploads_before + 1
    assert redis_client.zscore("asyncinfer:objects", orjson.loads(payloads[0])["input_url"].split("/", 3)[3]) is not None


def test_binary_tensors_under_the_threshold_stay_inline(
    oip_stack: str, store_up: SeaweedServer, redis_client: redis.Redis
) -> None:
    uploads_before = len(store_up.keys(f"{PREFIX}/uploads/"))
    array = features(200, seed=6)  # 3.2 KB (and within MAX_ROWS_PER_JOB, which inline jobs keep)
    assert_outputs(infer(oip_stack, array), array)
    payloads = job_payloads(redis_client)
    assert len(payloads) == 1 and is_tensors(payloads[0])
    assert len(store_up.keys(f"{PREFIX}/uploads/")) == uploads_before


def test_a_result_object_larger_than_max_body_bytes_is_answered_202_with_its_job(oip_stack: str) -> None:
    array = features(22_000, seed=7)  # 352 KB in; the result .npz (label int64 + 3 float32 a row) is ~440 KB
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "X", "shape": list(array.shape), "datatype": "FP32", "parameters": {"binary_data_size": array.nbytes}}
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    body = header + array.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    answer = httpx.post(f"{oip_stack}/v2/models/iris/infer", content=body, headers=headers, timeout=120)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    deadline = time.monotonic() + 60
    view = httpx.get(f"{oip_stack}/job/{job_id}", timeout=20).json()
    while view["status"] != "completed" and time.monotonic() < deadline:
        view = httpx.get(f"{oip_stack}/job/{job_id}", params={"wait": 10}, timeout=20).json()
    assert answer.json()["status"] == "completed" and view["result"] is None and view["result_url"], view


def test_a_json_request_whose_result_went_to_the_store_is_answered_from_the_result_object(
    store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes
) -> None:
    env = service_env(redis_server.url, **store_up.env(OIP_WAIT_SECONDS=60, INLINE_RESULT_MAX_BYTES=1000))
    base = start_stack(processes, redis_server, redis_client, env)
    array = features(100, seed=8)  # JSON tensors stay inline; their ~10 KB result goes to a .json object
    assert_outputs(infer(base, array, binary=False), array)
    (key,) = job_keys(redis_client)
    assert redis_client.hget(key, "status") == "completed"
    assert any(v.startswith(f"s3://{BUCKET}/{PREFIX}/results/") for v in redis_client.hgetall(key).values())

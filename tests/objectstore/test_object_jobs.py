"""Large inputs and results through a real S3-compatible store (issue #26), SeaweedFS enforcing
credentials, with real API and worker processes and a real redis-server:

1. a 200 MB .npy through `input_url`: Redis holds < 2 KB for the job and the API's RSS does not grow;
2. bad objects fail fast and clearly (422 at submit where the API can tell, else one failed attempt);
3. a worker killed while writing its result object leaves no object; the re-run writes it once;
4. the store down: 503 at /uploads and at submit, and a retried (not failed) job that completes
   once the store is back.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
import redis
from stack import BIN, free_port, stop

from asyncinfer_client import Client
from tests.conftest import MODEL_PATH, Processes, service_env
from tests.support.proxy import StallingProxy
from tests.support.seaweed import BUCKET, PREFIX, SeaweedServer, fetch
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

ROW_BYTES = 16  # the iris model: 4 float32 features per row


def put_array(seaweed: SeaweedServer, tmp_path: Path, name: str, array: np.ndarray) -> str:
    path = tmp_path / name
    np.save(path, array)
    return put_file(seaweed, path, name)


def put_file(seaweed: SeaweedServer, path: Path, name: str, prefix: str = PREFIX) -> str:
    key = f"{prefix}/inputs/{name}"
    seaweed.client().upload_file(str(path), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def features(rows: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((rows, 4), dtype=np.float32) * 7).astype(np.float32)


def expected(array: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(MODEL_PATH, providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: array}))


def submit(base: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/predict", json=body, timeout=30)


def wait_ended(base: str, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = httpx.get(f"{base}/job/{job_id}", params={"wait": 10}, timeout=20).json()
        if view["status"] in ("completed", "failed"):
            return view
    raise AssertionError(f"job {job_id} did not end in {timeout_s}s")


def redis_bytes(client: redis.Redis) -> int:
    """What every key takes (MEMORY USAGE), summed: a job's footprint is the difference."""
    return sum(int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter(count=1000))


def job_keys(client: redis.Redis) -> list[str]:
    return list(client.scan_iter("asyncinfer:job:*"))


def test_a_200_mb_npy_input_streams_through_the_worker_and_redis_holds_only_references(
    store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    rows = 200_000_000 // ROW_BYTES
    array = features(rows)
    url = put_array(store_up, tmp_path, "big.npy", array)
    env = service_env(redis_server.url, **store_up.env(MAX_BATCH_SIZE=4096, JOB_TIMEOUT_SECONDS=30))
    api, base = processes.api(env)
    processes.worker(env)
    wait_until(lambda: redis_client.zcard("asyncinfer:iris:workers"), 30, "the worker to register")
    # a small object job first: the API's S3 client is built on first use (its own few MB of RSS)
    warm = submit(base, {"input_url": put_array(store_up, tmp_path, "warm.npy", features(10))}).json()["job_id"]
    assert wait_ended(base, warm, 60)["status"] == "completed"
    api_rss = psutil.Process(api.pid)
    rss_before, redis_before = api_rss.memory_info().rss, redis_bytes(redis_client)

    answer = submit(base, {"input_url": url})
    assert answer.status_code == 202, answer.text
    view = wait_ended(base, answer.json()["job_id"], 240)

    assert view["status"] == "completed", view
    assert view["result"] is None and view["result_url"].startswith(store_up.endpoint)
    redis_per_job = redis_bytes(redis_client) - redis_before
    api_growth = api_rss.memory_info().rss - rss_before
    print(f"\n200 MB input: Redis bytes for the job {redis_per_job}, API RSS growth {api_growth / 1e6:.1f} MB")
    assert redis_per_job < 2048
    assert api_growth < 10e6  # the API never downloaded the 200 MB
    result = np.load(io.BytesIO(fetch(view["result_url"])))
    labels, probabilities = expected(np.concatenate([array[:1000], array[-1000:]]))
    assert result["label"].shape == (rows,) and result["probabilities"].shape == (rows, 3)
    np.testing.assert_array_equal(np.concatenate([result["label"][:1000], result["label"][-1000:]]), labels)
    np.testing.assert_allclose(np.concatenate([result["probabilities"][:1000], result["probabilities"][-1000:]]), probabilities)


def test_bad_objects_are_refused_at_submit_naming_input_url_and_nothing_is_stored(
    store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    env = service_env(redis_server.url, **store_up.env(MAX_OBJECT_BYTES=100_000, OBJECT_STORE_ALLOWED=f"s3://{BUCKET}/shared"))
    wrong = {**env, "PORT": str(free_port()), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    _, base = processes.api(env)
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY\x01\x00garbage that is no header")
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, features(1000))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    cases = {
        "does not exist": f"s3://{BUCKET}/{PREFIX}/inputs/missing.npy",
        "outside the buckets and prefixes": "s3://another-bucket/jobs/x.npy",
        "outside the buckets and prefixes ": f"s3://{BUCKET}/elsewhere/x.npy",
        "over MAX_OBJECT_BYTES": put_array(store_up, tmp_path, "big.npy", features(10_000)),
        "dtype <U3 does not fit": put_array(store_up, tmp_path, "text.npy", np.full((3, 4), "abc")),
        "must have 4 values": put_array(store_up, tmp_path, "wide.npy", np.ones((3, 5), np.float32)),
        "not a valid .npy file": put_file(store_up, corrupt, "corrupt.npy"),
        "which is not its 5000 bytes": put_file(store_up, truncated, "truncated.npy"),
        "must be an s3://bucket/key URL": "https://example.com/x.npy",
    }
    for reason, url in cases.items():
        answer = submit(base, {"input_url": url})
        assert answer.status_code == 422, (reason, answer.text)
        detail = answer.json()["detail"][0]
        assert detail["loc"] == ["body", "input_url"] and reason.strip() in detail["msg"], (reason, detail)
    # an allow-listed prefix is read (and this object is fine)
    np.save(tmp_path / "small.npy", features(10))
    allowed = put_file(store_up, tmp_path / "small.npy", "ok.npy", prefix="shared")
    assert submit(base, {"input_url": allowed}).status_code == 202
    assert len(job_keys(redis_client)) == 1  # only the accepted one
    # the service's own credentials wrong: the object cannot be read, and the answer says so
    _, wrong_base = processes.api(wrong)
    answer = submit(wrong_base, {"input_url": allowed})
    assert answer.status_code == 422 and "access denied" in answer.json()["detail"][0]["msg"], answer.text
    assert len(job_keys(redis_client)) == 1


def test_objects_the_api_cannot_judge_fail_at_their_first_attempt(
    store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    env = service_env(redis_server.url, **store_up.env())
    _, base = processes.api(env)
    good = features(50, seed=3)
    np.savez(tmp_path / "named.npz", X=good)
    np.savez(tmp_path / "ints.npz", X=np.full((5, 4), "x"))
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 this is no zip archive at all")
    (tmp_path / "rows.json").write_bytes(b'{"data": [[6.7, 3.0, 5.2, 2.3], [5.1, 3.5, 1.4, 0.2]]}')
    # a worker whose credentials the store refuses: the job fails at once, saying why
    creds = submit(base, {"input_url": put_array(store_up, tmp_path, "creds.npy", good)}).json()["job_id"]
    refused = processes.worker({**env, **store_up.env(AWS_SECRET_ACCESS_KEY="not-the-secret"), "MAX_ATTEMPTS": "5"})
    view = wait_ended(base, creds, 60)
    assert view["status"] == "failed" and view["attempts"] == 1 and "access denied" in view["error"], view
    stop(refused, 15)

    doomed = put_array(store_up, tmp_path, "deleted.npy", good)
    urls = {
        "deleted": doomed,
        "dtype": put_file(store_up, tmp_path / "ints.npz", "ints.npz"),
        "corrupt": put_file(store_up, tmp_path / "zip.npz", "zip.npz"),
        "npz": put_file(store_up, tmp_path / "named.npz", "named.npz"),
        "json": put_file(store_up, tmp_path / "rows.json", "rows.json"),
    }
    ids = {}
    for name, url in urls.items():
        answer = submit(base, {"input_url": url})
        assert answer.status_code == 202, (name, answer.text)
        ids[name] = answer.json()["job_id"]
    store_up.client().delete_object(Bucket=BUCKET, Key=doomed.split("/", 3)[3])
    processes.worker({**env, "MAX_ATTEMPTS": "5"})
    reasons = {"deleted": "does not exist", "dtype": "does not fit the model's input 'X'", "corrupt": "not a valid .npz"}
    for name, reason in reasons.items():
        view = wait_ended(base, ids[name], 60)
        assert view["status"] == "failed" and view["attempts"] == 1 and reason in view["error"], (name, view)
    npz = wait_ended(base, ids["npz"], 60)
    assert npz["status"] == "completed", npz
    result = np.load(io.BytesIO(fetch(npz["result_url"])))
    np.testing.assert_array_equal(result["label"], expected(good)[0])
    rows = wait_ended(base, ids["json"], 60)
    assert rows["status"] == "completed" and rows["result"] is None, rows
    assert [row["class_name"] for row in httpx.get(rows["result_url"]).json()] == ["virginica", "setosa"]


def test_a_worker_killed_while_writing_its_result_object_leaves_none_and_the_rerun_writes_it_once(
    store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    array = features(1_000_000, seed=5)  # a 20 MB result: a multipart upload
    url = put_array(store_up, tmp_path, "kill.npy", array)
    stall = StallingProxy(int(store_up.endpoint.rsplit(":", 1)[1]), f"PUT /{BUCKET}/{PREFIX}/results/".encode())
    env = service_env(redis_server.url, **store_up.env(MAX_BATCH_SIZE=4096))
    _, base = processes.api(env)
    job_id = submit(base, {"input_url": url}).json()["job_id"]
    doomed = processes.worker({**env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{stall.port}"})
    try:
        assert stall.stalled.wait(60), "the worker never started writing its result"
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
    finally:
        stall.close()
    result_key = f"{PREFIX}/results/{job_id}.npz"
    assert store_up.keys(result_key) == []  # no half object
    uploads = store_up.client().list_multipart_uploads(Bucket=BUCKET, Prefix=result_key).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [result_key]  # it was killed in the middle of writing it

    processes.worker(env)  # recovery hands the dead worker's job to this one
    view = wait_ended(base, job_id, 120)
    assert view["status"] == "completed" and view["attempts"] == 2, view
    assert store_up.keys(result_key) == [result_key]
    result = np.load(io.BytesIO(fetch(view["result_url"])))
    np.testing.assert_array_equal(result["label"], expected(array)[0])


def test_the_store_down_answers_503_at_uploads_and_retries_jobs_until_it_is_back(
    store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    env = service_env(redis_server.url, **store_up.env(MAX_ATTEMPTS=50))
    _, base = processes.api(env)
    upload = httpx.post(f"{base}/uploads", params={"format": "npy"}, timeout=30)
    assert upload.status_code == 201, upload.text
    buffer = io.BytesIO()
    np.save(buffer, features(20, seed=9))
    assert httpx.put(upload.json()["upload_url"], content=buffer.getvalue(), timeout=30).status_code == 200
    answer = submit(base, {"input_url": upload.json()["input_url"]})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]

    store_up.crash()
    down = httpx.post(f"{base}/uploads", timeout=60)
    assert down.status_code == 503 and down.headers["Retry-After"], down.text
    refused = submit(base, {"input_url": upload.json()["input_url"]})
    assert refused.status_code == 503, refused.text
    assert len(job_keys(redis_client)) == 1 and redis_client.zcard("asyncinfer:objects") == 1  # the one upload

    processes.worker(env)

    def retried() -> bool:
        record = redis_client.hgetall(f"asyncinfer:job:{job_id}")
        return int(record.get("attempts", 0)) >= 2 and "object store unreachable" in record.get("error", "")

    wait_until(retried, 60, "the job to be retried while the store is down")
    assert redis_client.hget(f"asyncinfer:job:{job_id}", "status") in ("pending", "processing")
    store_up.start()
    view = wait_ended(base, job_id, 90)
    assert view["status"] == "completed" and view["attempts"] >= 2, view


def test_large_inline_results_go_to_the_store_and_every_object_is_deleted_after_the_job_ttl(
    store_up: SeaweedServer, redis_server: Any, redis_client: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    env = service_env(
        redis_server.url,
        **store_up.env(INLINE_RESULT_MAX_BYTES=200, JOB_TTL_SECONDS=2, JOB_TIMEOUT_SECONDS=1, REQUEST_TTL_SECONDS=60),
    )
    _, base = processes.api(env)
    processes.worker(env)
    small = submit(base, {"data": [[5.1, 3.5, 1.4, 0.2]]}).json()["job_id"]
    large = submit(base, {"data": [[5.1, 3.5, 1.4, 0.2]] * 3}).json()["job_id"]
    small_view, large_view = wait_ended(base, small, 30), wait_ended(base, large, 30)
    assert small_view["result"]["class_name"] == "setosa" and "result_url" not in small_view
    assert large_view["result"] is None
    assert [row["class_name"] for row in httpx.get(large_view["result_url"]).json()] == ["setosa"] * 3
    key = f"{PREFIX}/results/{large}.json"
    assert store_up.keys(key) == [key]
    # the SDK: an array over its upload threshold goes up through POST /uploads, the result comes back as arrays
    array = features(500, seed=11)
    with Client(base, upload_above_bytes=1000) as client:
        arrays = client.predict(array, timeout=60)
        rows = client.predict([[5.1, 3.5, 1.4, 0.2]] * 3, timeout=60)  # inline input, result from result_url
    np.testing.assert_array_equal(arrays["label"], expected(array)[0])
    assert [row["class_name"] for row in rows] == ["setosa"] * 3
    # the CLI: a .npy file is one job through the store, its result an .npz
    np.save(tmp_path / "rows.npy", array)
    cli = [str(BIN / "asyncinfer"), "--url", base, "run", str(tmp_path / "rows.npy"), "-o", str(tmp_path / "out.npz")]
    subprocess.run(cli, check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["label"], expected(array)[0])
    wait_until(lambda: not store_up.keys(key), 30, "the swept result object", poll_s=0.5)
    assert redis_client.zscore("asyncinfer:objects", key) is None, redis_client.zrange("asyncinfer:objects", 0, -1)

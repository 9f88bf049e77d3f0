"""Object storage (issue #26): end-to-end MB/s of .npy inputs through `input_url`, beside the inline JSON
path on the same rows in the same run, and the Redis bytes one object job holds.

Each size runs on a real SeaweedFS, Redis, API and one worker: POST /uploads, PUT the .npy, submit its
`input_url`, wait for the job, GET the result object. The inline baseline sends the same rows as JSON in
bulk submits of MAX_ROWS_PER_JOB-row jobs and reads every result. MB are the input's .npy bytes.
`--smoke` runs tiny sizes to check that every step works.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

from stack import RedisServer, free_port, start_api, start_worker, stop  # noqa: E402

from tests.support.seaweed import SeaweedServer  # noqa: E402

MODEL = str(ROOT / "models" / "iris.onnx")
ROW_BYTES = 16  # 4 float32 features
ROWS_PER_INLINE_JOB = 256  # MAX_ROWS_PER_JOB's default
INLINE_MB = 5  # the inline JSON baseline's size
BULK_JOBS = 20  # 20 x 256 rows of JSON: about 250 KB a request
SIZES_MB = {"full": (10, 200), "quick": (10, 50), "smoke": (1,)}


def rows_of(mb: int) -> np.ndarray:
    """`mb` MB of iris rows (float32, 16 bytes a row), the same for a size in every run."""
    return (np.random.default_rng(mb).random((mb * 1_000_000 // ROW_BYTES, 4), dtype=np.float32) * 7).astype(np.float32)


def wait_job(http: httpx.Client, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view: dict[str, Any] = http.get(f"/job/{job_id}", params={"wait": 10}, timeout=20).json()
        if view["status"] in ("completed", "failed"):
            return view
    raise RuntimeError(f"job {job_id} did not end in {timeout_s}s")


def object_run(http: httpx.Client, array: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Seconds from POST /uploads to the result object downloaded (presigned URLs: absolute, no token)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    started = time.perf_counter()
    grant = http.post("/uploads", timeout=30).json()
    http.put(grant["upload_url"], content=buffer.getvalue(), timeout=600).raise_for_status()
    job_id = http.post("/predict", json={"input_url": grant["input_url"]}, timeout=60).json()["job_id"]
    view = wait_job(http, job_id, 900)
    if view["status"] != "completed":
        raise RuntimeError(f"object job failed: {view['error']}")
    result = http.get(view["result_url"], timeout=600).content
    elapsed = time.perf_counter() - started
    assert len(np.load(io.BytesIO(result))["label"]) == len(array)
    return elapsed, view


def inline_run(http: httpx.Client, array: np.ndarray) -> float:
    """Seconds to submit the same rows as JSON jobs (bulk, BULK_JOBS a request: under MAX_BODY_BYTES) and read every result."""
    rows = array.tolist()
    jobs = [rows[i : i + ROWS_PER_INLINE_JOB] for i in range(0, len(rows), ROWS_PER_INLINE_JOB)]
    started = time.perf_counter()
    ids: list[str] = []
    for i in range(0, len(jobs), BULK_JOBS):
        items = [{"data": job} for job in jobs[i : i + BULK_JOBS]]
        ids += [item["job_id"] for item in http.post("/predict/batch", json={"items": items}, timeout=60).json()["items"]]
    for job_id in ids:
        if wait_job(http, job_id, 600)["status"] != "completed":
            raise RuntimeError("inline job failed")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 MB")
    parser.add_argument("--smoke", action="store_true", help="1 MB: checks that every step runs")
    args = parser.parse_args()
    sizes = SIZES_MB["smoke" if args.smoke else "quick" if args.quick else "full"]
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="asyncinfer-bench-objects-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis", appendfsync="everysec").start()
        store = SeaweedServer(workdir / "seaweed").start()
        port = free_port()
        env = {
            **os.environ, **store.env(), "REDIS_URL": server.url, "MODEL_PATH": MODEL,
            "PORT": str(port), "MAX_BATCH_SIZE": "4096", "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        api = start_api(env, workdir / "api.log")
        worker = start_worker(env, workdir / "worker.log")
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        client = redis.Redis.from_url(server.url)
        try:
            object_run(http, np.ones((1000, 4), np.float32))  # warm-up: the store grows its first volumes, S3 clients start
            # the inline baseline once, on the first size's rows (at most INLINE_MB: JSON is slow, and rates do not grow with size)
            inline_mb = min(sizes[0], INLINE_MB)
            inline_rate = inline_mb / inline_run(http, rows_of(sizes[0])[: inline_mb * 1_000_000 // ROW_BYTES])
            print(f"inline JSON: {inline_rate:.2f} MB/s on {inline_mb} MB", flush=True)
            for mb in sizes:
                object_s, view = object_run(http, rows_of(mb))
                job_bytes = int(client.memory_usage(f"asyncinfer:job:{view['job_id']}", samples=0) or 0)
                rows_out.append((mb, mb / object_s, inline_rate, job_bytes))
                print(f"{mb} MB: object path {object_s:.1f}s", flush=True)
        finally:
            http.close()
            stop(worker, 30)
            stop(api, 15)
            store.stop()
            server.stop()
    print(
        "\n| input | object path MB/s | inline JSON MB/s (the same rows, <= 5 MB) | ratio | Redis bytes of the object job's record |"
    )
    print("|---|---|---|---|---|")
    for mb, object_rate, inline_rate, job_bytes in rows_out:
        print(f"| {mb} MB .npy | {object_rate:.1f} | {inline_rate:.1f} | {object_rate / inline_rate:.1f}x | {job_bytes} |")


if __name__ == "__main__":
    main()

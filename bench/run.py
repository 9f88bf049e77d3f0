"""`make bench`: asyncinfer against the naive seed design, measured in the same run on the same Redis.

(a) end to end through HTTP: N jobs, 32 concurrent submitters plus pollers, 1 worker
    -> submit req/s, submit p50/p99, completed jobs/s
(b) worker drain: the queue pre-filled with 50,000 jobs, then one worker started -> jobs/s
(c) API and worker RSS after the end-to-end run.
Both systems get the same redis-server settings (AOF everysec), the same uvicorn settings (one process,
uvloop, httptools, no access log) and the same client (plain GET polling). Ours is also shown with
long polls, the way its clients are meant to wait. Prints a table; writes it to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

from stack import BIN, RedisServer, free_port, spawn, stop, wait_http  # noqa: E402

from jobqueue.keys import StoreKeys  # noqa: E402
from jobqueue.protocol import NewJob, enqueue_call  # noqa: E402
from jobqueue.protocol import lua_source as lua_script  # noqa: E402
from jobqueue.settings import Settings  # noqa: E402

MODEL = str(ROOT / "models" / "iris.onnx")
BODY = json.dumps({"data": [[5.9, 3.0, 4.2, 1.5]]}).encode()
POLL_INTERVAL_S = 0.01


@dataclass
class E2EResult:
    submit_rps: float
    p50_ms: float
    p99_ms: float
    completed_jps: float
    api_rss_mb: float = 0.0
    worker_rss_mb: float = 0.0


async def end_to_end(base: str, jobs: int, submitters: int, pollers: int, long_poll: bool) -> E2EResult:
    latencies: list[float] = []
    todo: asyncio.Queue[str] = asyncio.Queue()
    finished = asyncio.Event()
    state = {"completed": 0, "last_submit": 0.0, "last_done": 0.0}
    per = jobs // submitters
    total = per * submitters
    suffix = "?wait=10" if long_poll else ""
    connector = aiohttp.TCPConnector(limit=submitters + pollers)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json"}) as http:

        async def submitter(count: int) -> None:
            for _ in range(count):
                sent = time.perf_counter()
                async with http.post(f"{base}/predict", data=BODY) as response:
                    body = await response.json()
                    if response.status != 202:
                        raise RuntimeError(f"submit failed: {response.status} {body}")
                latencies.append(time.perf_counter() - sent)
                todo.put_nowait(body["job_id"])
            state["last_submit"] = time.perf_counter()

        async def poller() -> None:
            while True:
                job_id = await todo.get()
                async with http.get(f"{base}/job/{job_id}{suffix}") as response:
                    status = (await response.json())["status"]
                if status == "completed":
                    state["completed"] += 1
                    if state["completed"] == total:
                        state["last_done"] = time.perf_counter()
                        finished.set()
                elif status in ("pending", "processing"):
                    if not long_poll:
                        await asyncio.sleep(POLL_INTERVAL_S)
                    todo.put_nowait(job_id)
                else:
                    raise RuntimeError(f"job {job_id} ended {status}")

        started = time.perf_counter()
        poll_tasks = [asyncio.create_task(poller()) for _ in range(pollers)]
        await asyncio.gather(*(submitter(per) for _ in range(submitters)))
        await asyncio.wait_for(finished.wait(), 300)
        for task in poll_tasks:
            task.cancel()
    latencies.sort()
    return E2EResult(
        submit_rps=total / (state["last_submit"] - started),
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        completed_jps=total / (state["last_done"] - started),
    )


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


class System:
    """One system under test: how to start its API and worker and pre-fill its queue."""

    def __init__(self, name: str, redis_url: str, workdir: Path) -> None:
        self.name, self.redis_url, self.workdir = name, redis_url, workdir
        prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        self.settings = Settings(key_prefix=prefix, max_queue_length=0)
        self.keys = StoreKeys(prefix)
        # the naive design's one list; ours: the iris model's normal-priority list
        self.queue_name = f"{prefix}:queue" if name == "naive" else self.keys.model("iris").pending()
        self.env = dict(
            os.environ,
            REDIS_URL=redis_url,
            MODEL_PATH=MODEL,
            QUEUE_NAME=self.queue_name,
            KEY_PREFIX=prefix,
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(ROOT),
            MAX_QUEUE_LENGTH="0",
        )

    def argv(self, role: str) -> list[str]:
        if self.name == "naive":
            return [sys.executable, "-m", f"bench.naive.{'app' if role == 'api' else 'worker'}"]
        return [str(BIN / f"asyncinfer-{role}")]

    def start(self, role: str, **env: str):
        return spawn(self.argv(role), {**self.env, **env}, self.workdir / f"{self.name}-{role}.log")

    def prefill(self, n: int) -> str:
        """Fill the queue the way the system's own API would; returns the id of the last job."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        payload = BODY.decode()
        for start in range(0, n, 1000):
            chunk = ids[start : start + 1000]
            if self.name == "naive":
                pipe = client.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.set(f"job:{job_id}:status", "pending").set(f"job:{job_id}:input", payload).lpush(self.queue_name, job_id)
                pipe.execute()
            else:
                enqueue = client.register_script(lua_script("enqueue"))
                pipe = client.pipeline(transaction=False)
                for job_id in chunk:
                    call = enqueue_call(self.keys, self.settings, NewJob(job_id=job_id, model="iris", payload=payload))
                    enqueue(keys=call.keys, args=call.args, client=pipe)
                pipe.execute()
        client.close()
        return ids[-1]

    def finished(self, client: redis.Redis, last_id: str) -> bool:
        if self.name == "naive":
            return client.get(f"job:{last_id}:status") == "completed"
        return client.hget(self.keys.job(last_id), "status") == "completed" and not client.zcard(self.keys.model("iris").inflight)


def drain(system: System, n: int) -> float:
    """Jobs/s of one worker emptying a pre-filled queue (timed from its first job to its last)."""
    last_id = system.prefill(n)
    client = redis.Redis.from_url(system.redis_url, decode_responses=True)
    worker = system.start("worker")
    try:
        while client.llen(system.queue_name) >= n:
            time.sleep(0.002)
        started = time.perf_counter()
        while not system.finished(client, last_id):
            time.sleep(0.005)
        return n / (time.perf_counter() - started)
    finally:
        stop(worker, 30)
        client.close()


def e2e(system: System, jobs: int, long_poll: bool) -> E2EResult:
    port = free_port()
    api = system.start("api", PORT=str(port))
    worker = system.start("worker")
    try:
        wait_http(f"http://127.0.0.1:{port}/docs", proc=api)
        time.sleep(1.0)  # let the worker load its model
        result = asyncio.run(end_to_end(f"http://127.0.0.1:{port}", jobs, 32, 32, long_poll))
        result.api_rss_mb, result.worker_rss_mb = rss_mb(api.pid), rss_mb(worker.pid)
        return result
    finally:
        stop(api, 30)
        stop(worker, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--drain-jobs", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asyncinfer-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis", appendfsync="everysec").start()
        try:
            rows = {}
            for name in ("naive", "ours"):
                system = System(name, server.url, workdir)
                rows[name] = (e2e(system, args.jobs, long_poll=False), drain(system, args.drain_jobs))
                print(f"measured {name}", flush=True)
            ours_long_poll = e2e(System("ours", server.url, workdir), args.jobs, long_poll=True)
        finally:
            server.stop()
    naive, naive_drain = rows["naive"]
    ours, ours_drain = rows["ours"]
    lines = [
        f"asyncinfer bench: {args.jobs} jobs end to end (32 submitters + 32 pollers, 1 worker); drain of {args.drain_jobs} jobs by 1 worker",
        f"machine: {os.cpu_count()} cores; same redis-server (AOF everysec) for both",
        "",
        "| system | submit req/s | submit p50 ms | submit p99 ms | completed jobs/s | drain jobs/s | API RSS MB | worker RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r, d in (
        ("naive seed design", naive, naive_drain),
        ("asyncinfer", ours, ours_drain),
        ("asyncinfer, long-poll clients", ours_long_poll, None),
    ):
        drain_cell = f"{d:,.0f}" if d else "-"
        lines.append(
            f"| {label} | {r.submit_rps:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.completed_jps:,.0f} | {drain_cell} | {r.api_rss_mb:.0f} | {r.worker_rss_mb:.0f} |"
        )
    lines += [
        "",
        f"ratio asyncinfer / naive: end to end {ours.completed_jps / naive.completed_jps:.2f}x (long-poll clients "
        f"{ours_long_poll.completed_jps / naive.completed_jps:.2f}x), drain {ours_drain / naive_drain:.1f}x",
        "targets: end to end >= 3x naive and >= 1,500 jobs/s; drain >= 20,000 jobs/s; API RSS < 150 MB; worker RSS < 200 MB",
    ]
    report = "\n".join(lines)
    print(report)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(report + "\n")


if __name__ == "__main__":
    main()

"""`make bench-chaos`: 10,000 jobs through the API with 2 workers while one worker is SIGKILLed and
restarted every few seconds. Prints submitted, completed, lost (must be 0), duplicated runs and the
longest time from a kill until every job the killed worker held had completed elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

from stack import BIN, RedisServer, free_port, spawn, stop, wait_http  # noqa: E402

from jobqueue.keys import StoreKeys  # noqa: E402

BODY = json.dumps({"data": [[6.7, 3.0, 5.2, 2.3]]}).encode()


async def submit_all(base: str, jobs: int, concurrency: int) -> list[str]:
    accepted: list[str] = []
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:

        async def submitter(count: int) -> None:
            for _ in range(count):
                while True:
                    async with http.post(f"{base}/predict", data=BODY) as response:
                        if response.status == 202:
                            accepted.append((await response.json())["job_id"])
                            break
                    await asyncio.sleep(0.05)  # 429/503: back off as Retry-After asks

        await asyncio.gather(*(submitter(jobs // concurrency) for _ in range(concurrency)))
    return accepted


def statuses(client: redis.Redis, keys: StoreKeys, ids: list[str]) -> list[tuple[str | None, int]]:
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "status", "attempts")
    return [(status, int(attempts or 0)) for status, attempts in pipe.execute()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between SIGKILLs")
    args = parser.parse_args()
    settings = {"WORKER_TTL_SECONDS": "5", "RECOVERY_INTERVAL_SECONDS": "1", "MAX_ATTEMPTS": "10"}
    keys = StoreKeys("chaos")
    model_keys = keys.model("iris")
    with tempfile.TemporaryDirectory(prefix="asyncinfer-chaos-") as tmp:
        work = Path(tmp)
        server = RedisServer(work / "redis", appendfsync="everysec").start()
        env = dict(os.environ, REDIS_URL=server.url, MODEL_PATH=str(ROOT / "models" / "iris.onnx"), KEY_PREFIX=keys.prefix,
                   PORT=str(free_port()), LOG_LEVEL="WARNING", MAX_BATCH_SIZE="32", **settings)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        api = spawn([str(BIN / "asyncinfer-api")], env, work / "api.log")
        workers = [spawn([str(BIN / "asyncinfer-worker")], env, work / f"worker-{i}.log") for i in range(2)]
        wait_http(f"http://127.0.0.1:{env['PORT']}/readyz", proc=api)
        kills: list[tuple[float, list[str]]] = []
        submitting, measured = threading.Event(), threading.Event()
        submitting.set()

        def chaos() -> None:
            victim = 0
            while submitting.is_set():
                time.sleep(args.kill_every)
                proc = workers[victim]
                proc.kill()
                proc.wait()
                killed_at = time.monotonic()
                held = [i for key in client.keys(model_keys.processing(f"*-{proc.pid}-*")) for i in client.lrange(key, 0, -1)]
                kills.append((killed_at, held))
                workers[victim] = spawn([str(BIN / "asyncinfer-worker")], env, work / f"worker-{victim}.log")
                victim = 1 - victim
            measured.wait()  # the workers it started die with this thread (PDEATHSIG): outlive the run

        chaos_thread = threading.Thread(target=chaos)
        chaos_thread.start()
        started = time.monotonic()
        accepted = asyncio.run(submit_all(f"http://127.0.0.1:{env['PORT']}", args.jobs, 32))
        submitting.clear()

        recovered_at: dict[int, float] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = time.monotonic()
            for n, (_, held) in enumerate(kills):
                if n not in recovered_at and all(s == "completed" for s, _ in statuses(client, keys, held)):
                    recovered_at[n] = now
            if len(recovered_at) == len(kills) and all(s == "completed" for s, _ in statuses(client, keys, accepted)):
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        final = statuses(client, keys, accepted)
        for job_id, (status, _) in zip(accepted, final, strict=True):
            if status != "completed":  # say where a job that did not finish is, to debug it
                where = [key for key in client.keys(keys.prefix + ":*") if client.type(key) == "list" and job_id in client.lrange(key, 0, -1)]
                print(f"not completed: {job_id} {client.hgetall(keys.job(job_id))} in lists {where}"
                      f" inflight={client.zscore(model_keys.inflight, job_id)} workers={client.zrange(model_keys.workers, 0, -1, withscores=True)}")
        for proc in (api, *workers):
            stop(proc, 30)
        measured.set()
        chaos_thread.join()
        server.stop()
        if any(status != "completed" for status, _ in final):
            for log in sorted(work.glob("*.log")):
                print(f"== {log.name}\n{log.read_text()[-1500:]}")

    completed = sum(1 for s, _ in final if s == "completed")
    duplicated = sum(max(a - 1, 0) for _, a in final)
    recoveries = [recovered_at[n] - k for n, (k, held) in enumerate(kills) if n in recovered_at and held]
    held_total = sum(len(held) for _, held in kills)
    report = "\n".join([
        f"asyncinfer chaos bench: {args.jobs} jobs via the API, 2 workers, one SIGKILLed and restarted every {args.kill_every:g}s",
        f"settings: {' '.join(f'{k}={v}' for k, v in settings.items())} (recovery bound = TTL + interval = 6s)",
        "",
        "| submitted | completed | lost | worker kills | jobs held at kills | duplicated runs | max recovery s | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(accepted)} | {completed} | {len(accepted) - completed} | {len(kills)} | {held_total} | {duplicated} "
        f"| {max(recoveries, default=0):.1f} | {elapsed:.1f} |",
    ])
    print(report)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "chaos.md").write_text(report + "\n")
    sys.exit(0 if completed == len(accepted) else 1)


if __name__ == "__main__":
    main()

"""`make bench`: every performance figure of asyncinfer beside the naive seed design, measured in one run.

One redis-server (AOF everysec) serves both systems, each under its own key prefix. The load never
changes between them: 32 submitters + 32 pollers over HTTP, 1 worker, the iris model.

  e2e poll       submit + plain GET polling (10 ms between polls)      naive and ours     -> target 1: >= 3x
  e2e wait       32 clients, `Prefer: wait=10` submit, done on the 200  ours               -> target 2: >= 5x naive e2e
  e2e long poll  submit + `GET /job/{id}?wait=10`; wake-up = arrival - finished_at (same clock)    -> target 7
  wake-up idle   1 client: submit, long-poll; also a raw Pub/Sub subscriber on the events channel
  bulk           /predict/batch with 100 items, /jobs/lookup with 100 ids, 8 clients       -> target 4
  drain          the bulk-submitted jobs drained by 1 worker, from its start-up log line    -> target 3
                 + Redis INFO commandstats usec per job, used_memory bytes per completed job -> target 6
  baseline       the pre-hardening worker (200d8de, bench/baseline.py) drains the same number of jobs,
                 submitted over HTTP to its own API: jobs/s, worker and Redis CPU per job beside today's
  cold start     exec -> start-up log line (naive: exec -> its first BRPOP), median of 5    -> target 5
  MLP            256->1024->1024->10 (bench/mlp.py): worker rows/s vs ONNX Runtime alone at batch 128,
                 call times per batch size -> MAX_BATCH_WAIT_MS guidance
  A/B            bench/serve.py: uvicorn vs granian, hot path on/off, on e2e poll and e2e wait
  RSS            API and worker after their runs                                            -> target 6
  CLI vs SDK     `asyncinfer run` and `Client.map` on the same 20,000 inputs (bench/cli_run.py): both rates, ratio
  replica acks   e2e poll with REDIS_MIN_REPLICAS_ACK=1 vs 0, one primary + one replica: submit p50/p99, jobs/s
  tracing        e2e `Prefer: wait` jobs/s: the build before tracing (its commit, built as the baseline is), today
                 with tracing off (-> within 2%), today with tracing on at 10% sampling to an OTLP sink

`--quick` shrinks every count; `--profile` also records py-spy profiles (separate runs, so the headline
numbers carry no sampling cost) into bench/results/profiles/. Writes bench/results/latest.md. `--worker`
runs only the worker's figures (drain, baseline, cold start, MLP) into bench/results/worker.md;
`--replicas` only the replica-ack comparison (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import redis
import redis.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

from stack import BIN, RedisServer, free_port, spawn, stop  # noqa: E402

from bench import baseline, cli_run, mlp  # noqa: E402
from jobqueue.keys import StoreKeys  # noqa: E402

MODEL = str(ROOT / "models" / "iris.onnx")
ROW = [[5.9, 3.0, 4.2, 1.5]]
BODY = json.dumps({"data": ROW}).encode()
BULK_ITEMS = 100
BULK_BODY = json.dumps({"items": [{"data": ROW}] * BULK_ITEMS}).encode()
POLL_INTERVAL_S = 0.01
CLIENTS = 32
BULK_CLIENTS = 8
READY_LINE = re.compile(r"worker \S+ serving ")  # today's "serving model iris", 200d8de's "serving iris"
# Commands the worker sends itself (EVALSHA's usec already includes the commands its script runs).
WORKER_COMMANDS = ("evalsha", "eval", "blmove", "lrange", "multi", "exec", "zrem", "del", "script|load", "client|setinfo")
NAIVE_WORKER_COMMANDS = ("brpop", "set", "get", "client|setinfo")
RESULTS = ROOT / "bench" / "results"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def iso_ms(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp() * 1000


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children; for this process (the load generator)
    only its own, not the servers it started."""
    proc = psutil.Process(pid)
    if pid == os.getpid():
        return sum(proc.cpu_times()[:2])
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


@contextmanager
def cpu_meter(**pids: int) -> Iterator[dict[str, float]]:
    """CPU seconds each named process used while the block ran (filled in on exit)."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    used: dict[str, float] = {}
    try:
        yield used
    finally:
        used.update({name: cpu_s(pid) - before[name] for name, pid in pids.items()})


def metered_e2e(base: str, jobs: int, mode: str, api: int, worker: int, redis_pid: int) -> Load:
    """end_to_end with the CPU each process spent on it: API per request, worker and Redis per job."""
    with cpu_meter(api=api, worker=worker, redis=redis_pid, client=os.getpid()) as used:
        load = asyncio.run(end_to_end(base, jobs, mode))
    load.client_cpu_us = used["client"] / load.jobs * 1e6
    load.api_cpu_us = used["api"] / load.requests * 1e6
    load.worker_cpu_us = used["worker"] / load.jobs * 1e6
    load.redis_cpu_us = used["redis"] / load.jobs * 1e6
    return load


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (granian serves from a child process)."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


# -- HTTP load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """One end-to-end run's figures; times in ms."""

    jobs: int = 0
    submit_rps: float = 0.0
    submit_ms: list[float] = field(default_factory=list)
    completed_jps: float = 0.0
    wake_ms: list[float] = field(default_factory=list)  # long poll: response arrival - finished_at
    requests: int = 0  # HTTP requests sent (submits + polls)
    api_cpu_us: float = 0.0  # API process CPU per HTTP request
    redis_cpu_us: float = 0.0  # redis-server CPU per job
    worker_cpu_us: float = 0.0  # worker CPU per job
    client_cpu_us: float = 0.0  # the load generator's (this process's) CPU per job
    job_ids: list[str] = field(default_factory=list)  # every job submitted (bench/cluster.py counts them per shard)


async def end_to_end(base: str, jobs: int, mode: str) -> Load:
    """mode: "poll" (GET every 10 ms), "long" (GET ?wait=10), "wait" (Prefer: wait=10 on the submit)."""
    load = Load()
    todo: asyncio.Queue[str] = asyncio.Queue()
    finished = asyncio.Event()
    per = jobs // CLIENTS
    total = load.jobs = per * CLIENTS
    state = {"completed": 0, "last_submit": 0.0, "last_done": 0.0}
    suffix = "?wait=10" if mode == "long" else ""

    def done() -> None:
        state["completed"] += 1
        if state["completed"] == total:
            state["last_done"] = time.perf_counter()
            finished.set()

    connector = aiohttp.TCPConnector(limit=2 * CLIENTS)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json"}) as http:

        async def submitter(count: int) -> None:
            headers = {"Prefer": "wait=10"} if mode == "wait" else {}
            for _ in range(count):
                sent = time.perf_counter()
                load.requests += 1
                async with http.post(f"{base}/predict", data=BODY, headers=headers) as response:
                    body = await response.json()
                    load.job_ids.append(body.get("job_id", ""))
                    expected = 200 if mode == "wait" else 202
                    if response.status != expected:
                        raise RuntimeError(f"submit answered {response.status} {body}")
                load.submit_ms.append((time.perf_counter() - sent) * 1000)
                if mode == "wait":
                    if body["status"] != "completed":
                        raise RuntimeError(f"job {body['job_id']} ended {body['status']}")
                    done()
                else:
                    todo.put_nowait(body["job_id"])
            state["last_submit"] = time.perf_counter()

        async def poller() -> None:
            while True:
                job_id = await todo.get()
                sent_ms = time.time() * 1000
                load.requests += 1
                async with http.get(f"{base}/job/{job_id}{suffix}") as response:
                    view = await response.json()
                arrived_ms = time.time() * 1000
                if view["status"] == "completed":
                    if mode == "long" and view.get("finished_at"):
                        finished_ms = iso_ms(view["finished_at"])
                        if sent_ms < finished_ms:  # the poll was waiting when the job ended
                            load.wake_ms.append(arrived_ms - finished_ms)
                    done()
                elif view["status"] in ("pending", "processing"):
                    if mode == "poll":
                        await asyncio.sleep(POLL_INTERVAL_S)
                    todo.put_nowait(job_id)
                else:
                    raise RuntimeError(f"job {job_id} ended {view['status']}")

        started = time.perf_counter()
        pollers = [asyncio.create_task(poller()) for _ in range(CLIENTS if mode != "wait" else 0)]
        await asyncio.gather(*(submitter(per) for _ in range(CLIENTS)))
        await asyncio.wait_for(finished.wait(), 300)
        for task in pollers:
            task.cancel()
    load.submit_rps = total / (state["last_submit"] - started)
    load.completed_jps = total / (state["last_done"] - started)
    return load


def pooled(loads: list[Load]) -> Load:
    """Rounds of one load as one: median throughputs, latency samples pooled (for p50/p99)."""
    return Load(
        requests=sum(x.requests for x in loads),
        api_cpu_us=statistics.median(x.api_cpu_us for x in loads),
        worker_cpu_us=statistics.median(x.worker_cpu_us for x in loads),
        redis_cpu_us=statistics.median(x.redis_cpu_us for x in loads),
        client_cpu_us=statistics.median(x.client_cpu_us for x in loads),
        jobs=sum(x.jobs for x in loads),
        submit_rps=statistics.median(x.submit_rps for x in loads),
        submit_ms=[v for x in loads for v in x.submit_ms],
        completed_jps=statistics.median(x.completed_jps for x in loads),
        wake_ms=[v for x in loads for v in x.wake_ms],
    )


async def idle_wake_up(base: str, redis_url: str, channel: str, jobs: int) -> tuple[list[float], list[float]]:
    """One client at a time: submit, then long-poll. Returns (HTTP long-poll wake-up ms, raw Pub/Sub
    'ended' arrival ms), each relative to the job's finished_at."""
    http_ms: list[float] = []
    arrivals: dict[str, float] = {}
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)

    async def listen() -> None:
        async for message in pubsub.listen():
            now = time.time() * 1000
            kind, *ids = str(message["data"]).split()
            if kind == "ended":
                for job_id in ids:
                    arrivals[job_id] = now

    listener = asyncio.create_task(listen())
    finished: dict[str, float] = {}
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:
        for _ in range(jobs):
            async with http.post(f"{base}/predict", data=BODY) as response:
                job_id = (await response.json())["job_id"]
            sent_ms = time.time() * 1000
            async with http.get(f"{base}/job/{job_id}?wait=10") as response:
                view = await response.json()
            arrived_ms = time.time() * 1000
            finished[job_id] = iso_ms(view["finished_at"])
            if sent_ms < finished[job_id]:
                http_ms.append(arrived_ms - finished[job_id])
    await asyncio.sleep(0.1)
    listener.cancel()
    await pubsub.aclose()
    await client.aclose()
    raw = [arrivals[j] - f for j, f in finished.items() if j in arrivals]
    return http_ms, raw


async def bulk(base: str, requests: int) -> tuple[float, list[str]]:
    """POST /predict/batch with 100 items from BULK_CLIENTS clients; (jobs/s, ids)."""
    ids: list[str] = []
    counter = itertools.count()

    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:

        async def client() -> None:
            while next(counter) < requests:
                async with http.post(f"{base}/predict/batch", data=BULK_BODY) as response:
                    body = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"bulk submit answered {response.status} {body}")
                ids.extend(item["job_id"] for item in body["items"])

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(BULK_CLIENTS)))
        elapsed = time.perf_counter() - started
    return len(ids) / elapsed, ids


async def lookup(base: str, ids: list[str]) -> float:
    """POST /jobs/lookup with 100 ids from BULK_CLIENTS clients; ids/s."""
    chunks = iter([ids[i : i + BULK_ITEMS] for i in range(0, len(ids), BULK_ITEMS)])
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:

        async def client() -> None:
            for chunk in chunks:
                async with http.post(f"{base}/jobs/lookup", data=json.dumps({"ids": chunk})) as response:
                    body = await response.json()
                    if response.status != 200 or any(item.get("found") is False for item in body["items"]):
                        raise RuntimeError(f"lookup answered {response.status}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(BULK_CLIENTS)))
        return len(ids) / (time.perf_counter() - started)


async def single_path(base: str, jobs: int) -> tuple[float, float, list[str]]:
    """The single-job path with no worker: 32 clients POST /predict, then GET /job/{id}; (submit/s, get/s)."""
    ids: list[str] = []
    per = jobs // CLIENTS
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:

        async def submitter() -> None:
            for _ in range(per):
                async with http.post(f"{base}/predict", data=BODY) as response:
                    ids.append((await response.json())["job_id"])

        async def reader(mine: list[str]) -> None:
            for job_id in mine:
                async with http.get(f"{base}/job/{job_id}") as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(CLIENTS)))
        submit_rps = len(ids) / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(reader(ids[i::CLIENTS]) for i in range(CLIENTS)))
        get_rps = len(ids) / (time.perf_counter() - started)
    return submit_rps, get_rps, ids


# -- processes ------------------------------------------------------------------------------------


class LineWatcher:
    """Reads a child's output on a thread, stamping the wall time a line matching READY_LINE arrived."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.ready_at: float | None = None  # time.time()
        self.ready = threading.Event()
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(log_path,), daemon=True)
        self._thread.start()

    def _read(self, log_path: Path) -> None:
        assert self.proc.stdout is not None
        with open(log_path, "a") as log:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                if self.ready_at is None and READY_LINE.search(line):
                    self.ready_at = time.time()
                    self.ready.set()
                self.lines.append(line)
                log.write(line)

    def wait_ready(self, timeout_s: float = 60) -> float:
        if not self.ready.wait(timeout_s):
            raise RuntimeError("worker never logged its start-up line:\n" + "".join(self.lines[-20:]))
        assert self.ready_at is not None
        return self.ready_at


def spawn_piped(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


class System:
    """One system under test: its env, key prefix and how to start its API and worker."""

    def __init__(
        self, name: str, redis_url: str, workdir: Path, tag: str = "", model_path: str = MODEL,
        baseline_tree: Path | None = None,
    ) -> None:  # fmt: skip
        self.name, self.redis_url, self.workdir = name, redis_url, workdir
        self.baseline_tree = baseline_tree  # the pre-hardening code (bench/baseline.py): its own key layout
        self.prefix = f"bench-{name}{tag}-{uuid.uuid4().hex[:6]}"
        self.keys = StoreKeys(self.prefix)
        self.model_name = Path(model_path).stem
        old_layout = name == "naive" or baseline_tree is not None
        self.queue_name = f"{self.prefix}:queue" if old_layout else self.keys.model(self.model_name).pending()
        self.stats_key = f"{self.queue_name}:stats" if baseline_tree else self.keys.model(self.model_name).stats
        self.env = dict(
            os.environ, REDIS_URL=redis_url, MODEL_PATH=model_path, QUEUE_NAME=self.queue_name, KEY_PREFIX=self.prefix,
            LOG_LEVEL="WARNING", PYTHONPATH=str(baseline_tree or ROOT), MAX_QUEUE_LENGTH="0",
        )  # fmt: skip

    def job_key(self, job_id: str) -> str:
        return f"{self.queue_name}:job:{job_id}" if self.baseline_tree else self.keys.job(job_id)

    def api_argv(self, server: str | None = None, hotpath: bool = True) -> list[str]:
        if self.baseline_tree:
            return baseline.argv(self.baseline_tree, "api")
        if self.name == "naive":
            return [sys.executable, "-m", "bench.naive.app"]
        if server is None:
            return [str(BIN / "asyncinfer-api")]
        flags = [] if hotpath else ["--no-hotpath"]
        return [sys.executable, "-m", "bench.serve", "--server", server, *flags]

    def worker_argv(self) -> list[str]:
        if self.baseline_tree:
            return baseline.argv(self.baseline_tree, "worker")
        if self.name == "naive":
            return [sys.executable, "-m", "bench.naive.worker"]
        return [str(BIN / "asyncinfer-worker")]

    def start_api(self, port: int, label: str = "api", **kwargs: Any) -> subprocess.Popen:
        proc = spawn(self.api_argv(**kwargs), {**self.env, "PORT": str(port)}, self.workdir / f"{self.name}-{label}.log")
        _wait_listening(port, proc)
        return proc

    def start_worker(self, label: str = "worker") -> tuple[subprocess.Popen, LineWatcher]:
        proc = spawn_piped(self.worker_argv(), {**self.env, "LOG_LEVEL": "INFO"})
        return proc, LineWatcher(proc, self.workdir / f"{self.name}-{label}.log")


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Any HTTP answer on /job/x (the naive app has no /readyz); a 404 means the app serves."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/job/x", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"API exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"API on {port} not ready")
        time.sleep(0.1)


@contextmanager
def running(*procs: subprocess.Popen) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            stop(proc, 30)


@contextmanager
def profiled(pid: int, out: Path | None, rate: int = 250) -> Iterator[None]:
    """py-spy record of `pid` while the block runs (raw collapsed stacks), when `out` is given."""
    if out is None:
        yield
        return
    spy = subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # attached before the load starts
    try:
        yield
    finally:
        stop(spy, 30, sig=2)  # SIGINT: py-spy writes the file and exits


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Inclusive and self share of samples per function from py-spy's collapsed stacks."""
    if not raw.exists():
        return f"(no profile at {raw.name})"
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return "(empty profile)"
    lines = [f"{total} samples", "", "inclusive %  self %  function"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / total:10.1f}  {100 * own[frame] / total:6.1f}  {frame}")
    lines += ["", "top self time:", "self %  function"]
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / total:6.1f}  {frame}")
    return "\n".join(lines)


# -- Redis figures --------------------------------------------------------------------------------


def command_usec(client: redis.Redis, commands: tuple[str, ...]) -> tuple[float, dict[str, tuple[int, int]]]:
    """(sum of usec of `commands`, every command's (calls, usec)) from INFO commandstats."""
    stats = {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in client.info("commandstats").items()}
    return sum(stats[c][1] for c in commands if c in stats), stats


def settle_aof(client: redis.Redis) -> None:
    """Run an AOF rewrite now and wait for it, so that no automatic rewrite (a fork writing the whole
    dataset, on these same two cores) lands inside the drain being measured. Both systems get this."""
    if int(client.info("persistence")["aof_rewrite_in_progress"]) == 0:
        client.bgrewriteaof()
    time.sleep(0.05)
    while int(client.info("persistence")["aof_rewrite_in_progress"]):
        time.sleep(0.05)


def prefill_ours(system: System, client: redis.Redis, n: int, bodies: list[str] | None = None) -> list[str]:
    """Jobs as the API's enqueue script writes them (inputs checked and kept as the API keeps them),
    pipelined (for the MLP's drain, where the HTTP side does not matter); `bodies`: one per job, else the
    iris row."""
    from jobqueue.job_input import checked_payload
    from jobqueue.model_signature import read_signature
    from jobqueue.protocol import NewJob, enqueue_call, lua_source
    from jobqueue.settings import Settings

    settings = Settings(key_prefix=system.prefix, max_queue_length=0)
    signature = read_signature(system.env["MODEL_PATH"])
    enqueue = client.register_script(lua_source("enqueue"))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for index, job_id in enumerate(ids[start : start + 1000], start):
            body = bodies[index] if bodies else BODY.decode()
            payload = checked_payload(json.loads(body)["data"], signature, settings.max_rows_per_job, body)
            call = enqueue_call(system.keys, settings, NewJob(job_id=job_id, model=system.model_name, payload=payload))
            enqueue(keys=call.keys, args=call.args, client=pipe)
        pipe.execute()
    return ids


def prefill_naive(client: redis.Redis, queue: str, n: int) -> list[str]:
    """The naive API's three writes per job, pipelined (its own API is far slower than its worker)."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    payload = BODY.decode()
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[start : start + 1000]:
            pipe.set(f"job:{job_id}:status", "pending").set(f"job:{job_id}:input", payload).lpush(queue, job_id)
        pipe.execute()
    return ids


@dataclass
class Drain:
    jobs: int
    jps: float
    usec_per_job: float
    bytes_per_job: float
    commands: dict[str, tuple[int, int]]
    worker_rss_mb: float = 0.0
    worker_cpu_us: float = 0.0  # per job
    redis_cpu_us: float = 0.0  # per job


def drain_ours(
    system: System, client: redis.Redis, ids: list[str], used_before: int, profile: Path | None, redis_pid: int
) -> Drain:
    """Drain pre-filled jobs with one worker; jobs/s counted from its start-up log line to the last finished_at."""
    stats_key = system.stats_key
    done_before = int(client.hget(stats_key, "completed") or 0)
    settle_aof(client)
    client.config_resetstat()
    worker, watcher = system.start_worker("drain-worker")
    with running(worker):
        ready = watcher.wait_ready()
        with profiled(worker.pid, profile), cpu_meter(worker=worker.pid, redis=redis_pid) as used:
            while int(client.hget(stats_key, "completed") or 0) - done_before < len(ids):
                if worker.poll() is not None:
                    raise RuntimeError("worker exited during the drain")
                time.sleep(0.02)
        usec, commands = command_usec(client, WORKER_COMMANDS)
        rss = tree_rss_mb(worker.pid)
    last = 0
    for start in range(0, len(ids), 5000):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[start : start + 5000]:
            pipe.hget(system.job_key(job_id), "finished_at")
        last = max(last, *(int(v) for v in pipe.execute()))
    used_after = int(client.info("memory")["used_memory"])
    n = len(ids)
    return Drain(n, n / ((last - ready * 1000) / 1000), usec / n, (used_after - used_before) / n, commands, rss,
                 used["worker"] / n * 1e6, used["redis"] / n * 1e6)  # fmt: skip


def drain_naive(system: System, client: redis.Redis, n: int, redis_pid: int) -> Drain:
    """The naive worker has no start-up line: timed from its first BRPOP taking a job (kinder to it)."""
    used_before = int(client.info("memory")["used_memory"])
    ids = prefill_naive(client, system.queue_name, n)
    settle_aof(client)
    client.config_resetstat()
    worker, _ = system.start_worker("drain-worker")
    polls = 0
    with running(worker):
        while client.llen(system.queue_name) >= n:
            time.sleep(0.001)
        started = time.perf_counter()
        with cpu_meter(worker=worker.pid, redis=redis_pid) as used:
            while client.llen(system.queue_name) > 0:
                time.sleep(0.02)
            while client.get(f"job:{ids[0]}:status") != "completed":  # LPUSH + BRPOP: the first id is the last out
                polls += 1
                time.sleep(0.002)
        elapsed = time.perf_counter() - started
        usec, commands = command_usec(client, NAIVE_WORKER_COMMANDS)
        rss = tree_rss_mb(worker.pid)
    calls, get_usec = commands.get("get", (1, 0))
    usec -= get_usec * (polls + 1) / max(calls, 1)  # our own completion polls
    used_after = int(client.info("memory")["used_memory"])
    return Drain(
        n, n / elapsed, usec / n, (used_after - used_before) / n, commands, rss, used["worker"] / n * 1e6, used["redis"] / n * 1e6
    )


def drain_baseline(tree: Path, redis_url: str, workdir: Path, client: redis.Redis, n: int, redis_pid: int) -> Drain:
    """The pre-hardening worker (bench/baseline.py) draining n iris jobs submitted to its own API over
    HTTP, measured exactly as today's worker is (from its start-up line to the last finished_at)."""
    system = System("ours", redis_url, workdir, "-baseline", baseline_tree=tree)
    port = free_port()
    with running(system.start_api(port, "baseline-api")):
        ids = asyncio.run(baseline.submit(f"http://127.0.0.1:{port}", BODY, n))
    return drain_ours(system, client, ids, int(client.info("memory")["used_memory"]), None, redis_pid)


@dataclass
class ComputeBound:
    """The MLP: ONNX Runtime alone before and after the worker's drain, and that drain."""

    probes: list[mlp.Probe]
    drain: Drain

    @property
    def runtime_rows_per_s(self) -> float:
        return statistics.mean(p.rows_per_s for p in self.probes)


def compute_bound(redis_url: str, workdir: Path, client: redis.Redis, sizes: Sizes, redis_pid: int) -> ComputeBound:
    """Worker throughput on a model whose call costs milliseconds, against ONNX Runtime's own at the
    same batch size (MLP_BATCH), measured around it so that a burst from another tenant shows in both."""
    path = mlp.build(workdir / "mlp.onnx")
    system = System("ours", redis_url, workdir, "-mlp", model_path=str(path))
    system.env["MAX_BATCH_SIZE"] = str(MLP_BATCH)
    bodies = [json.dumps({"data": [row]}) for row in mlp.rows(sizes.mlp_jobs)]
    probes = [mlp.probe(path, MLP_BATCH, sizes.mlp_probe_s)]
    ids = prefill_ours(system, client, sizes.mlp_jobs, bodies)
    drain = drain_ours(system, client, ids, 0, None, redis_pid)
    probes.append(mlp.probe(path, MLP_BATCH, sizes.mlp_probe_s))
    return ComputeBound(probes, drain)


# -- start-up -------------------------------------------------------------------------------------


def compile_sources(python: str = sys.executable, tree: Path = ROOT) -> None:
    """Bytecode for the code both systems start from, written once, as an image's `pip install` does: under
    PYTHONDONTWRITEBYTECODE=1 a source tree is otherwise compiled again at every start (about a sixth of
    a worker's start-up instructions), a cost no deployed worker pays."""
    packages = [str(tree / name) for name in ("jobqueue", "worker", "bench/naive") if (tree / name).is_dir()]
    subprocess.run([python, "-m", "compileall", "-q", *packages], check=True)


def cold_start_ours(system: System, starts: int) -> list[float]:
    compile_sources()
    times = []
    for _ in range(starts):
        t0 = time.time()
        proc, watcher = system.start_worker("cold-start")
        with running(proc):
            times.append(watcher.wait_ready() - t0)
    return times


def cold_start_naive(system: System, client: redis.Redis, starts: int) -> list[float]:
    """exec -> the naive worker's first BRPOP (it connects to Redis only for that call)."""
    compile_sources()
    times = []
    for _ in range(starts):
        t0 = time.time()
        proc = spawn(system.worker_argv(), system.env, system.workdir / "naive-cold-start.log")
        with running(proc):
            while not any(c.get("cmd") == "brpop" for c in client.client_list()):
                if time.time() - t0 > 60:
                    raise RuntimeError("naive worker never blocked on BRPOP")
                time.sleep(0.001)
            times.append(time.time() - t0)
    return times


def import_time(env: dict[str, str], log_path: Path, python: str = sys.executable) -> list[tuple[int, int, str]]:
    """`python -X importtime` of the worker's start-up (until its ready line) from the tree on env's
    PYTHONPATH; (self us, cumulative us, module) for the top-level imports, largest cumulative first."""
    code = "import sys; sys.argv = ['asyncinfer-worker']; from worker.main import run; run()"
    proc = spawn_piped([python, "-P", "-X", "importtime", "-c", code], {**env, "LOG_LEVEL": "INFO"})
    watcher = LineWatcher(proc, log_path)
    with running(proc):
        watcher.wait_ready()
    rows = []
    for line in watcher.lines:
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            rows.append((int(match[1]), int(match[2]), len(match[3]), match[4]))
    # package roots (numpy, onnx, pydantic_settings, ...) wherever they are first imported, and our modules
    top = [(s, c, name) for s, c, _, name in rows if "." not in name or name.startswith(("worker.", "jobqueue."))]
    return sorted(top, key=lambda r: -r[1])


# -- replica acks (issue #24) ----------------------------------------------------------------------


def replica_ack_cost(sizes: Sizes, workdir: Path, step: Any) -> dict[str, Load]:
    """e2e poll with REDIS_MIN_REPLICAS_ACK=1 against 0 on the same primary with one replica (AOF on
    both): both stacks up at once, alternating round by round, so only the WAIT differs."""
    primary = RedisServer(workdir / "ack-primary", appendfsync="everysec").start(workdir / "ack-primary.log")
    replica = RedisServer(workdir / "ack-replica", extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.start(workdir / "ack-replica.log")
    loads: dict[str, list[Load]] = {"0": [], "1": []}
    try:
        client = redis.Redis.from_url(primary.url, decode_responses=True)
        while client.info("replication")["connected_slaves"] < 1:
            time.sleep(0.05)
        systems = {ack: System("ours", primary.url, workdir, f"-ack{ack}") for ack in loads}
        workers = {}
        for ack, system in systems.items():  # workers first: they load while the APIs start
            system.env["REDIS_MIN_REPLICAS_ACK"] = ack
            workers[ack] = system.start_worker(f"ack{ack}-worker")
        stacks = []
        for ack, system in systems.items():
            port = free_port()
            api = system.start_api(port, f"ack{ack}-api")
            stacks.append((ack, f"http://127.0.0.1:{port}", api, *workers[ack]))
        with running(*(proc for stack in stacks for proc in stack[2:4])):
            for *_, watcher in stacks:
                watcher.wait_ready()
            for n in range(max(sizes.rounds, ACK_ROUNDS_MIN)):
                for ack, base, api, worker, _ in stacks:
                    assert primary.proc is not None
                    loads[ack].append(metered_e2e(base, sizes.jobs, "poll", api.pid, worker.pid, primary.proc.pid))
                step(f"replica acks round {n + 1}: REDIS_MIN_REPLICAS_ACK=0, =1")
        client.close()
    finally:
        replica.stop()
        primary.stop()
    return {ack: pooled(rounds) for ack, rounds in loads.items()}


def replica_ack_lines(loads: dict[str, Load]) -> list[str]:
    off, on = loads["0"], loads["1"]
    rows = [
        ("REDIS_MIN_REPLICAS_ACK=0", off),
        ("REDIS_MIN_REPLICAS_ACK=1", on),
    ]
    return [
        "",
        "Replica acks (issue #24): e2e poll on one primary with one replica; =1 answers a submit, and shows an",
        "end, only once the replica holds it (Redis WAIT, one per group of concurrent requests):",
        "",
        "| setting | submit p50 ms | submit p99 ms | e2e jobs/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {label} | {pct(load.submit_ms, 0.5):.2f} | {pct(load.submit_ms, 0.99):.2f} | {fmt(load.completed_jps)} |"
            for label, load in rows
        ),
        f"| ratio =1 / =0 | {pct(on.submit_ms, 0.5) / pct(off.submit_ms, 0.5):.2f}x "
        f"| {pct(on.submit_ms, 0.99) / pct(off.submit_ms, 0.99):.2f}x | {on.completed_jps / off.completed_jps:.2f}x |",
    ]


# -- tracing: off against the build without it, and on at 10% sampling ----------------------------

TRACING_SAMPLED = "0.1"
TRACING_TOLERANCE = 0.02  # tracing off may cost at most this against the build without it
TRACING_MIN_ROUNDS = 5  # a 2% comparison on a shared machine needs the median of several interleaved rounds


def pre_tracing_commit() -> str | None:
    """The commit before tracing came in (the parent of the one that added jobqueue/tracing.py); None
    when this clone's history lacks it (a shallow clone, or tracing not committed yet)."""
    log = ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--", "jobqueue/tracing.py"]
    added = subprocess.run(log, capture_output=True, text=True, check=False).stdout.split()
    if not added:
        return None
    parent = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", f"{added[-1]}^"], capture_output=True, text=True)
    return parent.stdout.strip() or None


class OtlpSink:
    """An OTLP/HTTP endpoint that takes every export and keeps only the count (an empty protobuf reply
    is a valid ExportTraceServiceResponse): the collector of the tracing-on runs."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.exports = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class TracingAB:
    commit: str | None  # the build before tracing; None: not in this clone's history
    jobs: int
    loads: dict[str, list[Load]]  # variant -> its e2e load of each round (jobs/s, CPU per job)
    exports: int = 0  # OTLP exports the sink took from the tracing-on stack

    def cpu_us(self, load: Load) -> float:
        """API + worker + Redis CPU per job: what contention from other tenants changes least."""
        return load.api_cpu_us * load.requests / load.jobs + load.worker_cpu_us + load.redis_cpu_us


def tracing_ab(redis_url: str, redis_pid: int, workdir: Path, jobs: int, rounds: int, step: Any) -> TracingAB:
    """Three stacks up at once on one Redis (own key prefixes), loaded in turn round by round: the build
    before tracing, today with tracing off, today with tracing on (10% of new traces sampled)."""
    commit = pre_tracing_commit()
    tree = baseline.checkout(RESULTS, commit) if commit else None
    sink = OtlpSink()
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
          "OTEL_TRACES_SAMPLER_ARG": TRACING_SAMPLED}  # fmt: skip
    variants = [("tracing off", None, {}), (f"tracing on, {float(TRACING_SAMPLED):.0%} sampled", None, on)]
    if tree is not None:
        variants.insert(0, (f"before tracing ({commit})", tree, {}))
    stacks: list[tuple[str, str, int, int]] = []  # label, base URL, API pid, worker pid
    procs: list[subprocess.Popen] = []
    try:
        for i, (label, code, extra) in enumerate(variants):
            system = System("ours", redis_url, workdir, f"-tracing{i}")
            env = {**system.env, **extra, **({"PYTHONPATH": str(code)} if code else {})}
            port = free_port()
            api_argv = baseline.argv(code, "api") if code else system.api_argv()
            procs.append(spawn(api_argv, {**env, "PORT": str(port)}, workdir / f"tracing{i}-api.log"))
            _wait_listening(port, procs[-1])
            procs.append(
                spawn_piped(baseline.argv(code, "worker") if code else system.worker_argv(), {**env, "LOG_LEVEL": "INFO"})
            )
            LineWatcher(procs[-1], workdir / f"tracing{i}-worker.log").wait_ready()
            stacks.append((label, f"http://127.0.0.1:{port}", procs[-2].pid, procs[-1].pid))
        loads: dict[str, list[Load]] = {label: [] for label, *_ in stacks}
        for n in range(rounds):
            for label, base, api, worker in stacks[n % len(stacks) :] + stacks[: n % len(stacks)]:  # each first in turn
                loads[label].append(metered_e2e(base, jobs, "wait", api, worker, redis_pid))
            step(f"tracing A/B round {n + 1}")
    finally:
        for proc in procs:
            stop(proc, 30)
        sink.stop()
    return TracingAB(commit, jobs, loads, sink.exports)


def tracing_lines(t: TracingAB | None) -> list[str]:
    if t is None:
        return []
    labels = list(t.loads)
    jps = {label: [load.completed_jps for load in loads] for label, loads in t.loads.items()}
    cpu = {label: [t.cpu_us(load) for load in loads] for label, loads in t.loads.items()}
    reference = labels[0] if t.commit else None
    lines = [
        "",
        f"Tracing (issue #27): e2e `Prefer: wait`, {CLIENTS} clients, {t.jobs:,} jobs per load, {len(jps[labels[0]])} "
        "interleaved rounds; ratios are the medians of the rounds' own ratios (each round loads every build once, "
        "back to back). CPU per job (API + worker + Redis) is what other tenants of a shared machine change least. "
        f"The on stack exported {t.exports} OTLP requests to a sink:",
        "",
        "| build | e2e jobs/s (median) | per round | jobs/s vs before tracing | CPU us/job | CPU vs before | target | met |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for label in labels:
        ratio = statistics.median(v / r for v, r in zip(jps[label], jps[reference], strict=True)) if reference else None
        cpu_ratio = statistics.median(v / r for v, r in zip(cpu[label], cpu[reference], strict=True)) if reference else None
        off = label == "tracing off"
        target = f"within {TRACING_TOLERANCE:.0%}" if off and reference else ""
        met = ("yes" if abs(1 - ratio) <= TRACING_TOLERANCE else "**no**") if off and ratio is not None else ""
        lines.append(
            f"| {label} | {fmt(statistics.median(jps[label]))} | {', '.join(fmt(v) for v in jps[label])} "
            f"| {f'{ratio:.3f}x' if ratio is not None else '-'} | {statistics.median(cpu[label]):.0f} "
            f"| {f'{cpu_ratio:.3f}x' if cpu_ratio is not None else '-'} | {target} | {met} |"
        )
    if reference is None:
        lines.append("note: the commit before tracing is not in this clone's history: no build to compare tracing off with")
    return lines


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Sizes:
    rounds: int
    jobs: int
    wait_jobs: int
    drain_jobs: int
    single_jobs: int
    idle_jobs: int
    ab_jobs: int
    starts: int
    cli_inputs: int = 20_000  # the file: `asyncinfer run` against `Client.map`
    mlp_jobs: int = 8000
    mlp_probe_s: float = 3.0  # ONNX Runtime alone, before and after the worker's MLP drain


FULL = Sizes(rounds=3, jobs=4000, wait_jobs=4000, drain_jobs=50_000, single_jobs=6000, idle_jobs=200, ab_jobs=4000, starts=5)
QUICK = Sizes(rounds=1, jobs=2000, wait_jobs=2000, drain_jobs=20_000, single_jobs=2000, idle_jobs=60, ab_jobs=1500, starts=3,
              cli_inputs=5000, mlp_jobs=3000, mlp_probe_s=1.5)  # fmt: skip
# every step with a handful of jobs: the table is printed, its figures mean nothing (tests/integration/test_bench.py)
SMOKE = Sizes(rounds=1, jobs=128, wait_jobs=128, drain_jobs=1000, single_jobs=128, idle_jobs=20, ab_jobs=64, starts=1,
              cli_inputs=200, mlp_jobs=256, mlp_probe_s=0.2)  # fmt: skip
MLP_BATCH = 128  # the default MAX_BATCH_SIZE
ACK_ROUNDS_MIN = 3  # the replica-ack comparison is a small difference: never fewer rounds than this


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    parser.add_argument("--profile", action="store_true", help="also record py-spy profiles (separate runs)")
    parser.add_argument("--no-ab", action="store_true", help="skip the uvicorn/granian and hot-path A/B")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check that every step runs; writes no results")
    parser.add_argument("--worker", action="store_true", help="only the worker's figures (drain vs 200d8de, cold start, MLP)")
    parser.add_argument("--replicas", action="store_true", help="only the cost of REDIS_MIN_REPLICAS_ACK=1 against 0")
    parser.add_argument("--tracing", action="store_true", help="only the tracing A/B (off vs the build before it, on at 10%%)")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    have_granian = shutil.which("granian", path=str(BIN)) is not None
    out: dict[str, Any] = {}
    notes: list[str] = []
    started_at = dt.datetime.now(dt.UTC)
    run_started = time.perf_counter()
    profiles = RESULTS / "profiles" if args.profile else None
    if profiles:
        profiles.mkdir(parents=True, exist_ok=True)

    def step(message: str) -> None:
        print(f"[{time.perf_counter() - run_started:6.1f}s] {message}", flush=True)

    tracing_rounds = 1 if args.smoke else max(TRACING_MIN_ROUNDS, sizes.rounds)
    if args.tracing:
        with tempfile.TemporaryDirectory(prefix="asyncinfer-bench-") as tmp:
            server = RedisServer(Path(tmp) / "redis", appendfsync="everysec").start()
            try:
                ab = tracing_ab(server.url, server.proc.pid, Path(tmp), sizes.ab_jobs, tracing_rounds, step)
                report = "\n".join(tracing_lines(ab))
            finally:
                server.stop()
        print(report)
        return

    if args.worker:
        report = worker_only(sizes, started_at, step)
        print(report)
        if not args.smoke:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "worker.md").write_text(report + "\n")
        return

    if args.replicas:
        with tempfile.TemporaryDirectory(prefix="asyncinfer-bench-") as tmp:
            print("\n".join(replica_ack_lines(replica_ack_cost(sizes, Path(tmp), step))))
        return

    with tempfile.TemporaryDirectory(prefix="asyncinfer-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis", appendfsync="everysec").start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            # -- e2e, interleaved: both stacks up at once, naive and ours alternate round by round, so
            # a burst from another tenant of this shared machine hits both rather than one of them
            naive = System("naive", server.url, workdir)
            naive_port = free_port()
            naive_api = naive.start_api(naive_port)
            naive_worker, _ = naive.start_worker()
            ours = System("ours", server.url, workdir)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            api = ours.start_api(port)
            worker, watcher = ours.start_worker()
            rounds: dict[str, list[Load]] = {"naive": [], "poll": [], "wait": [], "long": []}
            with running(api):
                with running(worker, naive_api, naive_worker):
                    watcher.wait_ready()
                    time.sleep(0.5)  # the naive worker loads its model before its first BRPOP
                    for n in range(sizes.rounds):
                        rpid = server.proc.pid
                        naive_base = f"http://127.0.0.1:{naive_port}"
                        rounds["naive"].append(metered_e2e(naive_base, sizes.jobs, "poll", naive_api.pid, naive_worker.pid, rpid))
                        rounds["poll"].append(metered_e2e(base, sizes.jobs, "poll", api.pid, worker.pid, rpid))
                        rounds["wait"].append(metered_e2e(base, sizes.wait_jobs, "wait", api.pid, worker.pid, rpid))
                        rounds["long"].append(metered_e2e(base, sizes.jobs, "long", api.pid, worker.pid, rpid))
                        step(f"e2e round {n + 1}: naive, ours poll, ours Prefer: wait, ours long poll")
                    out["rounds"] = rounds
                    out["naive_e2e"], out["e2e"] = pooled(rounds["naive"]), pooled(rounds["poll"])
                    out["e2e_wait"], out["e2e_long"] = pooled(rounds["wait"]), pooled(rounds["long"])
                    out["naive_api_rss"], out["naive_worker_rss"] = tree_rss_mb(naive_api.pid), tree_rss_mb(naive_worker.pid)
                    out["idle_http"], out["idle_pubsub"] = asyncio.run(
                        idle_wake_up(base, server.url, ours.keys.events, sizes.idle_jobs)
                    )
                    step("ours idle wake-up")
                    out["cli_vs_map"] = cli_run.compare(base, sizes.cli_inputs, workdir)
                    step("asyncinfer run vs Client.map")
                    # the floor: uvicorn answering the same requests without any work (bench/serve.py)
                    floor_port = free_port()
                    floor = spawn([sys.executable, "-m", "bench.serve", "--floor"], {**ours.env, "PORT": str(floor_port)},
                                  workdir / "floor.log")  # fmt: skip
                    _wait_listening(floor_port, floor)
                    with running(floor):
                        floor_base = f"http://127.0.0.1:{floor_port}"
                        for mode in ("poll", "wait"):
                            out[f"floor_{mode}"] = pooled(
                                [
                                    metered_e2e(floor_base, sizes.jobs, mode, floor.pid, worker.pid, server.proc.pid)
                                    for _ in range(sizes.rounds)
                                ]  # fmt: skip
                            )
                    step("uvicorn floor")
                    if profiles:
                        with profiled(api.pid, profiles / "api-e2e-poll.txt"):
                            asyncio.run(end_to_end(base, sizes.jobs, "poll"))
                        with profiled(api.pid, profiles / "api-e2e-wait.txt"):
                            asyncio.run(end_to_end(base, sizes.wait_jobs, "wait"))
                        with profiled(worker.pid, profiles / "worker-e2e-wait.txt"):
                            asyncio.run(end_to_end(base, sizes.wait_jobs, "wait"))
                        step("profiles e2e")
                    out["worker_rss_e2e"] = tree_rss_mb(worker.pid)
                out["naive_drain"] = drain_naive(
                    System("naive", server.url, workdir, "-drain"), client, sizes.drain_jobs, server.proc.pid
                )
                step("naive drain")
                # no worker: the single-job and bulk paths of the API alone
                out["single_submit"], out["single_get"], single_ids = asyncio.run(single_path(base, sizes.single_jobs))
                step("ours single-job path")
                client.delete(*ours.keys.model("iris").pending_all)  # those jobs stay pending, out of the drain's way
                used_before = int(client.info("memory")["used_memory"])
                settle_aof(client)
                client.config_resetstat()
                with cpu_meter(api=api.pid, redis=server.proc.pid) as used:
                    out["bulk_submit"], bulk_ids = asyncio.run(bulk(base, sizes.drain_jobs // BULK_ITEMS))
                out["bulk_api_cpu_us"], out["bulk_redis_cpu_us"] = (used[k] / len(bulk_ids) * 1e6 for k in ("api", "redis"))
                out["bulk_redis_usec"] = command_usec(client, ("evalsha", "eval"))[0] / len(bulk_ids)
                step("ours bulk submit")
                out["drain"] = drain_ours(ours, client, bulk_ids, used_before, None, server.proc.pid)
                step("ours drain")
                baseline_drain(out, notes, server, workdir, client, sizes, step)
                with cpu_meter(api=api.pid, redis=server.proc.pid) as used:
                    out["lookup"] = asyncio.run(lookup(base, bulk_ids))
                out["lookup_api_cpu_us"], out["lookup_redis_cpu_us"] = (used[k] / len(bulk_ids) * 1e6 for k in ("api", "redis"))
                step("ours bulk lookup")
                if profiles:
                    with profiled(api.pid, profiles / "api-bulk.txt"):
                        asyncio.run(bulk(base, sizes.drain_jobs // BULK_ITEMS // 2))
                    client.delete(*ours.keys.model("iris").pending_all)
                    with profiled(api.pid, profiles / "api-lookup.txt"):
                        asyncio.run(lookup(base, bulk_ids))
                    profile_system = System("ours", server.url, workdir, "-profile")
                    port2 = free_port()
                    api2 = profile_system.start_api(port2, "profile-api")
                    with running(api2):
                        _, prof_ids = asyncio.run(bulk(f"http://127.0.0.1:{port2}", sizes.drain_jobs // BULK_ITEMS))
                    drain_ours(profile_system, client, prof_ids, 0, profiles / "worker-drain.txt", server.proc.pid)
                    step("profiles bulk, lookup, drain")
                out["api_rss"] = tree_rss_mb(api.pid)
                del single_ids

            out["naive_cold"], out["cold"] = [], []
            for _ in range(sizes.starts):  # alternating, for the same reason as the e2e rounds
                out["naive_cold"] += cold_start_naive(naive, client, 1)
                out["cold"] += cold_start_ours(ours, 1)
            step("cold starts")
            out["importtime"] = import_time(ours.env, ours.workdir / "importtime.log")
            step("importtime")
            out["mlp"] = compute_bound(server.url, workdir, client, sizes, server.proc.pid)
            step("compute-bound MLP: ONNX Runtime alone, the worker's drain, ONNX Runtime alone")

            # -- A/B: ASGI server and hot path, same app, same load ----------------------------
            ab: dict[str, tuple[Load, Load, Load, float]] = {}
            if not args.no_ab:
                variants = [("uvicorn", True), ("uvicorn", False)]
                if have_granian:
                    variants += [("granian", True), ("granian", False)]
                else:
                    notes.append("granian not installed in .venv (`.venv/bin/pip install granian`): A/B ran uvicorn only")
                ab_system = System("ours", server.url, workdir, "-ab")
                worker, watcher = ab_system.start_worker("ab-worker")
                with running(worker):
                    watcher.wait_ready()
                    for server_name, hotpath in variants:
                        label = f"{server_name}, hot path {'on' if hotpath else 'off'}"
                        port = free_port()
                        api = ab_system.start_api(port, f"ab-{len(ab)}", server=server_name, hotpath=hotpath)
                        with running(api):
                            base = f"http://127.0.0.1:{port}"
                            poll = asyncio.run(end_to_end(base, sizes.ab_jobs, "poll"))
                            wait = asyncio.run(end_to_end(base, sizes.ab_jobs, "wait"))
                            long = asyncio.run(end_to_end(base, sizes.ab_jobs, "long"))
                            ab[label] = (poll, wait, long, tree_rss_mb(api.pid))
                        step(f"A/B {label}")
            out["ab"] = ab
            out["replica_ack"] = replica_ack_cost(sizes, workdir, step)
            out["tracing"] = tracing_ab(server.url, server.proc.pid, workdir, sizes.ab_jobs, tracing_rounds, step)
        finally:
            client.close()
            server.stop()

    report = render(out, sizes, args, started_at, notes)
    print(report)
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.md").write_text(report + "\n")
    if profiles:
        for raw in sorted(profiles.glob("*.txt")):
            if raw.name.endswith(".summary.txt"):
                continue
            summary = summarize_profile(raw)
            (profiles / f"{raw.stem}.summary.txt").write_text(summary + "\n")
            print(f"\n== profile {raw.stem}\n" + "\n".join(summary.splitlines()[:22]))


def render(out: dict[str, Any], sizes: Sizes, args: argparse.Namespace, started_at: dt.datetime, notes: list[str]) -> str:
    naive: Load = out["naive_e2e"]
    e2e: Load = out["e2e"]
    wait: Load = out["e2e_wait"]
    long: Load = out["e2e_long"]
    nd: Drain = out["naive_drain"]
    d: Drain = out["drain"]
    rows: list[tuple[str, str, str, str, str, str]] = []

    def row(figure: str, target: str, naive_cell: str, ours_cell: str, ratio: str = "", met: bool | None = None) -> None:
        rows.append((figure, target, naive_cell, ours_cell, ratio, "" if met is None else ("yes" if met else "**no**")))

    r1 = e2e.completed_jps / naive.completed_jps
    row(
        "1 end to end, submit + poll: completed jobs/s",
        ">= 3x naive",
        fmt(naive.completed_jps),
        fmt(e2e.completed_jps),
        f"{r1:.2f}x",
        r1 >= 3,
    )
    r2 = wait.completed_jps / naive.completed_jps
    row(
        "2 one round trip, `Prefer: wait=10`: completed jobs/s",
        ">= 5x naive e2e",
        fmt(naive.completed_jps),
        fmt(wait.completed_jps),
        f"{r2:.2f}x",
        r2 >= 5,
    )
    row("2 `Prefer: wait` round trip p50 / p99 ms", "", "-", f"{pct(wait.submit_ms, 0.5):.1f} / {pct(wait.submit_ms, 0.99):.1f}")
    row("2 `Prefer: wait` round trips > 1.9 s (a lost wake-up waits for the 2 s recheck)", "0", "-", stalls(wait))
    row(
        "  e2e with long-poll clients: completed jobs/s",
        "",
        "-",
        fmt(long.completed_jps),
        f"{long.completed_jps / naive.completed_jps:.2f}x",
    )
    r3 = d.jps / nd.jps
    row(f"3 drain of {d.jobs:,} jobs by 1 worker: jobs/s", ">= 20,000", fmt(nd.jps), fmt(d.jps), f"{r3:.1f}x", d.jps >= 20_000)
    row(
        "3 drain: Redis usec per job (INFO commandstats)",
        "",
        f"{nd.usec_per_job:.1f}",
        f"{d.usec_per_job:.1f}",
        f"{d.usec_per_job / nd.usec_per_job:.2f}x",
    )
    row(
        "4 bulk submit, 100 items per request: jobs/s",
        ">= 20,000",
        "-",
        fmt(out["bulk_submit"]),
        "",
        out["bulk_submit"] >= 20_000,
    )
    row("4 bulk submit: Redis usec per job (enqueue script, INFO commandstats)", "", "-", f"{out['bulk_redis_usec']:.1f}")
    row("4 bulk lookup, 100 ids per request: jobs/s", "~ bulk submit", "-", fmt(out["lookup"]), "", out["lookup"] >= 20_000)
    row("4 single-job path, no worker: POST /predict req/s", "", "-", fmt(out["single_submit"]))
    row("4 single-job path, no worker: GET /job/{id} req/s", "", "-", fmt(out["single_get"]))
    nc, oc = statistics.median(out["naive_cold"]), statistics.median(out["cold"])
    row(
        f"5 cold start, exec -> ready (median of {len(out['cold'])}) s",
        "<= 0.5",
        f"{nc:.2f}",
        f"{oc:.2f}",
        f"{oc / nc:.2f}x",
        oc <= 0.5,
    )
    row("6 API RSS MB after the runs", "< 150", f"{out['naive_api_rss']:.0f}", f"{out['api_rss']:.0f}", "", out["api_rss"] < 150)
    worker_rss = max(d.worker_rss_mb, out["worker_rss_e2e"])
    row(
        "6 worker RSS MB after the runs",
        "< 200",
        f"{max(out['naive_worker_rss'], nd.worker_rss_mb):.0f}",
        f"{worker_rss:.0f}",
        "",
        worker_rss < 200,
    )
    row("6 Redis bytes per completed job (records kept)", "", fmt(nd.bytes_per_job), fmt(d.bytes_per_job))
    n99, o99 = pct(naive.submit_ms, 0.99), pct(e2e.submit_ms, 0.99)
    row("7 submit p50 ms (e2e poll load)", "", f"{pct(naive.submit_ms, 0.5):.1f}", f"{pct(e2e.submit_ms, 0.5):.1f}")
    row("7 submit p99 ms (e2e poll load)", "<= naive / 2", f"{n99:.1f}", f"{o99:.1f}", f"{o99 / n99:.2f}x", o99 <= n99 / 2)
    lw50, lw99 = pct(long.wake_ms, 0.5), pct(long.wake_ms, 0.99)
    row(
        f"7 long-poll wake-up under e2e load p50 / p99 ms ({len(long.wake_ms)} waits)",
        "p99 <= 5",
        "-",
        f"{lw50:.1f} / {lw99:.1f}",
        "",
        lw99 <= 5,
    )
    iw50, iw99 = pct(out["idle_http"], 0.5), pct(out["idle_http"], 0.99)
    row(
        f"7 long-poll wake-up, 1 client p50 / p99 ms ({len(out['idle_http'])} waits)",
        "p99 <= 5",
        "-",
        f"{iw50:.1f} / {iw99:.1f}",
        "",
        iw99 <= 5,
    )
    pw = out["idle_pubsub"]
    row("7 raw Pub/Sub `ended` arrival, 1 client p50 / p99 ms", "", "-", f"{pct(pw, 0.5):.1f} / {pct(pw, 0.99):.1f}")
    cpu_lines = [
        "",
        "Where the CPU goes (process CPU time, user + system, divided by the work done; less noisy than rates on a shared box):",
        "",
        "| load | HTTP requests per job | API CPU us per request | API CPU us per job | worker CPU us per job | Redis CPU us per job "
        "| load generator CPU us per job | all four, us per job |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, x in (
        ("naive e2e poll", naive),
        ("asyncinfer e2e poll", e2e),
        ("asyncinfer `Prefer: wait`", wait),
        ("asyncinfer long poll", long),
    ):
        per_job = x.requests / x.jobs
        api_job = x.api_cpu_us * per_job
        total = api_job + x.worker_cpu_us + x.redis_cpu_us + x.client_cpu_us
        cpu_lines.append(
            f"| {label} | {per_job:.2f} | {x.api_cpu_us:.0f} | {api_job:.0f} | {x.worker_cpu_us:.0f} | {x.redis_cpu_us:.0f} "
            f"| {x.client_cpu_us:.0f} | {total:.0f} |"
        )
    for label, x in (
        ("uvicorn floor (no work), poll pattern", out["floor_poll"]),
        ("uvicorn floor, `Prefer: wait`", out["floor_wait"]),
    ):
        per_job = x.requests / x.jobs
        cpu_lines.append(
            f"| {label} | {per_job:.2f} | {x.api_cpu_us:.0f} | {x.api_cpu_us * per_job:.0f} | - | - | {x.client_cpu_us:.0f} | - |"
        )
    cpu_lines += [
        f"| asyncinfer bulk submit (100 items) | 0.01 | - | {out['bulk_api_cpu_us']:.0f} | - | {out['bulk_redis_cpu_us']:.0f} | - | - |",
        f"| asyncinfer bulk lookup (100 ids) | 0.01 | - | {out['lookup_api_cpu_us']:.0f} | - | {out['lookup_redis_cpu_us']:.0f} | - | - |",
        f"| naive drain | - | - | - | {nd.worker_cpu_us:.0f} | {nd.redis_cpu_us:.0f} | - | - |",
        f"| asyncinfer drain | - | - | - | {d.worker_cpu_us:.0f} | {d.redis_cpu_us:.0f} | - | - |",
    ]
    naive_total = naive.api_cpu_us * naive.requests / naive.jobs + naive.worker_cpu_us + naive.redis_cpu_us + naive.client_cpu_us

    def ceiling(x: Load, floor: Load) -> float:
        """The e2e ratio if our API cost only uvicorn's floor per request, all else as measured."""
        return naive_total / (floor.api_cpu_us * x.requests / x.jobs + x.worker_cpu_us + x.redis_cpu_us + x.client_cpu_us)

    fp, fw = out["floor_poll"], out["floor_wait"]
    cpu_lines += [
        "",
        f"The bound: on these two cores the e2e ratio follows CPU per job. uvicorn alone, answering the same requests "
        f"with no work, costs {fp.api_cpu_us:.0f} us per request (poll) and {fw.api_cpu_us:.0f} (`Prefer: wait`); our API "
        f"costs {e2e.api_cpu_us:.0f} and {wait.api_cpu_us:.0f}. With an API at that floor and everything else as measured "
        f"(the load generator included), the ratio could reach at most {ceiling(e2e, fp):.2f}x (poll) and "
        f"{ceiling(wait, fw):.2f}x (`Prefer: wait`) on this machine.",
    ]
    drain_lines = [*baseline_lines(out, d), *compute_bound_lines(out["mlp"])]
    ab_lines = [
        "",
        f"A/B, same app and load ({sizes.ab_jobs:,} jobs per load, 1 worker, bench/serve.py): e2e poll jobs/s and submit p99;",
        "`Prefer: wait` jobs/s, round-trip p99 and round trips stuck on the 2 s recheck; long-poll wake-up p99; API RSS.",
        "",
        "| variant | poll jobs/s | poll submit p99 ms | wait jobs/s | wait p99 ms | waits > 1.9 s | long-poll wake-up p99 ms | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (poll, w, lp, rss) in out["ab"].items():
        ab_lines.append(
            f"| {label} | {fmt(poll.completed_jps)} | {pct(poll.submit_ms, 0.99):.1f} | {fmt(w.completed_jps)} | {pct(w.submit_ms, 0.99):.1f} "
            f"| {stalls(w)} | {pct(lp.wake_ms, 0.99):.1f} | {rss:.0f} |"
        )

    lines = [
        f"# asyncinfer bench ({'--smoke' if args.smoke else '--quick' if args.quick else 'full'}) — {started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"machine: {os.cpu_count()} cores (shared; load generator on the same cores); one redis-server "
        f"{redis_version()} with AOF everysec for both systems; 1 worker; {CLIENTS} clients; iris model.",
        f"e2e: {sizes.rounds} interleaved rounds (naive, ours poll, ours `Prefer: wait`, ours long poll) of {sizes.jobs:,} jobs each; "
        f"jobs/s are the medians of the rounds, latencies pooled over them; drain / bulk: {d.jobs:,} jobs.",
        "e2e ratio per round (ours poll / naive; ours `Prefer: wait` / naive): "
        + ", ".join(
            f"{o.completed_jps / n_.completed_jps:.2f}x; {w_.completed_jps / n_.completed_jps:.2f}x"
            for n_, o, w_ in zip(out["rounds"]["naive"], out["rounds"]["poll"], out["rounds"]["wait"], strict=True)
        ),
        "",
        "| figure | target | naive seed | asyncinfer | ratio | met |",
        "|---|---|---:|---:|---:|---|",
        *(f"| {' | '.join(r)} |" for r in rows),
        *cpu_lines,
        *drain_lines,
        *ab_lines,
        "",
        "Redis commands per job during the drain (calls/job, usec/job; commands inside scripts are counted by",
        "Redis too, and are part of EVALSHA's usec):",
        "",
        "| command | asyncinfer calls/job | asyncinfer usec/job | naive calls/job | naive usec/job |",
        "|---|---:|---:|---:|---:|",
    ]
    names = sorted(
        set(d.commands) | set(nd.commands), key=lambda c: -d.commands.get(c, (0, 0))[1] - nd.commands.get(c, (0, 0))[1]
    )
    for name in names:
        if name in ("info", "config|resetstat", "hget", "llen", "client|list", "ping", "memory|usage"):
            continue  # the bench's own polling
        oc_, ou = d.commands.get(name, (0, 0))
        nc_, nu = nd.commands.get(name, (0, 0))
        lines.append(f"| {name} | {oc_ / d.jobs:.3f} | {ou / d.jobs:.2f} | {nc_ / nd.jobs:.3f} | {nu / nd.jobs:.2f} |")
    lines += importtime_lines(out)
    lines += [
        "",
        f"cold starts, s: naive {' '.join(f'{t:.2f}' for t in out['naive_cold'])}; asyncinfer {' '.join(f'{t:.2f}' for t in out['cold'])}",
    ]
    lines += ["", out["cli_vs_map"].line()]
    lines += replica_ack_lines(out["replica_ack"])
    lines += tracing_lines(out.get("tracing"))
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def importtime_lines(out: dict[str, Any]) -> list[str]:
    lines = ["", "Worker start-up imports (`python -X importtime` of `asyncinfer-worker` up to its ready line; package roots",
             "where first imported, and our modules; by cumulative ms, nested entries are included in their parents):", "",
             "| module | cumulative ms | self ms |", "|---|---:|---:|"]  # fmt: skip
    for self_us, cum_us, name in out["importtime"][:16]:
        lines.append(f"| {name} | {cum_us / 1000:.1f} | {self_us / 1000:.1f} |")
    return lines


def worker_only(sizes: Sizes, started_at: dt.datetime, step: Any) -> str:
    """`--worker`: only the worker's figures (issue #23): today's drain beside the pre-hardening worker's,
    CPU per job, cold start, start-up imports and the compute-bound model; one Redis, one run."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="asyncinfer-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis", appendfsync="everysec").start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            # alternating pairs, so that a burst from another tenant lands on both workers
            rounds: dict[str, list[Drain]] = {"drain": [], "baseline_drain": []}
            for n in range(max(sizes.rounds, 2)):
                ours = System("ours", server.url, workdir, f"-r{n}")
                port = free_port()
                with running(ours.start_api(port)):
                    _, ids = asyncio.run(bulk(f"http://127.0.0.1:{port}", sizes.drain_jobs // BULK_ITEMS))
                rounds["drain"].append(drain_ours(ours, client, ids, 0, None, server.proc.pid))
                baseline_drain(out, notes, server, workdir, client, sizes, step)
                if "baseline_drain" in out:
                    rounds["baseline_drain"].append(out["baseline_drain"])
                step(f"drain round {n + 1}: today's worker, then the pre-hardening one")
            out.update({name: median_drain(drains) for name, drains in rounds.items() if drains})
            out["drain_rounds"] = rounds
            out["cold"] = cold_start_ours(ours, sizes.starts)
            step("cold starts")
            out["importtime"] = import_time(ours.env, ours.workdir / "importtime.log")
            out["mlp"] = compute_bound(server.url, workdir, client, sizes, server.proc.pid)
            step("compute-bound MLP: ONNX Runtime alone, the worker's drain, ONNX Runtime alone")
        finally:
            client.close()
            server.stop()
    d: Drain = out["drain"]
    lines = [
        f"# asyncinfer worker bench — {started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"machine: {os.cpu_count()} cores (shared); one redis-server {redis_version()} with AOF everysec; 1 worker; iris model; "
        f"drain of {d.jobs:,} jobs: today's worker {fmt(d.jps)} jobs/s, worker CPU {d.worker_cpu_us:.1f} us/job, "
        f"Redis CPU {d.redis_cpu_us:.1f} us/job",
        *baseline_lines(out, d),
        *compute_bound_lines(out["mlp"]),
        *importtime_lines(out),
        "",
        f"cold starts, s: {' '.join(f'{t:.2f}' for t in out['cold'])}",
        *(f"note: {n}" for n in notes),
    ]
    return "\n".join(lines)


def median_drain(drains: list[Drain]) -> Drain:
    """The rounds of one drain as one: the median of each figure."""
    return Drain(
        drains[0].jobs, statistics.median(d.jps for d in drains), statistics.median(d.usec_per_job for d in drains),
        statistics.median(d.bytes_per_job for d in drains), drains[0].commands, max(d.worker_rss_mb for d in drains),
        statistics.median(d.worker_cpu_us for d in drains), statistics.median(d.redis_cpu_us for d in drains),
    )  # fmt: skip


def baseline_drain(
    out: dict[str, Any], notes: list[str], server: RedisServer, workdir: Path, client: redis.Redis, sizes: Sizes, step: Any
) -> None:
    """The pre-hardening worker's drain into out["baseline_drain"]; a note when git history lacks it."""
    try:
        tree = baseline.checkout(RESULTS)
    except RuntimeError as exc:
        notes.append(f"no regression baseline: {exc}")
        return
    out["baseline_drain"] = drain_baseline(tree, server.url, workdir, client, sizes.drain_jobs, server.proc.pid)
    step(f"pre-hardening worker ({baseline.BASELINE_COMMIT}) drain")


def baseline_lines(out: dict[str, Any], d: Drain) -> list[str]:
    """Today's worker against the pre-hardening one (issue #23, targets 1 and 3), same run and Redis."""
    b: Drain | None = out.get("baseline_drain")
    if b is None:
        return []
    cold = statistics.median(out["cold"])
    table = [
        ("drain jobs/s", ">= 20,000 and >= 1.0x", fmt(b.jps), fmt(d.jps), f"{d.jps / b.jps:.2f}x", d.jps >= 20_000 and d.jps >= b.jps),
        ("drain: worker CPU us per job", "<= 20", f"{b.worker_cpu_us:.1f}", f"{d.worker_cpu_us:.1f}",
         f"{d.worker_cpu_us / b.worker_cpu_us:.2f}x", d.worker_cpu_us <= 20),
        ("drain: Redis CPU us per job", "<= 25", f"{b.redis_cpu_us:.1f}", f"{d.redis_cpu_us:.1f}",
         f"{d.redis_cpu_us / b.redis_cpu_us:.2f}x", d.redis_cpu_us <= 25),
        ("cold start, exec -> ready s (median)", "<= 0.5", "-", f"{cold:.2f}", "", cold <= 0.5),
    ]  # fmt: skip
    rounds = out.get("drain_rounds")
    per_round = (
        ["", "ratio per round (today / pre-hardening, drain jobs/s): "
         + ", ".join(f"{o.jps / b_.jps:.2f}x" for o, b_ in zip(rounds["drain"], rounds["baseline_drain"], strict=False))]
        if rounds else []
    )  # fmt: skip
    return [
        "",
        f"Regression baseline: the pre-hardening worker (commit {baseline.BASELINE_COMMIT}, built from git history into "
        f"bench/results/) and today's, each draining {d.jobs:,} iris jobs submitted over HTTP (its own API), same Redis, "
        "same run; on a shared machine the ratio is the figure to read:",
        "",
        f"| figure | target | pre-hardening {baseline.BASELINE_COMMIT} | today | ratio | met |",
        "|---|---|---:|---:|---:|---|",
        *(f"| {f} | {t} | {bv} | {ov} | {r} | {'yes' if met else '**no**'} |" for f, t, bv, ov, r, met in table),
        *per_round,
    ]


def compute_bound_lines(cb: ComputeBound) -> list[str]:
    """The MLP: the worker against ONNX Runtime alone (target 4), and MAX_BATCH_WAIT_MS guidance from the
    call times: a batch of b rows costs about fixed + b x per-row; waiting for a fuller batch saves at most
    the fixed cost of a call, so waiting longer than that costs the waiting jobs more than it saves."""
    share = cb.drain.jps / cb.runtime_rows_per_s
    bound = statistics.mean(p.cpu_us_per_row for p in cb.probes) / (cb.drain.worker_cpu_us + cb.drain.redis_cpu_us)
    fixed_ms, per_row_ms = cb.probes[0].fit()
    calls = ", ".join(f"batch {b}: {ms:.2f} ms" for b, ms in cb.probes[0].call_ms.items())
    return [
        "",
        f"Compute-bound model: MLP {'->'.join(map(str, mlp.LAYERS))} (bench/mlp.py), one row per job, batch {MLP_BATCH}; "
        "ONNX Runtime alone (the worker's session options, no queue, no Redis) measured before and after the worker's drain:",
        "",
        "| figure | target | ONNX Runtime alone | worker | ratio | met |",
        "|---|---|---:|---:|---:|---|",
        f"| 8 MLP rows/s at batch {MLP_BATCH} | >= 90% of ONNX Runtime | "
        f"{' / '.join(fmt(p.rows_per_s) for p in cb.probes)} | {fmt(cb.drain.jps)} | {share:.0%} | {'yes' if share >= 0.9 else '**no**'} |",
        "",
        f"CPU per row: ONNX Runtime alone {statistics.mean(p.cpu_us_per_row for p in cb.probes):.0f} us; the worker "
        f"{cb.drain.worker_cpu_us:.0f} us (its ONNX Runtime calls included) + Redis {cb.drain.redis_cpu_us:.0f} us. With every "
        f"core busy either way, the worker's share can reach at most {bound:.0%} on this machine.",
        "",
        f"MLP call times (ONNX Runtime alone, median): {calls}; fit: {fixed_ms:.2f} ms fixed per call + {per_row_ms:.3f} ms "
        f"per row. MAX_BATCH_WAIT_MS guidance: at most the fixed cost, here ~{max(fixed_ms, 0.0):.1f} ms (a backlog fills "
        "batches without any wait; the wait only matters when jobs trickle in).",
    ]


def stalls(load: Load) -> str:
    stuck = sum(1 for ms in load.submit_ms if ms > 1900)
    return f"{stuck} of {len(load.submit_ms)}"


def redis_version() -> str:
    from stack import find_redis_server

    try:
        text = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    match = re.search(r"v=(\S+)", text)
    return match[1] if match else "?"


if __name__ == "__main__":
    main()

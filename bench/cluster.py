"""Redis Cluster (issue #25): a model's queue in three shards on a three-master Cluster, beside one
standalone Redis in the same run, same API, worker and load.

Figures: each master's share of Redis command time under a uniform load (max/min, target <= 1.3), the
drain of a prefilled backlog by one worker and end to end `Prefer: wait` jobs/s on both, and Redis CPU
per job on each master (its shard's jobs). The Cluster runs without replicas here (the two cores are
shared by six processes already); the tests cover replicas and failover. `--smoke` runs tiny counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

from stack import RedisServer, free_port, start_api, start_worker, stop  # noqa: E402

from bench.run import CLIENTS, end_to_end  # noqa: E402
from jobqueue.shards import tag_of, tag_slot  # noqa: E402
from tests.support.redis_cluster import RedisClusterHarness  # noqa: E402

MODEL = str(ROOT / "models" / "iris.onnx")
BODY = {"data": [[6.7, 3.0, 5.2, 2.3]]}
SIZES = {"full": (40_000, 8_000, 3), "quick": (10_000, 3_000, 2), "smoke": (300, 120, 1)}  # drain jobs, e2e jobs, rounds
SHARDS = 3


@dataclass
class Figures:
    drain_jobs_s: float
    e2e_jobs_s: float
    command_usec: dict[int, int]  # per master (port): command time during the e2e load
    cpu_s: dict[int, float]  # per master: Redis CPU (user + sys) during the e2e load
    jobs: dict[int, int]  # per master: jobs of the shards it serves (e2e)
    drain_cpu_s: dict[int, float]  # per master: Redis CPU during the drain
    drain_jobs: dict[int, int]  # per master: drained jobs of the shards it serves


def cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def submit_bulk(http: httpx.AsyncClient, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        items = [BODY] * min(500, n - start)
        answer = (await http.post("/predict/batch", json={"items": items})).json()
        ids += [item["job_id"] for item in answer["items"]]
    return ids


async def records(http: httpx.AsyncClient, ids: list[str]) -> list[dict[str, Any]]:
    views: list[dict[str, Any]] = []
    for start in range(0, len(ids), 1000):
        views += (await http.post("/jobs/lookup", json={"ids": ids[start : start + 1000]})).json()["items"]
    return views


async def drain(
    http: httpx.AsyncClient, env: dict[str, str], workdir: Path, n: int, label: str, nodes: dict[int, redis.Redis]
) -> tuple[float, dict[int, float], list[str]]:
    """One worker draining `n` jobs submitted before it started: jobs/s (first start to last end), each
    master's Redis CPU meanwhile, and the ids."""
    ids = await submit_bulk(http, n)
    before = {port: cpu_seconds(node) for port, node in nodes.items()}
    worker = start_worker(env, workdir / f"{label}-drain-worker.log")
    try:
        while True:
            views = await records(http, ids)
            if all(v and v["status"] == "completed" for v in views):
                break
            await asyncio.sleep(0.5)
    finally:
        stop(worker)
    cpu = {port: cpu_seconds(node) - before[port] for port, node in nodes.items()}
    started = min(iso_s(v["started_at"]) for v in views)
    ended = max(iso_s(v["finished_at"]) for v in views)
    return n / max(ended - started, 1e-6), cpu, ids


def iso_s(text: str) -> float:
    return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:23]) / 1000


async def e2e(base: str, n: int) -> tuple[float, list[str]]:
    """`Prefer: wait` submits from CLIENTS concurrent clients, as `make bench` measures them
    (bench/run.py's end_to_end): jobs/s and the ids."""
    load = await end_to_end(base, n, "wait")
    return load.completed_jps, load.job_ids


def run_system(label: str, env: dict[str, str], workdir: Path, masters: list[int], n_drain: int, n_e2e: int) -> Figures:
    """Drain then e2e on one system; per-master figures from `masters` (ports)."""
    api = start_api(env, workdir / f"{label}-api.log")
    try:

        async def body() -> Figures:
            limits = httpx.Limits(max_connections=CLIENTS + 4)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['PORT']}", timeout=60, limits=limits) as http:
                nodes = {port: redis.Redis(port=port, decode_responses=True) for port in masters}
                drain_rate, drain_cpu, drain_ids = await drain(http, env, workdir, n_drain, label, nodes)
                for node in nodes.values():
                    node.config_resetstat()
                cpu_before = {port: cpu_seconds(node) for port, node in nodes.items()}
                worker = start_worker(env, workdir / f"{label}-e2e-worker.log")
                try:
                    await http.post("/predict", json=BODY, headers={"Prefer": "wait=60"})  # the worker is up
                    rate, ids = await e2e(f"http://127.0.0.1:{env['PORT']}", n_e2e)
                finally:
                    stop(worker)
                usec = {port: sum(int(e["usec"]) for e in node.info("commandstats").values()) for port, node in nodes.items()}
                cpu = {port: cpu_seconds(node) - cpu_before[port] for port, node in nodes.items()}
                return Figures(drain_rate, rate, usec, cpu, per_master(nodes, ids), drain_cpu, per_master(nodes, drain_ids))

        return asyncio.run(body())
    finally:
        stop(api)


def per_master(nodes: dict[int, redis.Redis], ids: list[str]) -> dict[int, int]:
    """How many of `ids` each master serves (by their shards' tags)."""
    by_tag = Counter(tag_of(job_id) or "" for job_id in ids)
    return {port: sum(count for tag, count in by_tag.items() if owner(nodes, tag, port)) for port in nodes}


def owner(nodes: dict[int, redis.Redis], tag: str, port: int) -> bool:
    """True when the master on `port` serves `tag`'s slot (standalone: the only server serves all)."""
    if len(nodes) == 1:
        return True
    slot = tag_slot(tag)
    for start, end, master, *_ in nodes[port].execute_command("CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return int(master[1]) == port
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: check that every step runs")
    args = parser.parse_args()
    n_drain, n_e2e, rounds = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        workdir = Path(tmp)
        standalone = RedisServer(workdir / "standalone").start(workdir / "standalone.log")
        cluster = RedisClusterHarness(workdir / "cluster").start(masters=3, replicas_per_master=0)
        try:
            masters = [port for port, _ in cluster.masters()]
            results: dict[str, list[Figures]] = {"standalone": [], "cluster": []}
            for n in range(rounds):
                for label in ("standalone", "cluster"):  # alternating: the machine's drift hits both
                    prefix = f"bench{n}{label[:2]}"
                    common = {
                        **os.environ,
                        "MODEL_PATH": MODEL,
                        "LOG_LEVEL": "WARNING",
                        "PORT": str(free_port()),
                        "KEY_PREFIX": prefix,
                        "MAX_QUEUE_LENGTH": "0",
                    }
                    if label == "cluster":
                        env = {**common, "REDIS_URL": cluster.seed_url, "REDIS_CLUSTER": "true", "QUEUE_SHARDS": str(SHARDS)}
                        ports = masters
                    else:
                        env = {**common, "REDIS_URL": standalone.url}
                        ports = [standalone.port]
                    results[label].append(run_system(f"{label}-{n}", env, workdir, ports, n_drain, n_e2e))
                    print(
                        f"round {n + 1} {label}: drain {results[label][-1].drain_jobs_s:,.0f} jobs/s, e2e {results[label][-1].e2e_jobs_s:,.0f} jobs/s",
                        flush=True,
                    )
        finally:
            cluster.stop()
            standalone.stop()
    table = report(results, n_drain, n_e2e, rounds)
    print(table)
    if not args.smoke:
        (ROOT / "bench" / "results" / "cluster.md").write_text(
            f"# make bench: Redis Cluster ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n{table}\n"
        )


def report(results: dict[str, list[Figures]], n_drain: int, n_e2e: int, rounds: int) -> str:
    best = {label: max(figs, key=lambda f: f.e2e_jobs_s) for label, figs in results.items()}
    cluster = best["cluster"]
    usec = list(cluster.command_usec.values())
    balance = max(usec) / max(min(usec), 1)
    lines = [
        f"Redis Cluster bench: 3 masters (no replicas), one model in {SHARDS} shards, beside one standalone Redis; "
        f"drain of {n_drain:,} jobs by one worker, e2e `Prefer: wait` {n_e2e:,} jobs from {CLIENTS} clients, "
        f"{rounds} alternating round(s), best of each shown.",
        "",
        "| figure | standalone | cluster | cluster / standalone | target |",
        "|---|---:|---:|---:|---|",
        f"| drain, jobs/s (one worker) | {best['standalone'].drain_jobs_s:,.0f} | {cluster.drain_jobs_s:,.0f} | "
        f"{cluster.drain_jobs_s / best['standalone'].drain_jobs_s:.2f}x | reported |",
        f"| e2e `Prefer: wait`, jobs/s | {best['standalone'].e2e_jobs_s:,.0f} | {cluster.e2e_jobs_s:,.0f} | "
        f"{cluster.e2e_jobs_s / best['standalone'].e2e_jobs_s:.2f}x | reported |",
        f"| masters' command time, max/min | - | {balance:.2f} | | <= 1.3: {'yes' if balance <= 1.3 else 'no'} |",
        "",
        "Per master: e2e (`Prefer: wait`, small batches) and drain (full batches); Redis CPU per job of its shards,"
        " and the jobs/s one core reaches at that cost.",
        "",
        "| master | e2e jobs | e2e command time, ms | e2e Redis CPU per job, us | e2e jobs/s per core |"
        " drain jobs | drain Redis CPU per job, us | drain jobs/s per core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, figs in (("standalone", best["standalone"]), ("cluster", cluster)):
        for port in figs.command_usec:
            e2e_us = figs.cpu_s[port] / max(figs.jobs[port], 1) * 1e6
            drain_us = figs.drain_cpu_s[port] / max(figs.drain_jobs[port], 1) * 1e6
            lines.append(
                f"| {label} :{port} | {figs.jobs[port]:,} | {figs.command_usec[port] / 1000:,.0f} | {e2e_us:.0f} | "
                f"{1e6 / max(e2e_us, 1e-9):,.0f} | {figs.drain_jobs[port]:,} | {drain_us:.0f} | {1e6 / max(drain_us, 1e-9):,.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

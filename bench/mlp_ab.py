"""The compute-bound model's drain (bench/mlp.py's MLP, one row per job, batch 128), another commit's
worker against this tree's, in alternating rounds on one redis-server, with ONNX Runtime alone measured
before and after (issue #23, target 4; the regression guard for the worker's input path).

    python -m bench.mlp_ab [--against REV] [--jobs N] [--rounds R]

Each worker drains jobs stored as its own API would store them: JSON for a tree from before
`jobqueue/job_input.py`, the checked tensors otherwise. Prints each round, the medians (rows/s, worker
and Redis CPU per job, the share of ONNX Runtime alone), each round's ratio new/old, and this tree's cost
of reading a batch's stored inputs in-process (JSON against tensors) with their sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import redis

from bench import baseline, mlp
from bench.run import MLP_BATCH, MODEL, RESULTS, Drain, RedisServer, System, drain_ours, prefill_ours


def prefill_json(system: System, client: redis.Redis, bodies: list[str]) -> list[str]:
    """Jobs as an API from before job_input stored them: the request's JSON."""
    from jobqueue.protocol import NewJob, enqueue_call, lua_source
    from jobqueue.settings import Settings

    settings = Settings(key_prefix=system.prefix, max_queue_length=0)
    enqueue = client.register_script(lua_source("enqueue"))
    ids = [str(uuid.uuid4()) for _ in bodies]
    for start in range(0, len(ids), 1000):
        pipe = client.pipeline(transaction=False)
        for job_id, body in zip(ids[start : start + 1000], bodies[start : start + 1000], strict=True):
            call = enqueue_call(system.keys, settings, NewJob(job_id=job_id, model=system.model_name, payload=body))
            enqueue(keys=call.keys, args=call.args, client=pipe)
        pipe.execute()
    return ids


def drain(
    tree: Path | None, server: RedisServer, client: redis.Redis, workdir: Path, path: Path, bodies: list[str], tag: str
) -> Drain:
    """One drain by the worker of `tree` (None: this tree's) of jobs stored as that tree's API stores them."""
    system = System("ours", server.url, workdir, f"-mlp-{tag}", model_path=str(path))
    system.env["MAX_BATCH_SIZE"] = str(MLP_BATCH)
    if tree is None:
        ids = prefill_ours(system, client, len(bodies), bodies)
    else:
        system.env["PYTHONPATH"] = str(tree)
        system.worker_argv = lambda: baseline.argv(tree, "worker")  # type: ignore[method-assign]
        if (tree / "jobqueue" / "job_input.py").exists():
            ids = prefill_ours(system, client, len(bodies), bodies)
        else:
            ids = prefill_json(system, client, bodies)
    assert server.proc is not None
    return drain_ours(system, client, ids, 0, None, server.proc.pid)


def read_costs(path: Path, rows: list[list[float]], label: str) -> str:
    """This tree's worker reading a batch of 128 stored inputs, in-process (no Redis, no model): the JSON an
    older API stored, parsed and converted (`convert_batch`), against the API's tensors (`read_stored`)."""
    import time

    import orjson

    from jobqueue.job_input import checked_payload, read_stored
    from jobqueue.model_signature import convert_batch, read_signature

    signature = read_signature(path)
    bodies = [json.dumps({"data": [row]}) for row in rows[:MLP_BATCH]]
    tensors = [checked_payload(json.loads(body)["data"], signature, 100, body) for body in bodies]

    def per_job_us(read: object) -> float:
        assert callable(read)
        read()
        started, calls = time.process_time(), 0
        while time.process_time() - started < 0.5:
            read()
            calls += 1
        return (time.process_time() - started) / calls / len(bodies) * 1e6

    json_us = per_job_us(lambda: convert_batch([(orjson.loads(b)["data"], b) for b in bodies], signature, 100))
    tensor_us = per_job_us(lambda: read_stored(tensors, signature, 100))
    return (
        f"{label}: reading stored inputs, batch of {len(bodies)}: JSON {json_us:.1f} us/job, tensors {tensor_us:.1f} us/job; "
        f"stored input {len(bodies[0].encode())} bytes as JSON, {len(tensors[0].encode())} as tensors"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="HEAD", help="the commit whose worker to compare with (default HEAD)")
    parser.add_argument("--jobs", type=int, default=8000, help="jobs per drain")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (each drains with both, alternating who goes first)")
    args = parser.parse_args()
    old_tree = baseline.checkout(RESULTS, args.against)
    drains: dict[str, list[Drain]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="asyncinfer-mlp-ab-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis").start(workdir / "redis.log")
        try:
            client = redis.Redis.from_url(server.url)
            path = mlp.build(workdir / "mlp.onnx")
            bodies = [json.dumps({"data": [row]}) for row in mlp.rows(args.jobs)]
            probes = [mlp.probe(path, MLP_BATCH, 2.0)]
            for n in range(args.rounds):
                for name in ("old", "new") if n % 2 == 0 else ("new", "old"):
                    result = drain(old_tree if name == "old" else None, server, client, workdir, path, bodies, f"{name}{n}")
                    drains[name].append(result)
                    print(
                        f"round {n} {name}: {result.jps:8,.0f} rows/s, worker {result.worker_cpu_us:6.1f} us/job, "
                        f"Redis {result.redis_cpu_us:5.1f} us/job",
                        flush=True,
                    )
            probes.append(mlp.probe(path, MLP_BATCH, 2.0))
        finally:
            server.stop()
    alone = statistics.mean(p.rows_per_s for p in probes)
    print(f"\nold = {args.against}, new = this tree; {args.jobs:,} jobs per drain, batch {MLP_BATCH}")
    for name, runs in drains.items():
        rate = statistics.median(d.jps for d in runs)
        print(
            f"{name}: median {rate:,.0f} rows/s ({rate / alone:.1%} of ONNX Runtime alone), worker "
            f"{statistics.median(d.worker_cpu_us for d in runs):.1f} us/job, Redis {statistics.median(d.redis_cpu_us for d in runs):.1f} us/job"
        )
    print("new / old per round: " + ", ".join(f"{b.jps / a.jps:.2f}x" for a, b in zip(drains["old"], drains["new"], strict=True)))
    print(f"ONNX Runtime alone: {', '.join(f'{p.rows_per_s:,.0f}' for p in probes)} rows/s (before, after)")
    with tempfile.TemporaryDirectory(prefix="asyncinfer-mlp-ab-") as tmp:
        print(read_costs(mlp.build(Path(tmp) / "mlp.onnx"), mlp.rows(MLP_BATCH), "MLP (256 floats)"))
    print(read_costs(Path(MODEL), [[5.1, 3.5, 1.4, 0.2]] * MLP_BATCH, "iris (4 floats)"))


if __name__ == "__main__":
    sys.exit(main())

"""Worker cold start A/B (issue #23): another commit's worker against this tree's, started alternately
against one redis-server, so a burst from another tenant of the shared box lands on both.

    python -m bench.cold_start [--against REV] [--starts N] [--python PATH] [--compiled]

Each start is timed from exec to the worker's ready line (wall) together with the CPU the process had
used by then (user + system, less sensitive to other tenants than the wall clock). Both trees start
the same way (`python -P -c ...` with PYTHONPATH on the tree), so neither pays the editable install's
import finder. Also timed, interleaved with them: the interpreter alone and the imports no worker can
skip (numpy, onnxruntime, redis with the OpenTelemetry SDK kept out as the worker does), the floor.
Prints medians, the ratio new/old and this tree's `python -X importtime` top entries.

As an image runs it: `--python` names the interpreter of a venv holding only the worker's locked
dependencies (requirements/worker.txt; the dev venv has ~200 distributions, and pydantic's plugin
lookup and importlib.metadata read them all), and `--compiled` writes both trees' bytecode first
(pip compiles an installed package; a source tree under PYTHONDONTWRITEBYTECODE=1 is compiled again
at every start).

`--instructions` counts instead, once each, the instructions executed from exec to the ready line
(valgrind's callgrind, ~1 min a run): the same count whatever else the shared box is doing, so a
change of a few percent shows, where the wall clock moves by ±30% between starts.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import baseline
from bench.run import MODEL, RESULTS, ROOT, LineWatcher, RedisServer, compile_sources, import_time, running, spawn_piped

FLOOR_IMPORTS = "import sys; sys.modules['opentelemetry.sdk'] = None; import numpy, onnxruntime, redis"
FLOOR_ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # as the worker sets it
# The worker's entry point, ended the moment it logs its ready line (callgrind counts until the exit).
UNTIL_READY = """
import logging, os, sys
class UntilReady(logging.Handler):
    def emit(self, record):
        if str(record.msg).startswith("worker %s serving"):
            logging.shutdown()
            os._exit(0)
logging.getLogger("asyncinfer.worker").addHandler(UntilReady())
sys.argv = ["asyncinfer-worker"]
from worker.main import run
run()
"""


def worker_env(tree: Path, redis_url: str) -> dict[str, str]:
    return dict(
        os.environ, REDIS_URL=redis_url, MODEL_PATH=MODEL, LOG_LEVEL="INFO", KEY_PREFIX="cold-start",
        PYTHONPATH=f"{tree}:{tree / 'client'}",
    )  # fmt: skip


def start_to_ready(python: str, tree: Path, redis_url: str, log: Path) -> tuple[float, float]:
    """(wall s, CPU s) from exec to the ready line of the worker in `tree`."""
    t0 = time.time()
    proc = spawn_piped([python, *baseline.argv(tree, "worker")[1:]], worker_env(tree, redis_url))
    watcher = LineWatcher(proc, log)
    with running(proc):
        wall = watcher.wait_ready() - t0
        cpu = sum(psutil.Process(proc.pid).cpu_times()[:2])
    return wall, cpu


def run_to_exit(python: str, code: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of `python -P -c code` run to its exit."""
    t0 = time.time()
    proc = psutil.Popen([python, "-P", "-c", code], env=env)
    # psutil reads the CPU times of a reaped child from its wait status only on some systems: take
    # them just before it exits instead, by polling (the difference is at most one poll's worth).
    cpu = 0.0
    while proc.poll() is None:
        try:
            cpu = sum(proc.cpu_times()[:2])
        except psutil.NoSuchProcess:
            break
        time.sleep(0.002)
    return time.time() - t0, cpu


def instructions(python: str, code: str, env: dict[str, str]) -> int:
    """Instructions `python -P -c code` executes until it exits, all threads (callgrind)."""
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-P", "-c", code],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(re.findall(r"Collected : (\d+)", run.stderr)[-1])


def count_instructions(python: str, old_tree: Path, redis_url: str) -> None:
    counts = {
        "old": instructions(python, UNTIL_READY, worker_env(old_tree, redis_url)),
        "new": instructions(python, UNTIL_READY, worker_env(ROOT, redis_url)),
        "python -P -c pass": instructions(python, "pass", FLOOR_ENV),
        "floor: numpy, onnxruntime, redis": instructions(python, FLOOR_IMPORTS, FLOOR_ENV),
    }
    for name, count in counts.items():
        print(f"{name:<34} {count / 1e6:8.1f} M instructions ({count / counts['new']:.2f}x new)")


def median_line(name: str, samples: list[tuple[float, float]]) -> str:
    walls, cpus = [w for w, _ in samples], [c for _, c in samples]
    return (
        f"{name:<34} wall median {statistics.median(walls):.3f} s ({min(walls):.3f}-{max(walls):.3f}), "
        f"CPU median {statistics.median(cpus):.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="HEAD", help="the commit to compare with (default HEAD)")
    parser.add_argument("--starts", type=int, default=10, help="starts of each (alternating)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter (venv) to start workers with")
    parser.add_argument("--compiled", action="store_true", help="write both trees' bytecode first, as pip does")
    parser.add_argument("--instructions", action="store_true", help="count instructions (callgrind) instead of timing")
    args = parser.parse_args()
    if not Path(MODEL).exists():
        sys.exit(f"{MODEL} is missing: run `make model` first")
    old_tree = baseline.checkout(RESULTS, args.against)
    if not (old_tree / "models" / "iris.onnx").exists():
        (old_tree / "models" / "iris.onnx").write_bytes(Path(MODEL).read_bytes())
    if args.compiled:
        for tree in (old_tree, ROOT):
            compile_sources(args.python, tree)
    samples: dict[str, list[tuple[float, float]]] = {"old": [], "new": [], "python": [], "floor": []}
    with tempfile.TemporaryDirectory(prefix="asyncinfer-cold-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis").start(workdir / "redis.log")
        try:
            if args.instructions:
                count_instructions(args.python, old_tree, server.url)
                return
            for n in range(args.starts):
                order = [("old", old_tree), ("new", ROOT)] if n % 2 == 0 else [("new", ROOT), ("old", old_tree)]
                for name, tree in order:
                    samples[name].append(start_to_ready(args.python, tree, server.url, workdir / f"{name}.log"))
                samples["python"].append(run_to_exit(args.python, "pass", FLOOR_ENV))
                samples["floor"].append(run_to_exit(args.python, FLOOR_IMPORTS, FLOOR_ENV))
            top = import_time(worker_env(ROOT, server.url), workdir / "importtime.log", args.python)
        finally:
            server.stop()
    print(
        f"{args.starts} alternating starts each, exec -> ready line; old = {args.against}, new = this tree; "
        f"{args.python}{', compiled' if args.compiled else ''}"
    )
    print(median_line(f"old ({args.against})", samples["old"]))
    print(median_line("new (this tree)", samples["new"]))
    ratio = statistics.median(w for w, _ in samples["new"]) / statistics.median(w for w, _ in samples["old"])
    cpu_ratio = statistics.median(c for _, c in samples["new"]) / statistics.median(c for _, c in samples["old"])
    print(f"{'new / old':<34} wall {ratio:.2f}x, CPU {cpu_ratio:.2f}x")
    print(median_line("python -P -c pass", samples["python"]))
    print(median_line("floor: numpy, onnxruntime, redis", samples["floor"]))
    print("\nthis tree's start-up imports (python -X importtime, to the ready line), by cumulative ms:")
    for self_us, cum_us, module in top[:20]:
        print(f"  {cum_us / 1000:8.1f} {self_us / 1000:8.1f}  {module}")


if __name__ == "__main__":
    main()

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
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import baseline
from bench.run import MODEL, RESULTS, ROOT, LineWatcher, RedisServer, import_time, running, spawn_piped

FLOOR_IMPORTS = "import sys; sys.modules['opentelemetry.sdk'] = None; import numpy, onnxruntime, redis"


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


def run_to_exit(python: str, code: str) -> tuple[float, float]:
    """(wall s, CPU s) of `python -P -c code` run to its exit."""
    t0 = time.time()
    proc = psutil.Popen([python, "-P", "-c", code])
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
    args = parser.parse_args()
    if not Path(MODEL).exists():
        sys.exit(f"{MODEL} is missing: run `make model` first")
    old_tree = baseline.checkout(RESULTS, args.against)
    if not (old_tree / "models" / "iris.onnx").exists():
        (old_tree / "models" / "iris.onnx").write_bytes(Path(MODEL).read_bytes())
    if args.compiled:
        for tree in (old_tree, ROOT):
            packages = [str(tree / name) for name in ("jobqueue", "worker")]
            subprocess.run([args.python, "-m", "compileall", "-q", *packages], check=True)
    samples: dict[str, list[tuple[float, float]]] = {"old": [], "new": [], "python": [], "floor": []}
    with tempfile.TemporaryDirectory(prefix="asyncinfer-cold-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis").start(workdir / "redis.log")
        try:
            for n in range(args.starts):
                order = [("old", old_tree), ("new", ROOT)] if n % 2 == 0 else [("new", ROOT), ("old", old_tree)]
                for name, tree in order:
                    samples[name].append(start_to_ready(args.python, tree, server.url, workdir / f"{name}.log"))
                samples["python"].append(run_to_exit(args.python, "pass"))
                samples["floor"].append(run_to_exit(args.python, FLOOR_IMPORTS))
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

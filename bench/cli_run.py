"""`make bench` step: `asyncinfer run` against `Client.map` on the same inputs and the same local stack.

`run` is `map` plus a journal on disk, so its rate should be at least `map`'s (issue: it was 150-270 inputs/s
against ~3,255/s). Both run as their own process, timed from outside, start-up included, with their defaults
(map: bulk requests of 100, 4 in flight; run: of up to 250, 8 in flight). The sides alternate (map, run, map,
run, ...) ROUNDS times, so a burst from another tenant of this shared machine hits both; each rate is the best of
its side's rounds. The client's own CPU seconds are shown too: on a busy machine they vary less than the rates,
and on a quiet one the client shares its cores with the stack. Standalone, against a running stack with a worker:
`python bench/cli_run.py --url http://127.0.0.1:8000 --inputs 20000`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

from stack import BIN  # noqa: E402

from asyncinfer_client import Client  # noqa: E402
from asyncinfer_client.protocol import DEFAULT_CHUNK_SIZE  # noqa: E402
from asyncinfer_client.run_file import RUN_CONCURRENCY, RUN_MAX_CHUNK  # noqa: E402

ROWS = ([[5.1, 3.5, 1.4, 0.2]], [[6.7, 3.0, 5.2, 2.3]])  # alternating setosa / virginica inputs
ROUNDS = 3


@dataclass(frozen=True)
class CliVsMap:
    inputs: int
    map_rates: list[float]  # inputs/s, one per round
    run_rates: list[float]
    map_cpu_s: list[float]  # the client process's CPU seconds (user + system), one per round
    run_cpu_s: list[float]

    @property
    def map_rate(self) -> float:
        return max(self.map_rates)

    @property
    def run_rate(self) -> float:
        return max(self.run_rates)

    @property
    def ratio(self) -> float:
        """`run` / `map`: 1.0 or more means the CLI keeps up with the SDK."""
        return self.run_rate / self.map_rate

    def line(self) -> str:
        return (
            f"asyncinfer run vs Client.map, {self.inputs:,} inputs, defaults of both (map: chunks of {DEFAULT_CHUNK_SIZE}, 4 "
            f"in flight; run: chunks of up to {RUN_MAX_CHUNK}, {RUN_CONCURRENCY} in flight): "
            f"map {self.map_rate:,.0f}/s, run {self.run_rate:,.0f}/s, run/map {self.ratio:.2f}x "
            f"(rounds: map {', '.join(f'{r:,.0f}' for r in self.map_rates)}; run {', '.join(f'{r:,.0f}' for r in self.run_rates)}); "
            f"client CPU s, least of the rounds: map {min(self.map_cpu_s):.2f}, run {min(self.run_cpu_s):.2f}"
        )


@dataclass(frozen=True)
class Timed:
    """One command's run: seconds it took, start-up included (what a user waits for), and the CPU it used."""

    elapsed_s: float
    cpu_s: float
    done: subprocess.CompletedProcess[str]


def timed(argv: list[str], url: str) -> Timed:
    """Run a command with ASYNCINFER_URL set, timed from outside."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCINFER_")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env={**env, "ASYNCINFER_URL": url}, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Timed(elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, done)


def map_inputs(inputs: int) -> None:
    """The `map` side, in its own process like `run`: every input through `Client.map` with its defaults."""
    data = [ROWS[i % 2] for i in range(inputs)]
    with Client() as client:
        completed = sum(outcome.ok for outcome in client.map(data))
    if completed != inputs:
        sys.exit(f"map: {completed} of {inputs} inputs completed")


def map_round(url: str, inputs: int) -> Timed:
    result = timed([sys.executable, __file__, "--map-only", "--inputs", str(inputs)], url)
    if result.done.returncode != 0:
        raise RuntimeError(f"map failed ({result.done.returncode}): {result.done.stderr[-2000:]}")
    return result


def run_round(url: str, inputs: int, workdir: Path, round_number: int) -> Timed:
    input_path = workdir / f"cli-run-{round_number}.jsonl"  # a new file each round: new keys, no replays
    input_path.write_text("".join(json.dumps(ROWS[i % 2][0]) + "\n" for i in range(inputs)))
    output = workdir / f"cli-run-{round_number}.out.jsonl"
    result = timed([str(BIN / "asyncinfer"), "run", str(input_path), "-o", str(output)], url)
    if result.done.returncode != 0 or f"{inputs} completed, 0 failed" not in result.done.stderr:
        raise RuntimeError(f"asyncinfer run failed ({result.done.returncode}): {result.done.stderr[-2000:]}")
    return result


def compare(url: str, inputs: int, workdir: Path) -> CliVsMap:
    """Alternating rounds of `map` and `run` against the stack at `url` (a worker must be serving)."""
    maps: list[Timed] = []
    runs: list[Timed] = []
    for round_number in range(ROUNDS):
        maps.append(map_round(url, inputs))
        runs.append(run_round(url, inputs, workdir, round_number))
    return CliVsMap(
        inputs,
        [inputs / m.elapsed_s for m in maps],
        [inputs / r.elapsed_s for r in runs],
        [m.cpu_s for m in maps],
        [r.cpu_s for r in runs],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running stack with a worker")
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--map-only", action="store_true", help="only run the map side (ASYNCINFER_URL), as compare() does")
    args = parser.parse_args()
    if args.map_only:
        map_inputs(args.inputs)
        return
    with tempfile.TemporaryDirectory(prefix="asyncinfer-cli-run-") as tmp:
        print(compare(args.url, args.inputs, Path(tmp)).line())


if __name__ == "__main__":
    main()

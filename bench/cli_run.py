"""`make bench` step: `asyncinfer run` against `Client.map` on the same inputs and the same local stack.

`run` is `map` plus a journal on disk, so its rate should be at least `map`'s (issue: it was 150-270 inputs/s
against ~3,255/s). Both run as their own process, timed from outside, start-up included. The sides alternate
(map, run, map, run, ...) ROUNDS times, so a burst from another tenant of this shared machine hits both; each
rate is the best of its side's rounds. Standalone, against a running stack with a worker:
`python bench/cli_run.py --url http://127.0.0.1:8000 --inputs 20000`.
"""

from __future__ import annotations

import argparse
import json
import os
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

ROWS = ([[5.1, 3.5, 1.4, 0.2]], [[6.7, 3.0, 5.2, 2.3]])  # alternating setosa / virginica inputs
ROUNDS = 3


@dataclass(frozen=True)
class CliVsMap:
    inputs: int
    map_rates: list[float]  # inputs/s, one per round
    run_rates: list[float]

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
            f"asyncinfer run vs Client.map, {self.inputs:,} inputs, defaults of both (chunks of 100; concurrency: run 8, map 4): "
            f"map {self.map_rate:,.0f}/s, run {self.run_rate:,.0f}/s, run/map {self.ratio:.2f}x "
            f"(rounds: map {', '.join(f'{r:,.0f}' for r in self.map_rates)}; run {', '.join(f'{r:,.0f}' for r in self.run_rates)})"
        )


def timed(argv: list[str], url: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds a command takes, start-up included (what a user waits for), with ASYNCINFER_URL set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCINFER_")}
    started = time.perf_counter()
    done = subprocess.run(argv, env={**env, "ASYNCINFER_URL": url}, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done


def map_inputs(inputs: int) -> None:
    """The `map` side, in its own process like `run`: every input through `Client.map` with its defaults."""
    data = [ROWS[i % 2] for i in range(inputs)]
    with Client() as client:
        completed = sum(outcome.ok for outcome in client.map(data))
    if completed != inputs:
        sys.exit(f"map: {completed} of {inputs} inputs completed")


def map_rate(url: str, inputs: int) -> float:
    elapsed, done = timed([sys.executable, __file__, "--map-only", "--inputs", str(inputs)], url)
    if done.returncode != 0:
        raise RuntimeError(f"map failed ({done.returncode}): {done.stderr[-2000:]}")
    return inputs / elapsed


def run_rate(url: str, inputs: int, workdir: Path, round_number: int) -> float:
    input_path = workdir / f"cli-run-{round_number}.jsonl"  # a new file each round: new keys, no replays
    input_path.write_text("".join(json.dumps(ROWS[i % 2][0]) + "\n" for i in range(inputs)))
    output = workdir / f"cli-run-{round_number}.out.jsonl"
    elapsed, done = timed([str(BIN / "asyncinfer"), "run", str(input_path), "-o", str(output)], url)
    if done.returncode != 0 or f"{inputs} completed, 0 failed" not in done.stderr:
        raise RuntimeError(f"asyncinfer run failed ({done.returncode}): {done.stderr[-2000:]}")
    return inputs / elapsed


def compare(url: str, inputs: int, workdir: Path) -> CliVsMap:
    """Alternating rounds of `map` and `run` against the stack at `url` (a worker must be serving)."""
    map_rates: list[float] = []
    run_rates: list[float] = []
    for round_number in range(ROUNDS):
        map_rates.append(map_rate(url, inputs))
        run_rates.append(run_rate(url, inputs, workdir, round_number))
    return CliVsMap(inputs, map_rates, run_rates)


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

"""`make bench` runs every step and prints every figure of the performance issue, beside the naive
design, with the uvicorn floor and the bound it gives. Run with a handful of jobs (`--smoke`): this
checks that the table is there and filled, never how fast anything is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    "1 end to end, submit + poll: completed jobs/s",
    "2 one round trip, `Prefer: wait=10`: completed jobs/s",
    "3 drain of 1,000 jobs by 1 worker: jobs/s",
    "3 drain: Redis usec per job (INFO commandstats)",
    "4 bulk submit, 100 items per request: jobs/s",
    "4 bulk lookup, 100 ids per request: jobs/s",
    "5 cold start, exec -> ready (median of 1) s",
    "6 API RSS MB after the runs",
    "6 worker RSS MB after the runs",
    "6 Redis bytes per completed job (records kept)",
    "7 submit p99 ms (e2e poll load)",
    # issue #23: the MLP beside ONNX Runtime alone
    "8 MLP rows/s at batch 128",
]
# issue #23: the pre-hardening worker (200d8de) beside today's, when this clone's history has that commit
BASELINE_FIGURES = [
    "drain jobs/s",
    "drain: worker CPU us per job",
    "drain: Redis CPU us per job",
    "cold start, exec -> ready s (median)",
]


def has_baseline_commit() -> bool:
    from bench.baseline import BASELINE_COMMIT

    probe = ["git", "-C", str(ROOT), "cat-file", "-e", f"{BASELINE_COMMIT}^{{commit}}"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


# rows that count only the polls already waiting when their job ended: a handful of jobs may give none
SAMPLED = ["7 long-poll wake-up under e2e load p50 / p99 ms", "7 long-poll wake-up, 1 client p50 / p99 ms"]
CPU_ROWS = ["naive e2e poll", "asyncinfer e2e poll", "asyncinfer `Prefer: wait`", "uvicorn floor (no work), poll pattern"]


# The smoke run starts every system the bench compares (naive, ours, the pre-hardening baseline, a
# replica set, the build before tracing): minutes, not the suite's default 120 s, on a loaded machine.
@pytest.mark.timeout(600)
def test_bench_prints_every_figure_with_the_naive_design_and_the_bound() -> None:
    latest = ROOT / "bench" / "results" / "latest.md"
    before = latest.stat().st_mtime if latest.exists() else None
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=580, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in run.stdout.splitlines() if line.startswith("| ")}
    if has_baseline_commit():
        figures = FIGURES + BASELINE_FIGURES
    else:  # a shallow clone: the bench says why the baseline is missing instead of failing
        figures = FIGURES
        assert "no regression baseline: commit" in run.stdout
    for figure in figures:
        row = next((line for name, line in rows.items() if name.startswith(figure)), None)
        assert row is not None, f"no row {figure!r} in:\n{run.stdout}"
        assert re.search(r"\| [\d,.]+ [|/]", row), f"row without a measured figure: {row}"
    for figure in SAMPLED:
        assert any(name.startswith(figure) for name in rows), f"no row {figure!r}"
    naive_e2e = rows["1 end to end, submit + poll: completed jobs/s"].split(" | ")
    assert re.fullmatch(r"[\d,]+", naive_e2e[2]) and naive_e2e[4].endswith("x"), naive_e2e  # naive beside ours, a ratio
    for label in CPU_ROWS:
        assert any(name == label for name in rows), f"no CPU row {label!r}"
    assert re.search(r"could reach at most [\d.]+x \(poll\) and [\d.]+x \(`Prefer: wait`\)", run.stdout)
    assert re.search(r"MAX_BATCH_WAIT_MS guidance: at most the fixed cost, here ~[\d.]+ ms", run.stdout)
    assert "| uvicorn, hot path on |" in run.stdout and "| uvicorn, hot path off |" in run.stdout
    assert re.search(r"asyncinfer run vs Client.map, [\d,]+ inputs.*: map [\d,]+/s, run [\d,]+/s, run/map [\d.]+x", run.stdout)
    # issue #24: REDIS_MIN_REPLICAS_ACK=1 beside 0, same run: submit p50/p99 and e2e jobs/s, and the ratios
    for label in ("REDIS_MIN_REPLICAS_ACK=0", "REDIS_MIN_REPLICAS_ACK=1"):
        assert re.fullmatch(r"\| [^|]+ \| [\d.]+ \| [\d.]+ \| [\d,]+ \|", rows[label]), rows.get(label)
    assert re.fullmatch(r"\| ratio =1 / =0 \| [\d.]+x \| [\d.]+x \| [\d.]+x \|", rows["ratio =1 / =0"])
    # issue #27: e2e jobs/s with tracing off beside the build before tracing (when history has it), and on
    tracing = {name: row for name, row in rows.items() if "tracing" in name}
    assert re.search(r"\| [\d,.]+ \|", tracing["tracing off"]) and re.search(r"\| [\d,.]+ \|", tracing["tracing on, 10% sampled"])
    assert any(name.startswith("before tracing (") for name in tracing) or "no build to compare tracing off with" in run.stdout
    assert (latest.stat().st_mtime if latest.exists() else None) == before  # a smoke run writes no results


@pytest.mark.timeout(300)
def test_the_mlp_ab_prints_both_workers_beside_onnx_runtime_alone() -> None:
    """bench/mlp_ab.py (the input path's regression guard): another commit's worker and this tree's drain
    the MLP's jobs in alternating rounds; a smoke size, read for its lines, not its speed."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.mlp_ab", "--against", "HEAD", "--jobs", "256", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("old", "new"):
        assert re.search(rf"^round 0 {name}: +[\d,]+ rows/s, worker +[\d.]+ us/job, Redis +[\d.]+ us/job$", run.stdout, re.M)
        assert re.search(rf"^{name}: median [\d,]+ rows/s \([\d.]+% of ONNX Runtime alone\)", run.stdout, re.M)
    assert re.search(r"^new / old per round: \d+\.\d\dx$", run.stdout, re.M)
    assert re.search(r"^ONNX Runtime alone: [\d,]+, [\d,]+ rows/s", run.stdout, re.M)
    for label in ("MLP", "iris"):
        assert re.search(
            rf"^{label} .*: JSON [\d.]+ us/job, tensors [\d.]+ us/job; stored input \d+ bytes as JSON, \d+ as tensors$",
            run.stdout,
            re.M,
        )

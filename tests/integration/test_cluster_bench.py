"""`make bench`'s Redis Cluster step (bench/cluster.py) runs and prints its tables at smoke size: every
figure is there, beside the standalone Redis of the same run; never how fast anything is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)
def test_the_cluster_bench_prints_balance_drain_e2e_and_cpu_per_job_per_master() -> None:
    run = subprocess.run(
        [sys.executable, "bench/cluster.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=400, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for figure in ("drain, jobs/s (one worker)", "e2e `Prefer: wait`, jobs/s"):
        assert re.search(rf"^\| {re.escape(figure)} \| [\d,]+ \| [\d,]+ \| [\d.]+x \|", run.stdout, re.MULTILINE), run.stdout
    assert re.search(r"^\| masters' command time, max/min \| - \| [\d.]+ \| \| <= 1\.3: (yes|no) \|$", run.stdout, re.MULTILINE)
    masters = re.findall(r"^\| cluster :\d+ \| ([\d,]+) \| [\d,]+ \| [\d.]+ \| \d+ \| [\d,]+ \|$", run.stdout, re.MULTILINE)
    assert len(masters) == 3, run.stdout
    assert all(int(jobs.replace(",", "")) > 0 for jobs in masters), "every master serves one of the model's shards"
    assert re.search(r"^\| standalone :\d+ \| [\d,]+ \|", run.stdout, re.MULTILINE)

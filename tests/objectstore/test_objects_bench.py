"""`make bench`'s object-storage step (bench/objects.py) runs and prints its table, at smoke size: this
checks that every figure is there, never how fast anything is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_object_bench_prints_mb_per_s_beside_inline_json_and_redis_bytes_per_job() -> None:
    run = subprocess.run(
        [sys.executable, "bench/objects.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=280, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = re.search(r"^\| 1 MB \.npy \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| (\d+) \|$", run.stdout, re.MULTILINE)
    assert row, run.stdout[-2000:]
    object_rate, inline_rate, _, job_bytes = (float(v) for v in row.groups())
    assert object_rate > 0 and inline_rate > 0 and 0 < job_bytes < 2048

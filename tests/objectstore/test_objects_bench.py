"""`make bench`'s object-storage step (bench/objects.py) runs and prints its table, at smoke size: this
checks that every figure is there, never how fast anything is."""

from __future__ import annotations

import re

import pytest

from tests.support.bench_smoke import smoke_output


@pytest.mark.timeout(300)
def test_the_object_bench_prints_mb_per_s_beside_inline_json_and_redis_bytes_per_job() -> None:
    out = smoke_output("bench/objects.py", 280)
    row = re.search(r"^\| 1 MB \.npy \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| (\d+) \|$", out, re.MULTILINE)
    assert row, out[-2000:]
    object_rate, inline_rate, _, job_bytes = (float(v) for v in row.groups())
    assert object_rate > 0 and inline_rate > 0 and 0 < job_bytes < 2048

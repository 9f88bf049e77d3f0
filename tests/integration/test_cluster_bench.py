"""`make bench`'s Redis Cluster step (bench/cluster.py) runs and prints its tables at smoke size: every
figure is there, beside the standalone Redis of the same run; never how fast anything is."""

from __future__ import annotations

import re

import pytest

from tests.support.bench_smoke import smoke_output


@pytest.mark.timeout(420)
def test_the_cluster_bench_prints_balance_drain_e2e_and_cpu_per_job_per_master() -> None:
    out = smoke_output("bench/cluster.py", 400)
    for figure in ("drain, jobs/s (one worker)", "e2e `Prefer: wait`, jobs/s"):
        assert re.search(rf"^\| {re.escape(figure)} \| [\d,]+ \| [\d,]+ \| [\d.]+x \|", out, re.MULTILINE), out
    assert re.search(r"^\| masters' command time, max/min \| - \| [\d.]+ \| \| <= 1\.3: (yes|no) \|$", out, re.MULTILINE)
    masters = re.findall(
        r"^\| cluster :\d+ \| ([\d,]+) \| [\d,]+ \| \d+ \| [\d,]+ \| ([\d,]+) \| \d+ \| [\d,]+ \|$", out, re.MULTILINE
    )
    assert len(masters) == 3, out
    assert all(int(e2e.replace(",", "")) > 0 and int(drained.replace(",", "")) > 0 for e2e, drained in masters), (
        "every master serves one of the model's shards"
    )
    assert re.search(r"^\| standalone :\d+ \| [\d,]+ \|", out, re.MULTILINE)

"""Run one of `make bench`'s steps at smoke size (a handful of jobs: the tables, never the speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def smoke_output(script: str, timeout_s: float) -> str:
    """`python <script> --smoke` from the repository root; its stdout, once it exited 0."""
    run = subprocess.run(
        [sys.executable, script, "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout

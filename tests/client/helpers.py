"""Helpers of the client tests (fixtures live in conftest.py): inputs, the CLI as a subprocess, file polling."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from stack import BIN

from asyncinfer_client import RetryPolicy

ROW = [5.1, 3.5, 1.4, 0.2]
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "ops": "ops-token-0123456789"}  # auth_stack's
FAST_RETRY = RetryPolicy(max_retries=5, backoff_base_s=0.05, backoff_max_s=0.2)
JOB_KEYS = "asyncinfer:job:*"  # one job record per job (default KEY_PREFIX): counts the jobs the server made
CLI = str(BIN / "asyncinfer")  # the console script installed by `pip install -e client[progress]`


def cli_env(url: str, **extra: str) -> dict[str, str]:
    """The CLI's environment: the service URL from ASYNCINFER_URL, as users set it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCINFER_")}
    env.update(ASYNCINFER_URL=url, **extra)
    return env


def run_cli(args: list[str], url: str, timeout_s: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=cli_env(url, **extra), capture_output=True, text=True, timeout=timeout_s)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def iris_rows(count: int) -> list[list[float]]:
    """Alternating setosa / virginica rows: each result can be checked against its input."""
    return [SETOSA if i % 2 == 0 else VIRGINICA for i in range(count)]

"""The regression baseline: the worker as it was before the hardening (commit 200d8de), built from git
history into bench/results/ and run by `make bench` against the same Redis and the same jobs as today's."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "200d8de"  # the last worker before the hardening: 22,400 jobs/s in issue #23's run
SUBMITTERS = 32


def checkout(results: Path, commit: str = BASELINE_COMMIT) -> Path:
    """That commit's tree, extracted once into results/baseline-<commit>/ (no worktree, no index change).
    A name that moves (HEAD, a branch) is resolved first, so the directory always holds what it names."""
    try:
        if commit != BASELINE_COMMIT:
            commit = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short=12", f"{commit}^{{commit}}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        dest = results / f"baseline-{commit}"
        done = dest / ".complete"
        if done.exists():
            return dest
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"commit {commit} is not in this clone's history (a shallow clone? `git fetch --unshallow`): "
            f"{exc.stderr if isinstance(exc.stderr, str) else exc.stderr.decode()}".strip()
        ) from None
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    done.touch()
    return dest


def argv(tree: Path, role: str) -> list[str]:
    """The old API or worker from `tree`: -P keeps the launcher's working directory (today's code) off
    sys.path, so PYTHONPATH=tree decides which `api`, `worker` and `jobqueue` are imported."""
    return [sys.executable, "-P", "-c", f"import sys; sys.argv = ['asyncinfer-{role}']; from {role}.main import run; run()"]


async def submit(base: str, body: bytes, jobs: int) -> list[str]:
    """POST /predict `jobs` times from SUBMITTERS clients (the old API has no bulk route); the ids."""
    ids: list[str] = []
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:

        async def submitter(count: int) -> None:
            for _ in range(count):
                async with http.post(f"{base}/predict", data=body) as response:
                    if response.status != 202:
                        raise RuntimeError(f"baseline submit answered {response.status}: {await response.text()}")
                    ids.append((await response.json())["job_id"])

        await asyncio.gather(*(submitter(jobs // SUBMITTERS) for _ in range(SUBMITTERS)))
    return ids

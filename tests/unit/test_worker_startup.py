"""What a worker loads before its start-up (ready) line: the model and Redis client, nothing that can
wait until after it (issue #23, cold start). Checked on the imported modules, never on a clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import MODEL_PATH

# Only the health server and the metrics it exposes need these; they load after the ready line.
LATER = ("prometheus_client", "jobqueue.metrics", "jobqueue.health", "http.server")


def test_a_worker_is_built_without_what_can_wait_until_it_is_ready() -> None:
    code = (
        "import json, sys\n"
        "from jobqueue.settings import get_settings\n"
        "from worker.main import run\n"
        "from worker.loop import Worker\n"
        "Worker(get_settings())\n"
        f"print(json.dumps([m for m in {LATER!r} if m in sys.modules]))\n"
    )
    env = {**os.environ, "MODEL_PATH": str(MODEL_PATH), "WORKER_HEALTH_PORT": "9"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(run.stdout.splitlines()[-1]) == []

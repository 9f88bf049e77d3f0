"""What a worker loads before its start-up (ready) line: the model and Redis client, nothing that can
wait until after it (issue #23, cold start). Checked on the imported modules, never on a clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from stack import RedisServer

from tests.conftest import MODEL_PATH

# Only the health server and the metrics it exposes need these; they load after the ready line.
LATER = ("prometheus_client", "jobqueue.metrics", "jobqueue.health", "http.server")
# Nothing a worker started the usual way (no arguments, tracing off, one model, no object store, not
# in a cluster) uses before its ready line: each one was, or could easily become, an eager import.
NOT_BEFORE_READY = (
    *LATER,
    "argparse",  # parses `--burst` only when arguments are given
    "opentelemetry.sdk",  # tracing off; redis-py would import its metrics SDK
    "yaml",  # MODELS_FILE only
    "boto3",  # OBJECT_STORE_URL only
    "botocore",
    "kubernetes",  # POD_NAME only (the deletion cost)
)

# Runs the real `asyncinfer-worker` entry point; a handler on the worker's logger takes a snapshot of
# the process when the ready line is logged, prints it and ends the process there.
AT_READY_LINE = """
import json, logging, os, sys

NAMES = json.loads(sys.argv[1])

class AtReadyLine(logging.Handler):
    def emit(self, record):
        if not str(record.msg).startswith("worker %s serving"):
            return
        try:
            import jobqueue
            from pydantic.plugin import _loader
            version = getattr(jobqueue, "_installed_version", None)  # gone: read at import again
            snapshot = {
                "loaded": [m for m in NAMES if sys.modules.get(m) is not None],  # None: kept out on purpose
                "version_read": version is None or version.cache_info().currsize > 0,
                "pydantic_plugins_looked_up": _loader._plugins is not None,
                "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            }
        except Exception as exc:
            snapshot = {"error": repr(exc)}
        print(json.dumps(snapshot), flush=True)
        os._exit(0)

logging.getLogger("asyncinfer.worker").addHandler(AtReadyLine())
sys.argv = ["asyncinfer-worker"]
from worker.main import run
run()
"""


def at_ready_line(redis_url: str, **env: str) -> dict[str, Any]:
    full_env = {**os.environ, "REDIS_URL": redis_url, "MODEL_PATH": str(MODEL_PATH), "LOG_LEVEL": "INFO", **env}
    unset = (
        "WORKER_HEALTH_PORT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OPENBLAS_NUM_THREADS",
        "PYDANTIC_DISABLE_PLUGINS",
    )
    for name in unset:  # the worker's own defaults, whatever the test runner's environment holds
        if name not in env:
            full_env.pop(name, None)
    argv = [sys.executable, "-c", AT_READY_LINE, json.dumps(NOT_BEFORE_READY)]
    run = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    snapshot: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    return snapshot


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


def test_the_ready_line_comes_before_anything_a_worker_does_not_use_yet(redis_server: RedisServer) -> None:
    snapshot = at_ready_line(redis_server.url)
    assert snapshot["loaded"] == []
    assert not snapshot["version_read"]  # jobqueue.__version__ is read when asked for, never by a worker
    assert not snapshot["pydantic_plugins_looked_up"]  # the entry points of every installed distribution
    assert snapshot["openblas_threads"] == "1"  # numpy's BLAS threads: a worker does no BLAS work


def test_an_operators_own_thread_and_plugin_settings_win(redis_server: RedisServer) -> None:
    snapshot = at_ready_line(redis_server.url, OPENBLAS_NUM_THREADS="2", PYDANTIC_DISABLE_PLUGINS="")
    assert snapshot["openblas_threads"] == "2"
    assert snapshot["pydantic_plugins_looked_up"]


def test_bad_settings_still_stop_a_worker_with_the_field_named() -> None:
    env = {**os.environ, "MODEL_PATH": str(MODEL_PATH), "MAX_BATCH_SIZE": "0"}
    code = "import sys; sys.argv = ['asyncinfer-worker']; from worker.main import run; run()"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "validation error for Settings" in run.stderr and "max_batch_size" in run.stderr
    assert "greater than or equal to 1" in run.stderr


def test_burst_is_still_parsed_and_unknown_arguments_refused() -> None:
    from worker.main import burst_mode

    assert burst_mode([]) is False
    assert burst_mode(["--burst"]) is True
    code = "import sys; sys.argv = ['asyncinfer-worker', '--bogus']; from worker.main import run; run()"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unrecognized arguments: --bogus" in run.stderr

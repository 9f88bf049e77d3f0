"""The local stack's start-up and shutdown as a new user meets them (`make run`): a taken API port, another
Redis on the Redis port, Ctrl-C on `make run | tee log`; and the API process stopping on SIGTERM at any moment."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from stack import BIN, ROOT, RedisServer, free_port, spawn

from api.state import JobEvents
from jobqueue.connection import async_client
from jobqueue.settings import Settings
from jobqueue.states import JobStatus
from tests.conftest import MODEL_PATH, service_env
from tests.support.models import loop_iterations_per_second, loop_model
from tests.support.queue import SyncJobs
from tests.support.waiting import wait_until

STACK = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
# A stopped API is gone in about a second; 8 s stays below the 10 s an unfinished start-up would wait
# (api/app.py MODELS_STARTUP_WAIT_S), which is what the old code made a SIGTERM during start-up wait for.
EXIT_BOUND_S = 8.0
STACK_UP_S = 90.0  # Redis, a worker, the notifier and the API start on a loaded 2-core machine
IRIS_JOB = {"data": [[5.1, 3.5, 1.4, 0.2]]}
JOB_SECONDS = 4.0  # long enough to be held by the worker when Ctrl-C comes


@contextmanager
def listening_socket(port: int = 0) -> Iterator[int]:
    """Something else listening on a port (it accepts connections and never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock.getsockname()[1]


def stack_env(tmp_path: Path, **overrides: object) -> dict[str, str]:
    """What a user's shell gives `make run`: no REDIS_URL unless the test sets one."""
    env = service_env("", **{"DATA_DIR": tmp_path / "data", "REDIS_PORT": free_port(), **overrides})
    if "REDIS_URL" not in overrides:
        del env["REDIS_URL"]
    return env


def processes_under(path: Path) -> list[psutil.Process]:
    """Processes whose command line names `path` (the stack's redis-server names its --dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(path) in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


class LocalStack:
    """`python deploy/local/stack.py` as `make run` runs it, in a process group of its own (as a
    terminal's foreground job), its output in a file; optionally piped through `tee`."""

    def __init__(self, tmp_path: Path, env: dict[str, str], piped: bool = False) -> None:
        self.output = tmp_path / "stack-output.log"
        self.data_dir = Path(env["DATA_DIR"])
        self.base = f"http://127.0.0.1:{env['PORT']}"
        argv = ["bash", "-c", '"$@" 2>&1 | tee /dev/null', "bash", *STACK] if piped else STACK
        self.proc = spawn(argv, env, self.output)

    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    def wait_up(self) -> None:
        wait_until(lambda: "asyncinfer is up" in self.text() or self.proc.poll() is not None, STACK_UP_S, "the stack")
        assert "asyncinfer is up" in self.text(), self.text()

    def interrupt(self) -> int:
        """Ctrl-C in the terminal: SIGINT to the whole process group; returns the exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(120)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.interrupt()
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., LocalStack]]:
    """Starts a local stack and waits for its banner; stops every one it started afterwards."""
    started: list[LocalStack] = []

    def start(env: dict[str, str], piped: bool = False) -> LocalStack:
        run = LocalStack(tmp_path, env, piped)
        started.append(run)
        run.wait_up()
        return run

    yield start
    for run in started:
        run.close()


# -- 1. a taken API port ---------------------------------------------------------------------------


def test_a_taken_api_port_is_one_line_and_nothing_is_left_running(tmp_path):
    with listening_socket() as taken:
        env = stack_env(tmp_path, PORT=taken)
        result = subprocess.run(STACK, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert len(output.splitlines()) == 1, output
    assert f"port {taken} is in use; set PORT=" in output
    assert "Traceback" not in output
    assert processes_under(tmp_path) == []


@pytest.mark.parametrize("moment", ["starting", "ready", "redis-down", "redis-frozen", "port-taken"])
def test_the_api_exits_promptly_on_sigterm_at_any_moment(moment, processes, redis_server, tmp_path):
    redis_url = redis_server.url
    own_redis: RedisServer | None = None
    holder = socket.socket()
    try:
        if moment == "redis-down":
            redis_url = f"redis://127.0.0.1:{free_port()}/0"
        if moment == "redis-frozen":
            own_redis = RedisServer(tmp_path / "frozen").start()
            redis_url = own_redis.url
        env = service_env(redis_url)
        if moment == "starting":  # the start-up waits for a model file that is not there yet
            env["MODEL_PATH"] = str(tmp_path / "not-yet.onnx")
        if moment == "port-taken":
            holder.bind(("127.0.0.1", int(env["PORT"])))
            holder.listen()
        log = tmp_path / "api.log"
        api = spawn([str(BIN / "asyncinfer-api")], env, log)
        processes.procs.append(api)
        started = {"starting": "Waiting for application startup", "ready": "Uvicorn running on"}.get(
            moment, "Application startup complete"
        )
        wait_until(lambda: started in log.read_text() or api.poll() is not None, 60, started)
        if moment == "ready":
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{env['PORT']}/readyz").status_code == 200, 30, "ready")
        if moment == "redis-frozen":
            assert own_redis is not None and own_redis.proc is not None
            own_redis.proc.send_signal(signal.SIGSTOP)
        if moment != "port-taken":  # that API stops on its own: it cannot listen
            api.send_signal(signal.SIGTERM)
        try:
            code = api.wait(EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the API still runs {EXIT_BOUND_S}s after SIGTERM ({moment}):\n{log.read_text()[-2000:]}")
        assert (code != 0) if moment == "port-taken" else (code == 0), log.read_text()[-2000:]
    finally:
        holder.close()
        if own_redis is not None and own_redis.proc is not None:
            own_redis.proc.send_signal(signal.SIGCONT)
            own_redis.stop()


def test_the_job_events_listener_stops_whenever_it_is_stopped(redis_server):
    """Stopped at each of its first event-loop turns (connect, HELLO, SUBSCRIBE, listen): on Python 3.11
    a cancel that lands as one of redis-py's wait_for calls completes is lost, and the task used to sit
    in listen() forever, hanging the API's shutdown."""
    settings = Settings(redis_url=redis_server.url, model_path=MODEL_PATH)

    async def stop_after(turns: int) -> bool:
        client = async_client(settings)
        events = JobEvents(client, "test-events")
        events.start()
        for _ in range(turns):
            await asyncio.sleep(0)
        stopping = asyncio.create_task(events.stop())
        await asyncio.wait({stopping}, timeout=EXIT_BOUND_S)  # (not wait_for: its cancel would end both)
        left = [t for t in asyncio.all_tasks() if t.get_name() == "job-events" and not t.done()]
        for task in (stopping, *left):
            task.cancel()
        await asyncio.wait({stopping, *left})
        await client.aclose()
        return stopping.cancelled() is False and not left

    stuck = [turns for turns in range(40) if not asyncio.run(stop_after(turns))]
    assert stuck == [], f"the listener kept running when stopped after these many loop turns: {stuck}"


# -- 2. another Redis on the Redis port --------------------------------------------------------------


@pytest.fixture
def foreign_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, redis.Redis]]:
    """A redis-server the stack did not start (as Debian's own on 6379) and a client of it."""
    server = RedisServer(tmp_path / "foreign").start(tmp_path / "foreign.log")
    client = redis.Redis.from_url(server.url)
    yield server, client
    client.close()
    server.stop()


def test_a_foreign_redis_on_the_redis_port_is_never_written(start_stack, foreign_redis, tmp_path):
    foreign, foreign_client = foreign_redis
    run = start_stack(stack_env(tmp_path, REDIS_PORT=foreign.port))
    job = httpx.post(f"{run.base}/predict", json=IRIS_JOB, timeout=30).json()
    done = httpx.get(f"{run.base}/job/{job['job_id']}", params={"wait": 20}, timeout=30).json()
    assert done["status"] == "completed"
    assert foreign_client.dbsize() == 0  # nothing was written into the Redis the stack did not start
    assert f"port {foreign.port} is in use" in run.text()
    assert f"Redis    redis://127.0.0.1:{foreign.port}/" not in run.text()


def test_a_redis_named_by_redis_url_is_used_and_said_to_be_foreign(start_stack, foreign_redis, tmp_path):
    foreign, foreign_client = foreign_redis
    run = start_stack(stack_env(tmp_path, REDIS_URL=foreign.url))
    assert httpx.post(f"{run.base}/predict", json=IRIS_JOB, timeout=30).status_code == 202
    assert foreign_client.dbsize() > 0
    assert "not started by this stack" in run.text()
    assert run.interrupt() == 0
    assert foreign.proc is not None and foreign.proc.poll() is None  # the stack leaves their Redis running


# -- 3. Ctrl-C on `make run | tee log` -------------------------------------------------------------------


def test_ctrl_c_on_a_piped_stack_stops_in_order_and_the_held_job_finishes(start_stack, tmp_path):
    model = loop_model(tmp_path / "loop.onnx")
    trips = int(loop_iterations_per_second(model) * JOB_SECONDS)
    run = start_stack(stack_env(tmp_path, MODEL_PATH=model), piped=True)
    job_id = httpx.post(f"{run.base}/predict", json={"data": [[trips]]}, timeout=30).json()["job_id"]
    wait_until(lambda: httpx.get(f"{run.base}/job/{job_id}").json()["status"] == "processing", 30, "the worker to hold the job")

    run.interrupt()  # bash waits for the whole pipeline (and exits 130: tee died of the SIGINT)

    wait_until(lambda: not processes_under(run.data_dir), 60, "every process of the stack to exit")

    # The AOF holds the job as the worker left it: completed, not lost nor handed back.
    redis_again = RedisServer(run.data_dir / "redis").start()
    try:
        client = redis.Redis.from_url(redis_again.url, decode_responses=True)
        record = SyncJobs(client, Settings(redis_url=redis_again.url, model_path=str(model)), model="loop").get(job_id)
        assert record.status == JobStatus.COMPLETED
        client.close()
    finally:
        redis_again.stop()

    # ... and the order was the documented one
    stack_log = run.data_dir / "logs" / "stack.log"
    lines = [line.split(" ", 1)[1] for line in stack_log.read_text().splitlines()]
    stopped = [
        line.strip()
        for line in lines[lines.index("stopping: the API first (no new jobs), then each worker drains, then Redis") :]
    ]
    assert stopped[1:] == ["api exited with 0", "notifier exited with 0", "worker-loop-1 exited with 0", "redis stopped"]


# -- 5. /docs offline ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("page", "kinds"), [("/docs", {"text/javascript", "text/css"}), ("/redoc", {"text/javascript"})])
def test_the_docs_pages_load_only_files_the_api_serves_itself(page, kinds, processes, redis_server):
    _, base = processes.api(service_env(redis_server.url))
    html = httpx.get(base + page, timeout=30).text
    assert "://" not in html, "a docs page names another origin (a CDN): it is blank offline"
    urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html) + re.findall(r"url: '([^']+)'", html)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    served = {}
    for url in urls:
        response = httpx.get(base + url, timeout=30)
        assert response.status_code == 200, url
        served[url] = response.headers["content-type"].split(";")[0]
        assert len(response.content) > 1000, url  # the real Swagger UI / ReDoc files, the spec, the icon
    assert kinds <= set(served.values()), served

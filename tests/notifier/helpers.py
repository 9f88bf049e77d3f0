"""Test helpers for webhook delivery: a signature-checking webhook receiver, job seeding."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobqueue.keys import StoreKeys

PREFIX = "asyncinfer"
KEYS = StoreKeys(PREFIX)
# A held reply answers after this even if its test never released it (a failing test must not leave
# a receiver thread waiting for ever); beyond any test's own waits.
RELEASE_WAIT_LIMIT_S = 120.0


def new_secret() -> str:
    """A fresh Standard Webhooks secret (whsec_ + base64 of 24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request: after `hold_s` (and once `release` is set, when given),
    `status` with `headers`."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold_s: float = 0.0
    release: threading.Event | None = None


@dataclass(frozen=True)
class Request:
    """One request the receiver saw."""

    webhook_id: str | None
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int
    at: float


class Receiver:
    """A webhook endpoint on 127.0.0.1 that verifies Standard Webhooks signatures (`Webhook.verify`).

    `plan` lists the replies to the 1st, 2nd, ... request of each webhook-id; later requests get 200.
    A request whose signature does not verify gets 401 (and never counts as accepted). Accepted views
    are deduplicated by webhook-id, as a receiver of at-least-once deliveries must.
    """

    def __init__(self, secret: str, plan: list[Reply] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.webhook = Webhook(secret)
        self.plan = list(plan or [])
        self.requests: list[Request] = []
        self.accepted: dict[str, dict[str, Any]] = {}
        self.sni_names: list[str | None] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._handle(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        webhook_id = headers.get("webhook-id")
        try:
            view = self.webhook.verify(body, headers)
            verified = True
        except WebhookVerificationError:
            view, verified = None, False
        with self._lock:
            n = sum(1 for r in self.requests if r.webhook_id == webhook_id)
            reply = self.plan[n] if verified and n < len(self.plan) else Reply(200 if verified else 401)
            self.requests.append(Request(webhook_id, headers, body, verified, reply.status, time.monotonic()))
        if reply.hold_s:
            time.sleep(reply.hold_s)
        if reply.release is not None:
            reply.release.wait(RELEASE_WAIT_LIMIT_S)
        if verified and 200 <= reply.status < 300 and webhook_id:
            with self._lock:
                self.accepted.setdefault(webhook_id, view)
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:
            pass  # the notifier gave up on this request (timeout, or it was killed)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def seed_finished_job(
    client: redis.Redis, job_id: str, callback_url: str, status: str = "completed", finished_at: int | None = None
) -> None:
    """A finished job record with a callback_url put into the outbox, as the lead's finish script does."""
    now_ms = int(time.time() * 1000)
    finished_at = finished_at or now_ms
    record = {
        "status": status,
        "model": "iris",
        "model_version": "1",
        "priority": "high",
        "owner": "tester",
        "input": json.dumps({"data": [[5.1, 3.5, 1.4, 0.2]]}),
        "attempts": 1,
        "created_at": finished_at - 30,
        "queued_at": finished_at - 30,
        "started_at": finished_at - 10,
        "finished_at": finished_at,
        "callback_url": callback_url,
        "notify_state": "pending",
        "notify_attempts": 0,
        "notify_end": 1,
    }
    if status == "completed":
        record["result"] = json.dumps([{"label": "setosa", "probabilities": {"setosa": 0.97}}])
    else:
        record["error"] = "model raised: boom"
    pipe = client.pipeline()
    pipe.hset(KEYS.job(job_id), mapping=record).expire(KEYS.job(job_id), 3600)
    pipe.zadd(KEYS.notify, {job_id: now_ms}, nx=True)
    pipe.execute()


def make_tls_context(tmp: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for `name`, client context trusting only its CA), made with
    the openssl command line."""
    import subprocess

    ca_key, ca_crt, key, csr, crt = (tmp / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt"))
    ext = tmp / "ext.cnf"
    ext.write_text(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n")
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "1",
        "-extfile",
        str(ext),
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(crt, key)
    client = ssl.create_default_context(cafile=str(ca_crt))
    return server, client

"""A small stand-in for the asyncinfer HTTP API, for what the real stack cannot be made to do on cue:
answer 429/503 with Retry-After for the first N calls, drop connections, show a failed job. It records every
request (method, path, Idempotency-Key, Authorization) and makes one job per distinct idempotency key, as
the real service does, so tests can count the jobs a client's retries made."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

FAKE_WAIT_CAP_S = 1.0
SLOW_DATA = [
    [0.0, 0.0, 0.0, 0.0]
]  # an input the fake takes `slow_delay_s` to finish  # a long poll on a job that never ends holds at most this long here


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    idempotency_key: str | None
    authorization: str | None
    prefer: str | None
    body: Any


@dataclass
class FakeService:
    """Behaviour knobs (set by the test before the client calls) and what was seen."""

    fail_first: int = 0  # submits (single or bulk) refused before one is accepted
    fail_status: int = 503
    retry_after: str | None = "1"
    drop_first: int = 0  # submits whose connection is closed without an answer
    job_status: str = "completed"  # what GET /job/{id} shows for every job
    job_error: str | None = None
    required_token: str | None = None  # answer 401 without `Authorization: Bearer <this>`
    slow_delay_s: float = 0.0  # jobs whose data is SLOW_DATA stay pending this long
    refuse_items_first: int = 0  # bulk items answered with a per-item 429 (queue full) before any is accepted
    items_refused: int = 0
    ready_at: dict[str, float] = field(default_factory=dict)  # job id -> when it shows `job_status`
    requests: list[Recorded] = field(default_factory=list)
    jobs_by_key: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    submits_seen: int = 0

    @property
    def jobs_created(self) -> int:
        return len(self.jobs_by_key)

    def submit_keys(self) -> list[str | None]:
        return [r.idempotency_key for r in self.requests if r.method == "POST" and r.path.endswith("predict")]

    def bulk_keys(self) -> list[str | None]:
        return [r.idempotency_key for r in self.requests if r.method == "POST" and r.path.endswith("predict/batch")]

    def job_for(self, key: str | None) -> tuple[str, bool]:
        """The job for an idempotency key: (id, replayed)."""
        with self.lock:
            if key is not None and key in self.jobs_by_key:
                return self.jobs_by_key[key], True
            job_id = str(uuid.uuid4())
            self.jobs_by_key[key or job_id] = job_id
            return job_id, False

    def view(self, job_id: str) -> dict[str, Any]:
        status = self.job_status if time.monotonic() >= self.ready_at.get(job_id, 0.0) else "pending"
        ended = status in {"completed", "failed", "canceled", "expired"}
        return {
            "job_id": job_id,
            "status": status,
            "model": "iris",
            "model_version": "1",
            "priority": "normal",
            "result": {"prediction": 0} if status == "completed" else None,
            "error": self.job_error,
            "attempts": 3 if self.job_status == "failed" else 1,
            "created_at": "2026-01-01T00:00:00.000Z",
            "started_at": None,
            "finished_at": "2026-01-01T00:00:01.000Z" if ended else None,
            "notification": None,
        }


def _handler(service: FakeService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # the base class names it `format`
            pass  # quiet: pytest shows failures, not access logs

        def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            service.requests.append(
                Recorded(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    self.headers.get("Idempotency-Key"),
                    self.headers.get("Authorization"),
                    self.headers.get("Prefer"),
                    body,
                )
            )
            if service.required_token and self.headers.get("Authorization") != f"Bearer {service.required_token}":
                self._answer(401, {"detail": "missing or unknown bearer token"}, {"WWW-Authenticate": "Bearer"})
                return
            if self.command == "POST" and url.path.endswith(("/predict", "/predict/batch")):
                with service.lock:
                    service.submits_seen += 1
                    seen = service.submits_seen
                if seen <= service.drop_first:
                    self.close_connection = True
                    self.connection.shutdown(2)  # the request arrived, no answer comes: an ambiguous failure
                    return
                if seen <= service.drop_first + service.fail_first:
                    headers = {"Retry-After": service.retry_after} if service.retry_after is not None else {}
                    self._answer(service.fail_status, {"detail": "queue is full; try again later"}, headers)
                    return
                key = self.headers.get("Idempotency-Key")
                if url.path.endswith("/batch"):
                    items = []
                    for index, item in enumerate(body["items"]):
                        if service.items_refused < service.refuse_items_first:
                            service.items_refused += 1
                            items.append({"error": {"status": 429, "detail": "queue of model iris is full"}})
                            continue
                        job_id, replayed = service.job_for(item.get("idempotency_key") or (f"{key}:{index}" if key else None))
                        if item["data"] == SLOW_DATA:
                            service.ready_at[job_id] = time.monotonic() + service.slow_delay_s
                        items.append({"job_id": job_id, "status": "pending", **({"replayed": True} if replayed else {})})
                    self._answer(200, {"items": items})
                    return
                job_id, replayed = service.job_for(key)
                self._answer(
                    202,
                    {"job_id": job_id, "status": "pending", "model": "iris"},
                    {"Location": f"/job/{job_id}", **({"Idempotent-Replayed": "true"} if replayed else {})},
                )
                return
            if self.command == "GET" and url.path.startswith("/job/"):
                wait = float(parse_qs(url.query).get("wait", ["0"])[0])
                job_id = url.path.removeprefix("/job/")
                if service.view(job_id)["status"] in {"pending", "processing"} and wait:
                    time.sleep(min(wait, FAKE_WAIT_CAP_S))
                self._answer(200, service.view(job_id))
                return
            if self.command == "POST" and url.path == "/jobs/lookup":
                self._answer(200, {"items": [service.view(job_id) for job_id in body["ids"]]})
                return
            if self.command == "GET" and url.path == "/admin/dead-letters":
                self._answer(200, {"items": [service.view("dead-1")]})
                return
            if self.command == "POST" and url.path == "/admin/dead-letters/retry":
                self._answer(200, {"retried": 1})
                return
            self._answer(404, {"detail": "Not Found"})

        do_GET = do_POST = do_DELETE = _handle

    return Handler


class FakeServer:
    """Serves a FakeService on a free loopback port from a thread."""

    def __init__(self, service: FakeService) -> None:
        self.service = service
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-asyncinfer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FakeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

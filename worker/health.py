"""A tiny HTTP server for the worker's Kubernetes probes, /healthz (loop alive) and /readyz (Redis ok), and its /metrics."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jobqueue import metrics


def serve_health(port: int, health: Callable[[], dict[str, Any]], host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve probes on a daemon thread; returns the server so the caller can shut it down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path.split("?")[0] == "/metrics":
                self._send_bytes(200, *metrics.render())
                return
            state = health()
            key = {"/healthz": "alive", "/readyz": "ready"}.get(self.path.split("?")[0])
            if key is None:
                self._send(404, {"detail": "not found"})
            else:
                self._send(200 if state[key] else 503, state)

        def _send(self, code: int, body: dict[str, Any]) -> None:
            self._send_bytes(code, json.dumps(body).encode(), "application/json")

        def _send_bytes(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # probes every few seconds would flood the log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server

"""A tiny HTTP server for a worker's or the notifier's probes and metrics: /healthz (the loop turns),
/readyz (Redis answers) and /metrics (Prometheus text), on a daemon thread, stdlib only."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def serve_health(
    port: int,
    health: Callable[[], dict[str, Any]],
    metrics: Callable[[], bytes] | None = None,
    host: str = "0.0.0.0",
    openmetrics: Callable[[], bytes] | None = None,
) -> ThreadingHTTPServer:
    """Serve probes (and metrics when given) on a daemon thread; returns the server so the caller can
    shut it down. `health()` answers {"alive": bool, "ready": bool, ...}. `openmetrics`: the metrics in
    the OpenMetrics format (exemplars), served to a scrape whose Accept header asks for it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics" and metrics is not None:
                if openmetrics is not None and "application/openmetrics-text" in self.headers.get("Accept", ""):
                    self._send(200, openmetrics(), OPENMETRICS_CONTENT_TYPE)
                else:
                    self._send(200, metrics(), METRICS_CONTENT_TYPE)
                return
            key = {"/healthz": "alive", "/readyz": "ready"}.get(path)
            if key is None:
                self._send(404, b'{"detail": "not found"}', "application/json")
                return
            state = health()
            self._send(200 if state[key] else 503, json.dumps(state).encode(), "application/json")

        def _send(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # probes every few seconds would flood the log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server

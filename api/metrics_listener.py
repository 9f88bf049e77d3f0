"""A separate listener for /metrics (METRICS_PORT): the Service exposes it, the Ingress never routes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.state import AppState

log = logging.getLogger("asyncinfer.api")
READ_TIMEOUT_S = 5.0


class MetricsListener:
    """A minimal HTTP/1.0 server answering GET /metrics with the Prometheus text format."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("metrics on http://%s:%d/metrics", host, port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from api.metrics import metrics_body

        try:
            request_line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            accept = None  # the only header read: OpenMetrics (exemplars) or the Prometheus text format
            while (line := await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                body, ctype = await metrics_body(self.state, accept)
                status = "200 OK"
            else:
                status, body, ctype = "404 Not Found", b"only /metrics here\n", "text/plain"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except Exception as exc:  # a scrape failing must never take the API down
            log.debug("metrics request failed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

"""Runs the API process (`asyncinfer-api`): uvicorn with a graceful, load-balancer-friendly drain."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.app import AsyncInferAPI, create_app
from api.state import AppState
from jobqueue import logs
from jobqueue.settings import get_settings

log = logging.getLogger("asyncinfer.api")


class CoalescingTransport:
    """A transport whose writes within one event-loop turn leave in one system call.

    uvicorn writes a response's status line and headers, then its body, as two writes: two system
    calls and two TCP segments for every small JSON answer. Holding writes until the end of the
    turn sends them as one (and a client reads one segment). Every other call (close, write_eof,
    set_protocol for a WebSocket upgrade, ...) goes to the real transport after the held bytes, so the
    order of what reaches the socket never changes.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._transport, name)
        if not callable(attribute):
            return attribute

        def after_held(*args: Any, **kwargs: Any) -> Any:
            self._flush()
            return attribute(*args, **kwargs)

        return after_held


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]


class DrainingServer(uvicorn.Server):
    """On SIGTERM, fail readiness first and keep serving SHUTDOWN_DELAY_SECONDS, so the load balancer
    stops sending traffic before the listener closes; then uvicorn finishes in-flight requests."""

    def __init__(self, config: uvicorn.Config, shutdown_delay_s: float) -> None:
        super().__init__(config)
        self.shutdown_delay_s = shutdown_delay_s
        self._delayed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if isinstance(self.config.app, AsyncInferAPI):
            self.config.app.stopping = True  # a start-up in progress stops waiting (api/app.py)
        app_state: AppState | None = getattr(getattr(self.config.app, "state", None), "asyncinfer", None)
        if app_state is not None:
            app_state.draining = True  # long polls notice within LONG_POLL_RECHECK_S and answer
        # Still starting: no load balancer sends traffic yet, so there is nothing to drain.
        if self._delayed or self.shutdown_delay_s <= 0 or not self.started:
            self._stop()
            return
        self._delayed = True
        log.info("draining: readiness is 503; stopping in %.1fs", self.shutdown_delay_s)
        threading.Timer(self.shutdown_delay_s, self._stop).start()

    def _stop(self) -> None:
        # Unlike uvicorn's own handler, a graceful stop exits 0 rather than re-raising the signal.
        if self.should_exit:
            self.force_exit = True  # a second signal: stop waiting for in-flight requests
        self.should_exit = True


def run() -> None:
    settings = get_settings()
    logs.configure(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # LOG_FORMAT=json: uvicorn's own lines go through the root handler too, as JSON
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=False,  # one line per job at thousands of jobs/s would cost more than the job
        timeout_graceful_shutdown=35,  # longer than the longest long poll
        timeout_keep_alive=settings.keep_alive_timeout_seconds,  # longer than the proxy in front keeps its pool
        proxy_headers=True,
        http=CoalescingHttpToolsProtocol,
        ws_max_size=settings.ws_max_message_bytes,  # larger messages close with 1009 before they are read whole
    )
    DrainingServer(config, settings.shutdown_delay_seconds).run()


if __name__ == "__main__":
    run()

"""The API's side of the metrics: the request metrics middleware, and the /metrics body (this process's
own metrics plus the queue state read from Redis for the scrape, `jobqueue.metrics.QueueCollector`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobqueue import admin, metrics
from jobqueue.connection import REFUSED, UNAVAILABLE

if TYPE_CHECKING:
    from api.state import AppState

log = logging.getLogger("asyncinfer.api")
# Where a middleware that answers without the router (the hot path) puts the route template it served.
ROUTE_TEMPLATE_KEY = "asyncinfer.route"
# A scrape must answer within Prometheus' scrape timeout (10 s by default) even when Redis hangs.
SCRAPE_REDIS_TIMEOUT_S = 3.0
# Redis down, refusing (NOAUTH, a replica), erring or slow: the scrape answers with asyncinfer_redis_up 0.
SCRAPE_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, *REFUSED, TimeoutError)


async def metrics_body(state: AppState, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition and its content type (OpenMetrics when `accept` asks); without Redis it still
    answers, with `asyncinfer_redis_up 0`."""
    try:
        overview = await asyncio.wait_for(admin.store_overview(state.store, state.models.names()), SCRAPE_REDIS_TIMEOUT_S)
    except SCRAPE_FAILURES as exc:
        log.debug("metrics: queue state not read (%s)", exc)
        overview = None
    return metrics.render(overview, with_queue=True, accept=accept)


class RequestMetricsMiddleware:
    """ASGI middleware: counts requests and their latency by method, route template and status class.

    The route is the matched route's path template (`/job/{job_id}`), which routing stores in the scope;
    a middleware that answers before routing (the API's hot path) names its template in
    `scope[ROUTE_TEMPLATE_KEY]`. A path no route matches is labelled `unmatched`, so a scan of random
    URLs cannot grow the label set.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorded)
        finally:
            method = scope["method"]
            route = route_template(scope)
            metrics.child(metrics.HTTP_REQUESTS, method, route, metrics.status_class(recorded.status)).inc()
            metrics.child(metrics.HTTP_REQUEST_SECONDS, method, route).observe(time.perf_counter() - started)


class StatusRecorder:
    """An ASGI `send` that passes every message on and keeps the response's status code: 500 until the
    response starts (an exception before it is a 5xx to the client). Request metrics and the hot path's
    SERVER span both read it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


def route_template(scope: Scope) -> str:
    """The path template of the route that served `scope`, or 'unmatched'."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) if route is not None else None
    return template or scope.get(ROUTE_TEMPLATE_KEY) or "unmatched"

"""A direct route for the two hot endpoints (submit a job to the default model, read a job).

Thousands of requests a second spend more time in the framework's routing, middleware and
dependency machinery than in our handlers. This ASGI layer, in front of FastAPI (api/app.py
`outer_layers`), calls the very same route functions (`jobs.submit_job`, `jobs.read_job`) with the
parameters it parsed itself, and answers errors through the same mapping; the FastAPI routes stay the
documented (OpenAPI) definition and serve every other method and path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import authenticate
from api.errors import as_problem, invalid, json_response, problem_response
from api.metrics import ROUTE_TEMPLATE_KEY, StatusRecorder
from api.routes import jobs
from jobqueue import tracing

JOB_PREFIX = "/job/"


def _wait_param(query_string: bytes) -> float | None:
    """`wait` as FastAPI would validate it: a number, 0 < wait <= MAX_WAIT_S."""
    for key, value in parse_qsl(query_string.decode("latin-1")):
        if key == "wait":
            try:
                wait = float(value)
            except ValueError:
                raise invalid(["query", "wait"], "Input should be a valid number", "float_parsing") from None
            if not 0 < wait <= jobs.MAX_WAIT_S:
                raise invalid(["query", "wait"], f"Input should be greater than 0 and at most {jobs.MAX_WAIT_S}")
            return wait
    return None


# the request headers the two routes read, as servers give them (lower-case bytes)
WANTED_HEADERS = {b"authorization", b"idempotency-key", b"prefer", b"content-length", b"traceparent"}


def _headers(scope: Scope) -> dict[bytes, str]:
    """The first value of each wanted header (as Starlette's `Headers.get` gives it)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in WANTED_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


class HotPathMiddleware:
    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner  # whose state (`app.state.asyncinfer`) the routes use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if path.startswith(JOB_PREFIX) and "/" not in path[len(JOB_PREFIX) :] and method not in ("GET", "HEAD", "DELETE"):
            # GET and DELETE are two routes: Starlette would name only the first one in Allow
            response = json_response({"detail": "Method Not Allowed"}, 405, {"Allow": "GET, DELETE"})
            return await response(scope, receive, send)
        is_submit = method == "POST" and path == "/predict"
        job_id = path[len(JOB_PREFIX) :] if method == "GET" and path.startswith(JOB_PREFIX) else ""
        if not is_submit and (not job_id or "/" in job_id):
            return await self.app(scope, receive, send)
        route = scope[ROUTE_TEMPLATE_KEY] = "/predict" if is_submit else "/job/{job_id}"  # for the request metrics
        headers = _headers(scope)
        if tracing.TRACER is None:
            return await self._answer(scope, receive, send, headers, is_submit, job_id)
        with tracing.server_span(method, route, headers.get(b"traceparent")) as span:
            recorded = StatusRecorder(send)
            try:
                await self._answer(scope, receive, recorded, headers, is_submit, job_id)
            finally:
                tracing.end_server_span(span, recorded.status)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, str], is_submit: bool, job_id: str
    ) -> None:
        state = self.owner.state.asyncinfer
        try:
            caller = authenticate(state.tokens, headers.get(b"authorization"))
            if is_submit:
                key = headers.get(b"idempotency-key")
                if key is not None and len(key) > jobs.MAX_IDEMPOTENCY_KEY:
                    raise invalid(
                        ["header", "Idempotency-Key"], f"String should have at most {jobs.MAX_IDEMPOTENCY_KEY} characters"
                    )
                limit = state.settings.max_body_bytes
                body = await jobs.collect_body(headers.get(b"content-length"), _body_chunks(receive), limit)
                response = await jobs.submit_job(state, caller, None, body, key, headers.get(b"prefer"), receive)
            else:
                if len(job_id) > jobs.MAX_JOB_ID:
                    raise invalid(["path", "job_id"], f"String should have at most {jobs.MAX_JOB_ID} characters")
                response = await jobs.read_job(state, caller, job_id, _wait_param(scope["query_string"]), receive)
        except Exception as exc:  # mapped below, or re-raised as a 500
            problem = as_problem(exc)
            if problem is None:
                raise
            response = problem_response(problem)
        await response(scope, receive, send)

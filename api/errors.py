"""Errors mapped to HTTP: every refusal names its reason; Redis outages become 503 with Retry-After."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from jobqueue.connection import UNAVAILABLE
from jobqueue.errors import JobNotFound, QueueFull, WrongState

log = logging.getLogger("asyncinfer.api")

RETRY_AFTER_S = 1


class HTTPProblem(Exception):
    """A refusal with a status, a `detail` body and optional headers."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def invalid(loc: tuple | list, msg: str, kind: str = "value_error") -> HTTPProblem:
    """A 422 in FastAPI's own shape, so clients parse every validation error the same way."""
    return HTTPProblem(422, [{"loc": list(loc), "msg": msg, "type": kind}])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> Response:
        return json_response({"detail": exc.detail}, exc.status, exc.headers)

    @app.exception_handler(JobNotFound)
    async def _not_found(_: Request, exc: JobNotFound) -> Response:
        return json_response({"detail": f"job {exc.args[0]} not found (unknown id, or its record expired)"}, 404)

    @app.exception_handler(WrongState)
    async def _conflict(_: Request, exc: WrongState) -> Response:
        return json_response({"detail": str(exc), "status": exc.status}, 409)

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> Response:
        return json_response({"detail": f"{exc}; try again later"}, 429, {"Retry-After": str(RETRY_AFTER_S)})

    for error in UNAVAILABLE:

        @app.exception_handler(error)
        async def _redis_down(_: Request, exc: Exception) -> Response:
            log.warning("redis unavailable: %s", exc)
            return json_response(
                {"detail": "job store (Redis) is unavailable; nothing was changed, try again"},
                503,
                {"Retry-After": str(RETRY_AFTER_S)},
            )

"""Errors mapped to HTTP: every refusal names its reason; Redis outages become 503 with Retry-After."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import Response

from jobqueue.connection import REFUSED, UNAVAILABLE
from jobqueue.errors import IdempotencyConflict, JobNotFound, QueueFull, RateLimited, ShardBusy, TooManyUnfinished, WrongState
from jobqueue.replicas import ReplicasBehind

log = logging.getLogger("asyncinfer.api")

RETRY_AFTER_S = 1
# What each operation refused with a 409 needs, so the answer says which states would have worked.
NEEDED_STATES = {
    "retry": "a failed or dead-lettered job",
    "cancel": "a pending job",
    "resending its webhook": "a finished job (completed, failed, canceled or expired)",
}


class HTTPProblem(Exception):
    """A refusal with a status, a `detail` body and optional headers."""

    def __init__(
        self, status: int, detail: Any, headers: dict[str, str] | None = None, fields: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.fields = fields or {}  # more members of the body, beside `detail`


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def invalid(loc: tuple[str | int, ...] | list[str | int], msg: str, kind: str = "value_error") -> HTTPProblem:
    """A 422 in FastAPI's own shape, so clients parse every validation error the same way."""
    return HTTPProblem(422, [{"loc": list(loc), "msg": msg, "type": kind}])


# Redis error codes and what they mean for a client. redis-py drops the code from the message of the
# classes it maps (NoPermissionError: "this user has no permissions ..."), and Redis 6 wraps an error
# inside a script as "Error running script ...: -OOM command not allowed ...": look at both.
REFUSAL_REASONS = {
    "OOM": "OOM: Redis is full (maxmemory)",
    "READONLY": "READONLY: a read-only replica (a failover in progress?)",
    "MISCONF": "MISCONF: Redis cannot persist",
    "NOPERM": "NOPERM: the Redis user lacks a permission",
    "NOAUTH": "NOAUTH: not authenticated",
    "WRONGPASS": "WRONGPASS: wrong Redis password",
    "BUSY": "BUSY: Redis is running a long script",
    "MASTERDOWN": "MASTERDOWN: the replica lost its master",
}
REFUSAL_CLASSES = {
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.NoPermissionError: "NOPERM",
}


def refusal_reason(exc: BaseException) -> str:
    """The error code of a Redis error reply with its meaning, e.g. "OOM: Redis is full (maxmemory)"."""
    code = next((c for cls, c in REFUSAL_CLASSES.items() if isinstance(exc, cls)), None)
    if code is None:
        found = re.search(r"(?:^|[\s-])(" + "|".join(REFUSAL_REASONS) + r")\b", str(exc))
        code = found.group(1) if found else None
    return REFUSAL_REASONS[code] if code else "error reply: " + str(exc)[:120]


def as_problem(exc: Exception) -> HTTPProblem | None:
    """The HTTP answer for a known failure; None for a bug (a 500)."""
    if isinstance(exc, HTTPProblem):
        return exc
    if isinstance(exc, JobNotFound):
        return HTTPProblem(404, f"job {exc.args[0]} not found (unknown id, or its record expired)")
    if isinstance(exc, WrongState):
        needs = NEEDED_STATES.get(exc.operation)
        detail = f"{exc.operation} needs {needs}; this job is {exc.status}" if needs else str(exc)
        return HTTPProblem(409, detail, fields={"status": exc.status})
    if isinstance(exc, QueueFull):
        return HTTPProblem(429, f"{exc}; try again later", {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, RateLimited):
        return HTTPProblem(429, str(exc), {"Retry-After": str(max(1, -(-exc.retry_after_ms // 1000)))})
    if isinstance(exc, TooManyUnfinished):
        return HTTPProblem(429, f"{exc}; wait for some to finish", {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, IdempotencyConflict):
        return HTTPProblem(
            422,
            [{"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "idempotency_conflict"}],
            fields={"job_id": exc.job_id},
        )
    if isinstance(exc, ShardBusy):
        log.warning("cluster busy: %s", exc)
        return HTTPProblem(
            503,
            f"job store (Redis Cluster) is moving this job's shard ({exc}); nothing was stored, try again",
            {"Retry-After": "1"},
        )
    if isinstance(exc, ReplicasBehind):
        log.warning("replicas behind: %s", exc)
        return HTTPProblem(
            503,
            f"not acknowledged: {exc}. What was asked may still have been stored on the Redis primary (and kept,"
            " or lost in a failover): repeat it with the same Idempotency-Key, which is safe",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, UNAVAILABLE):
        log.warning("redis unavailable: %s", exc)
        return HTTPProblem(
            503,
            "job store (Redis) is unavailable or did not answer within REDIS_DEADLINE_SECONDS; try again (a submit"
            " sent to a stalled Redis may still be stored when it resumes: repeat it with the same Idempotency-Key)",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, REFUSED):
        # OOM at maxmemory, READONLY after a failover, MISCONF, NOPERM: scripts are refused before
        # their first write, so nothing was stored.
        log.error("redis refused a command: %s", exc)
        return HTTPProblem(
            503,
            f"job store (Redis) refused the command ({refusal_reason(exc)}); nothing was stored, try again later",
            {"Retry-After": str(RETRY_AFTER_S * 5)},
        )
    return None


def problem_response(problem: HTTPProblem) -> Response:
    return json_response({"detail": problem.detail, **problem.fields}, problem.status, problem.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_: Request, exc: Exception) -> Response:
        problem = as_problem(exc)
        if problem is None:
            raise exc
        return problem_response(problem)

    for error in (
        HTTPProblem,
        JobNotFound,
        WrongState,
        QueueFull,
        RateLimited,
        TooManyUnfinished,
        IdempotencyConflict,
        *UNAVAILABLE,
        *REFUSED,
    ):
        app.add_exception_handler(error, handle)

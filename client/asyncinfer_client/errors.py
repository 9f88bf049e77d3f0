"""Typed errors: one class per way a call or a job can end badly, so callers catch what they can handle.

No error ever carries request headers: the bearer token stays out of messages, reprs and tracebacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncinfer_client.views import JobView


class AsyncInferError(Exception):
    """Base of every error this package raises."""


class ConnectionFailed(AsyncInferError):
    """The service could not be reached (or stopped answering) and retries ran out."""


class APIError(AsyncInferError):
    """The service answered with an error status. `detail` is the body's `detail` (a string, or FastAPI's
    list of `{"loc", "msg", "type"}` for a 422)."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "", retry_after_s: float | None = None) -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        self.retry_after_s = retry_after_s
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}HTTP {status}: {_detail_text(detail)}")

    def __reduce__(self) -> tuple[Any, ...]:
        # subclasses keep the base signature, so pickling (multiprocessing, logging handlers) round-trips
        return (type(self), (self.status, self.detail, self.method, self.path, self.retry_after_s))


class AuthenticationError(APIError):
    """401: no token, or a token the service does not know (ASYNCINFER_TOKEN)."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(status, detail, method, path, retry_after_s)
        # the service speaks of the header; a user sets the token where this package reads it
        self.args = (f"{self.args[0]} (set ASYNCINFER_TOKEN, or Client(token=...), or asyncinfer --token-file FILE)",)


class PermissionDenied(APIError):
    """403: the token is valid but its role may not do this (admin routes)."""


class NotFound(APIError):
    """404: unknown job id (or another principal's, or its record expired), unknown model or route."""


class Conflict(APIError):
    """409: the job is not in a state that allows this (cancel a running job, retry a completed one)."""


class RateLimited(APIError):
    """429: queue full, rate limit or pending-job limit; `retry_after_s` says when to come back."""


class ServiceUnavailable(APIError):
    """503: the service is draining, overloaded or lost its Redis; `retry_after_s` when it said."""


class JobError(AsyncInferError):
    """A job ended without a result. `view` is the job as the service last showed it."""

    def __init__(self, view: JobView, message: str) -> None:
        self.view = view
        self.job_id = view.job_id
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.view,))


class JobFailed(JobError):
    """The job failed in the worker (every attempt); `error` is the worker's error text."""

    def __init__(self, view: JobView) -> None:
        self.error = view.error or "failed"
        # the service's own text may already say it ("failed after 3 attempts: ..."): say it once
        said = self.error.startswith("failed after ")
        super().__init__(
            view,
            f"job {view.job_id} {self.error}"
            if said
            else f"job {view.job_id} failed after {view.attempts} attempt(s): {self.error}",
        )


class JobCanceled(JobError):
    """The job was canceled before it started."""

    def __init__(self, view: JobView) -> None:
        super().__init__(view, f"job {view.job_id} was canceled")


class JobExpired(JobError):
    """The job was not started within the service's REQUEST_TTL_SECONDS."""

    def __init__(self, view: JobView) -> None:
        super().__init__(view, f"job {view.job_id} expired before a worker started it")


class Timeout(AsyncInferError, TimeoutError):
    """The job did not end within the time the caller gave; it may still end later (wait again)."""

    def __init__(self, job_id: str, timeout_s: float) -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        super().__init__(f"job {job_id} did not end within {timeout_s:g}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.timeout_s))


STATUS_ERRORS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
    503: ServiceUnavailable,
}


def _detail_text(detail: Any) -> str:
    """A 422's list of field errors as `body.data: msg; ...`, anything else as its text."""
    if isinstance(detail, list) and detail and all(isinstance(item, dict) and "msg" in item for item in detail):
        return "; ".join(f"{'.'.join(str(part) for part in item.get('loc', []))}: {item['msg']}" for item in detail)
    return str(detail)

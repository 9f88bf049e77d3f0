"""Python client of asyncinfer: `Client` (sync) and `AsyncClient` (asyncio) with the same methods, typed
errors, and the `asyncinfer` command-line tool (`asyncinfer_client.cli`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from asyncinfer_client.aio import AsyncClient, AsyncJob
from asyncinfer_client.client import Client, Job
from asyncinfer_client.errors import (
    APIError,
    AsyncInferError,
    AuthenticationError,
    Conflict,
    ConnectionFailed,
    JobCanceled,
    JobError,
    JobExpired,
    JobFailed,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    Timeout,
)
from asyncinfer_client.protocol import RetryPolicy
from asyncinfer_client.views import JobView, Outcome

try:
    __version__ = version("asyncinfer-client")
except PackageNotFoundError:  # imported from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncInferError",
    "AsyncJob",
    "AuthenticationError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Job",
    "JobCanceled",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobView",
    "NotFound",
    "Outcome",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "Timeout",
    "__version__",
]

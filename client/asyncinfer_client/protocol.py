"""The HTTP contract shared by `Client` and `AsyncClient`: request builders, response parsers and the retry
policy. Both clients do only the I/O around these, so their methods behave the same (redis-py keeps its sync
and asyncio clients over shared builders the same way)."""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import time
import uuid
from collections.abc import Collection, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from asyncinfer_client.errors import STATUS_ERRORS, APIError, ConnectionFailed, JobError, Timeout
from asyncinfer_client.views import JobView, Outcome

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "ASYNCINFER_URL"
TOKEN_ENV = "ASYNCINFER_TOKEN"
MAX_WAIT_S = 30  # the service holds a long poll or a `Prefer: wait` at most this long
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_CHUNK_SIZE = 100  # items per bulk request: well under MAX_BULK_ITEMS (1000) and MAX_BODY_BYTES
MAP_POLL_SLICE_S = 10.0  # shorter than MAX_WAIT_S so a stopped `map` notices within seconds
RETRY_STATUSES = frozenset({429, 503})
# a bulk request refused as a whole for what it holds (not for who sent it): each item is rejected, `map` goes on
CHUNK_REJECTED_STATUSES = frozenset({400, 413, 422})


def default_url() -> str:
    """ASYNCINFER_URL, else the local stack's address."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def default_token() -> str | None:
    """ASYNCINFER_TOKEN, else no token (a service without AUTH_TOKENS_FILE)."""
    return os.environ.get(TOKEN_ENV) or None


def new_idempotency_key() -> str:
    """One key per submit, created before the first attempt and reused on every retry of it."""
    return str(uuid.uuid4())


class BearerAuth(httpx.Auth):
    """Adds `Authorization: Bearer ...` to each request; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on connection errors and on 429/503, with exponential backoff and full jitter; a
    `Retry-After` from the service wins over the backoff (it knows when it will have room)."""

    max_retries: int = 5
    # a refused connection (nothing listens there: a wrong URL, a stopped service) is tried this many more
    # times only: enough to ride out a restart, short enough that a typo fails in about a second
    max_refused_retries: int = 2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0  # a longer Retry-After is followed only this far per attempt
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def backoff_s(self, attempt: int) -> float:
        """Full jitter (uniform in [0, base * 2^attempt], capped): clients that failed together spread out."""
        return self.rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    def delay_after_response(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before retrying this answer, or None to hand it to the caller."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            return self.backoff_s(attempt)
        # a little jitter on top, so clients told the same Retry-After do not return in one burst
        return min(retry_after, self.max_retry_after_s) + self.rng.uniform(0, 0.1 * max(retry_after, 0.5))

    def delay_after_error(self, attempt: int, exc: httpx.TransportError, resendable: bool) -> float | None:
        """Seconds to wait before retrying after a transport error, or None to give up.

        A request that never reached the service (connect errors) is always safe to send again. Others
        (read timeout, dropped connection) may have been applied: they are retried only when `resendable`,
        i.e. reads, or submits carrying an idempotency key.
        """
        if attempt >= (self.max_refused_retries if isinstance(exc, httpx.ConnectError) else self.max_retries):
            return None
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if not (never_sent or resendable):
            return None
        return self.backoff_s(attempt)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class Call:
    """One HTTP request to make: built by the shared code, sent by either client."""

    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None  # None: the client's request timeout
    resendable: bool = True  # safe to send again after an ambiguous transport error


def model_path(model: str | None, tail: str) -> str:
    """`/models/{model}/<tail>` for a named model, `/<tail>` for the service's default one."""
    return f"/models/{quote(model, safe='')}/{tail}" if model else f"/{tail}"


def metadata_path(model: str | None) -> str:
    """`/models/{model}` for a named model, `/metadata` for the default one."""
    return f"/models/{quote(model, safe='')}" if model else "/metadata"


def job_path(job_id: str, tail: str = "") -> str:
    return f"/job/{quote(job_id, safe='')}{tail}"


def submit_body(data: Any, priority: str | None, callback_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data}
    if priority is not None:
        body["priority"] = priority
    if callback_url is not None:
        body["callback_url"] = callback_url
    return body


def prefer_wait_s(wait: float) -> int:
    """`Prefer: wait=N` takes whole seconds up to MAX_WAIT_S."""
    return max(1, min(MAX_WAIT_S, math.ceil(wait)))


# Arrays larger than this go through the object store (POST /uploads, then `input_url`): the service's
# default MAX_BODY_BYTES, so anything a plain submit would be refused for is uploaded instead.
UPLOAD_ABOVE_BYTES = 1_048_576
UPLOAD_TIMEOUT_S = 600.0  # one PUT or GET of an object (up to the service's MAX_OBJECT_BYTES, 1 GiB)


def is_large_array(data: Any, limit: int) -> bool:
    """A numpy array (duck-typed: the SDK does not depend on numpy) too large to send inline."""
    return hasattr(data, "dtype") and hasattr(data, "tobytes") and int(getattr(data, "nbytes", 0)) > limit


def npy_bytes(array: Any) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def upload_call(model: str | None) -> Call:
    return Call("POST", model_path(model, "uploads"), None, {"format": "npy"})


def object_result(url: str, content: bytes) -> Any:
    """A result object's content: a dict of numpy arrays (.npz) or the JSON result."""
    if url.split("?", 1)[0].endswith(".npz"):
        import io

        import numpy as np

        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    return json.loads(content)


def submit_call(
    data: Any,
    model: str | None,
    priority: str | None,
    callback_url: str | None,
    idempotency_key: str,
    wait: float | None,
    input_url: str | None = None,
) -> Call:
    headers = {"Idempotency-Key": idempotency_key}
    timeout_s = None
    if wait:
        seconds = prefer_wait_s(wait)
        headers["Prefer"] = f"wait={seconds}"
        timeout_s = seconds + DEFAULT_REQUEST_TIMEOUT_S
    body = submit_body(data, priority, callback_url)
    if input_url is not None:  # the input is an uploaded object, not inline data
        del body["data"]
        body["input_url"] = input_url
    return Call("POST", model_path(model, "predict"), body, None, headers, timeout_s)


def submit_many_call(
    inputs: Sequence[Any],
    model: str | None,
    priority: str | None,
    callback_url: str | None,
    idempotency_key: str,
    item_keys: Sequence[str] | None = None,
) -> Call:
    """One bulk request; the service gives item i the key `<idempotency_key>:<i>`, so a retried bulk request
    replays the same jobs. `item_keys` give each item its own key instead (stable whatever the chunking)."""
    items = [submit_body(data, priority, callback_url) for data in inputs]
    if item_keys is not None:
        for item, key in zip(items, item_keys, strict=True):
            item["idempotency_key"] = key
    return Call("POST", model_path(model, "predict/batch"), {"items": items}, None, {"Idempotency-Key": idempotency_key})


def get_call(job_id: str, wait: float | None) -> Call:
    if not wait:
        return Call("GET", job_path(job_id))
    seconds = min(float(MAX_WAIT_S), max(0.001, wait))
    return Call("GET", job_path(job_id), params={"wait": f"{seconds:.3f}"}, timeout_s=seconds + DEFAULT_REQUEST_TIMEOUT_S)


def lookup_call(ids: Iterable[str]) -> Call:
    return Call("POST", "/jobs/lookup", {"ids": list(ids)})


def wait_slice_s(deadline: float | None, slice_max_s: float = MAX_WAIT_S) -> float | None:
    """How long the next long poll should hold: the time left, at most `slice_max_s`; None when none is left."""
    if deadline is None:
        return slice_max_s
    remaining = deadline - time.monotonic()
    return min(slice_max_s, remaining) if remaining > 0 else None


def connection_failed(base_url: str, call: Call, exc: httpx.TransportError) -> ConnectionFailed:
    """The error once retries ran out, naming the URL (the usual cause is a wrong one) and how to set it."""
    reason = "cannot connect" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
    return ConnectionFailed(
        f"{reason} to {base_url} ({call.method} {call.path}: {exc}); is the service running there? "
        f"Set {URL_ENV} (or --url) to its address"
    )


def error_for(response: httpx.Response) -> APIError:
    """The typed error for an error response, with the body's `detail` (or its text)."""
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text[:500] or response.reason_phrase
    cls = STATUS_ERRORS.get(response.status_code, APIError)
    return cls(
        response.status_code,
        detail,
        response.request.method,
        response.request.url.path,
        parse_retry_after(response.headers.get("retry-after")),
    )


def checked_json(response: httpx.Response) -> Any:
    """The body of a 2xx answer; a typed APIError for anything else."""
    if response.status_code >= 400:
        raise error_for(response)
    return response.json()


def finished_view(view: JobView) -> JobView:
    """The view of a job that ended; raise its typed error when it ended without a result."""
    error: JobError | None = view.error_for_outcome()
    if error is not None:
        raise error
    return view


def timed_out(job_id: str, timeout_s: float | None) -> Timeout:
    return Timeout(job_id, timeout_s or 0.0)


def submitted_item(body: dict[str, Any], call: Call, index: int) -> str | APIError:
    """One item of a bulk answer: the new job's id, or the error that refused that item."""
    if "error" in body:
        error = body["error"] or {}
        status = int(error.get("status", 422))
        return STATUS_ERRORS.get(status, APIError)(status, error.get("detail"), call.method, f"{call.path}[{index}]")
    return str(body["job_id"])


def lookup_items(body: dict[str, Any]) -> list[JobView | None]:
    """`POST /jobs/lookup` items in request order: a view, or None for an unknown id."""
    return [JobView.from_json(item) if item.get("found", True) and "status" in item else None for item in body["items"]]


def chunk_outcomes(
    job_indexes: dict[str, int], views: Sequence[JobView | None], ids: Sequence[str], replayed: Collection[str] = ()
) -> tuple[list[Outcome], list[str]]:
    """Split a lookup of `ids` into outcomes for the jobs that ended (or vanished) and ids still running;
    `replayed`: the jobs an earlier run had submitted."""
    done: list[Outcome] = []
    running: list[str] = []
    for job_id, view in zip(ids, views, strict=True):
        if view is None:
            error = STATUS_ERRORS[404](404, f"job {job_id} not found (its record expired?)", "POST", "/jobs/lookup")
            done.append(Outcome(job_indexes[job_id], job_id, "failed", None, error, replayed=job_id in replayed))
        elif view.terminal:
            done.append(Outcome.from_view(job_indexes[job_id], view, replayed=job_id in replayed))
        else:
            running.append(job_id)
    return done, running


def timeout_outcomes(
    job_indexes: dict[str, int], ids: Iterable[str], timeout_s: float | None, replayed: Collection[str] = ()
) -> list[Outcome]:
    return [
        Outcome(job_indexes[job_id], job_id, "timeout", None, timed_out(job_id, timeout_s), replayed=job_id in replayed)
        for job_id in ids
    ]


def rejected_outcome(index: int, error: APIError) -> Outcome:
    return Outcome(index, None, "rejected", None, error)


@dataclass
class SortedSubmission:
    """One bulk answer in `map`, sorted: jobs to wait for, items refused for good, items to send again."""

    accepted: dict[str, int] = field(default_factory=dict)  # job id -> input index
    rejected: list[Outcome] = field(default_factory=list)
    again: list[tuple[int, Any]] = field(default_factory=list)  # (input index, data)


def sort_submission(pending: Sequence[tuple[int, Any]], submitted: Sequence[str | APIError], can_retry: bool) -> SortedSubmission:
    """Items refused with 429/503 (the model's queue is full, or a moment's outage) made no job: while retries
    are left they go again in a later bulk request (with a new key); other refusals are final."""
    result = SortedSubmission()
    for (index, data), item in zip(pending, submitted, strict=True):
        if isinstance(item, str):
            result.accepted[item] = index
        elif item.status in RETRY_STATUSES and can_retry:
            result.again.append((index, data))
        else:
            result.rejected.append(rejected_outcome(index, item))
    return result


def http_options(base_url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """The httpx client settings both clients use (the transport aside)."""
    return {
        "base_url": base_url,
        "auth": BearerAuth(token) if token else None,
        "timeout": timeout,
        "headers": {"User-Agent": "asyncinfer-client"},
    }


def http_limits(max_connections: int) -> httpx.Limits:
    """The connection pool's bounds: every connection may stay open (`map` reuses them chunk after chunk)."""
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


def masked_repr(cls_name: str, base_url: str, token: str | None) -> str:
    """A client's repr: the URL, and only whether a token is set."""
    return f"{cls_name}(base_url={base_url!r}, token={'***' if token else None})"

"""Jobs: submit (one or many, any model, optionally waiting), read (with long-poll), look up, cancel, retry.

The route functions are thin: `submit_job` and `read_job` are plain coroutines that the hot path
(`api/hotpath.py`) calls directly with the same arguments, so both paths share one implementation.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from starlette.types import Receive

from api.auth import Principal, principal
from api.errors import HTTPProblem, as_problem, invalid, json_response
from api.objects import validated_object_job
from api.schemas import (
    BULK_REQUEST_SCHEMA,
    LOOKUP_REQUEST_SCHEMA,
    PREDICT_REQUEST_SCHEMA,
    BulkAnswer,
    ErrorBody,
    JobAccepted,
    JobView,
    LookupAnswer,
)
from api.state import AppState, get_state
from jobqueue.errors import JobNotFound, JobQueueError
from jobqueue.protocol import JobRecord, NewJob
from jobqueue.states import JobStatus
from jobqueue.views import job_view

router = APIRouter(tags=["jobs"])

MAX_WAIT_S = 30
MAX_JOB_ID = 64
MAX_IDEMPOTENCY_KEY = 200
SUBMIT_FIELDS = {"data", "priority", "callback_url"}
OBJECT_SUBMIT_FIELDS = SUBMIT_FIELDS | {"input_url"}
# a bulk item may name its own key: a client that resumes item by item (`asyncinfer run`) re-sends other chunks
BULK_ITEM_FIELDS = SUBMIT_FIELDS | {"idempotency_key"}
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)
JobId = Annotated[str, Path(max_length=MAX_JOB_ID, description="id returned by a submit")]
ModelName = Annotated[str, Path(max_length=40, description="a model name from GET /models")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY,
        description="same key (per principal) within the job TTL: same job; on a bulk submit item i uses `<key>:<i>`",
    ),
]
RetryKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY,
        description="same key (per principal and job) again: the same answer as the retry it made, never a second retry",
    ),
]
Prefer = Annotated[
    str | None,
    Header(alias="Prefer", description="`wait=N` (N <= 30): answer 200 with the finished job if it ends within N seconds"),
]
Caller = Annotated[Principal, Depends(principal)]
State = Annotated[AppState, Depends(get_state)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid bearer token"},
    404: {"model": ErrorBody, "description": "unknown or expired job (or another principal's)"},
}
_SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "with `Prefer: wait=N`: the job ended within N seconds"},
    401: {"model": ErrorBody, "description": "missing or invalid bearer token"},
    404: {"model": ErrorBody, "description": "unknown model"},
    413: {"model": ErrorBody, "description": "body larger than MAX_BODY_BYTES"},
    422: {"model": ErrorBody, "description": "input does not fit the model (`loc` names the field), or an idempotency conflict"},
    429: {"model": ErrorBody, "description": "queue full, rate limit or unfinished-jobs limit; see Retry-After"},
    503: {"model": ErrorBody, "description": "Redis unavailable or refusing writes, or the model not loaded; see Retry-After"},
}


async def read_body(request: Request, limit: int) -> bytes:
    return await collect_body(request.headers.get("content-length"), request.stream(), limit)


async def collect_body(declared: str | None, stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, or 413 as soon as it (or its declared Content-Length) exceeds `limit`."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(body: bytes, example: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(["body"], f"malformed JSON: {exc}", "json_invalid") from None
    if not isinstance(parsed, dict):
        raise invalid(["body"], f"body must be a JSON object like {example}", "model_attributes_type")
    return parsed


def submit_fields(item: Any, loc: tuple[str | int, ...], allowed: set[str] = SUBMIT_FIELDS) -> dict[str, Any]:
    """One submit's fields, checked for shape (the data itself is checked against the model later)."""
    if not isinstance(item, dict):
        raise invalid(list(loc), 'must be an object like {"data": [[...]]}', "model_attributes_type")
    if "data" not in item:
        raise invalid([*loc, "data"], "field required", "missing")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise invalid([*loc, unknown[0]], f"unknown field {unknown[0]!r}", "extra_forbidden")
    priority = item.get("priority", "normal")
    if not isinstance(priority, str):
        raise invalid([*loc, "priority"], "must be one of high, normal, low", "enum")
    if "callback_url" in item and not isinstance(item["callback_url"], str):
        raise invalid([*loc, "callback_url"], "must be a URL string", "string_type")
    return item


def bulk_item_key(item: dict[str, Any], request_key: str | None, index: int, loc: tuple[str | int, ...]) -> str | None:
    """A bulk item's idempotency key: its own `idempotency_key`, else `<Idempotency-Key>:<index>`, else none."""
    key = item.get("idempotency_key")
    if key is None:
        return f"{request_key}:{index}" if request_key else None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise invalid([*loc, "idempotency_key"], f"must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters", "string_type")
    return key


def prefer_wait(prefer: str | None) -> float | None:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped at MAX_WAIT_S; None without it."""
    if not prefer:
        return None
    match = PREFER_WAIT.search(prefer)
    if not match:
        return None
    return min(float(match.group(1)), MAX_WAIT_S) or None


def _disconnect_watch(receive: Receive | None) -> asyncio.Future[Any] | None:
    """A future done when the client goes away: the request body is read, so the next message
    the server has for us is http.disconnect."""
    if receive is None:
        return None

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return asyncio.ensure_future(watch())


async def wait_for_end(
    state: AppState, job_id: str, wait_s: float, receive: Receive | None, listening: asyncio.Future[str] | None = None
) -> JobRecord:
    disconnected = _disconnect_watch(receive)
    try:
        return await state.wait_for(job_id, wait_s, disconnected, listening)
    finally:
        if disconnected is not None:
            disconnected.cancel()


@dataclass(frozen=True)
class Submitted:
    """What a submit came to: the job (new, or the one an idempotent replay found), its state and,
    once it has ended, its record."""

    job_id: str
    created: bool
    status: JobStatus
    ended: JobRecord | None

    @property
    def replay_headers(self) -> dict[str, str]:
        """`Idempotent-Replayed: true` when the answer is about a job an earlier request made."""
        return {} if self.created else {"Idempotent-Replayed": "true"}


async def submit_and_wait(state: AppState, job: NewJob, wait_s: float | None, receive: Receive | None = None) -> Submitted:
    """Enqueue a validated job and wait up to `wait_s` for its end (every submit route: /predict, OIP).
    An idempotent replay's job may have ended long ago: it is read, waited on or not, so a replay
    answers the job's real state, not `pending`."""
    # listening before the job exists: its end cannot slip by, and a new job needs no first read
    listening = state.events.add(job.job_id, ends_only=True) if wait_s else None
    try:
        enqueued = await state.enqueue(job)
        if wait_s:
            # an existing job (an idempotent replay) is read first: we did not see it unfinished
            # a job refused by one shard's share of a limit went to another shard under a new id
            heard = listening if enqueued.created and enqueued.job_id == job.job_id else None
            record = await wait_for_end(state, enqueued.job_id, wait_s, receive, heard)
        elif not enqueued.created and enqueued.status.terminal:
            record = await state.store.get(enqueued.job_id)
        else:
            return Submitted(enqueued.job_id, enqueued.created, enqueued.status, None)
        return Submitted(enqueued.job_id, enqueued.created, record.status, record if record.status.terminal else None)
    finally:
        if listening is not None:
            state.events.discard(job.job_id, listening)


async def submit_job(
    state: AppState,
    caller: Principal,
    model_name: str | None,
    body: bytes,
    idempotency_key: str | None,
    prefer: str | None,
    receive: Receive | None = None,
) -> Response:
    """Validate and enqueue one job; 202 (or 200 with the finished job under `Prefer: wait`)."""
    parsed = json_object(body, '{"data": [[...]]}')
    if "input_url" in parsed:  # the input is an object in the store (issue #26): checked without downloading it
        fields = submit_fields({"data": None, **parsed}, ("body",), OBJECT_SUBMIT_FIELDS)
        if "data" in parsed:
            raise invalid(["body", "input_url"], "send either data or input_url, not both", "value_error")
        entry = state.models.require(model_name)
        job = await validated_object_job(
            state, caller.name, entry, fields["input_url"], fields.get("priority", "normal"), fields.get("callback_url"),
            idempotency_key,
        )  # fmt: skip
    else:
        fields = submit_fields(parsed, ("body",))
        entry = state.models.require(model_name)
        job = state.validated_job(
            caller.name,
            entry,
            fields["data"],
            fields.get("priority", "normal"),
            fields.get("callback_url"),
            idempotency_key,
            raw=body,
        )
    wait = prefer_wait(prefer)
    submitted = await submit_and_wait(state, job, wait, receive)
    headers = {"Location": f"/job/{submitted.job_id}", "Vary": "Prefer", **submitted.replay_headers}
    if wait:
        headers["Preference-Applied"] = f"wait={wait:g}"
        if submitted.ended is not None:
            return json_response(job_view(submitted.ended), 200, headers)
    return json_response({"job_id": submitted.job_id, "status": submitted.status, "model": entry.name}, 202, headers)


async def owned(state: AppState, caller: Principal, job_id: str) -> JobRecord:
    """The job's record when the caller may see it; another principal's job is "not found"."""
    record = await state.store.get(job_id)
    if not record.visible_to(caller.name, caller.admin):
        raise JobNotFound(job_id)
    return record


async def read_job(
    state: AppState, caller: Principal, job_id: str, wait: float | None, receive: Receive | None = None
) -> Response:
    if not wait:
        return json_response(job_view(await owned(state, caller, job_id)))
    # listening before the read: an end after it wakes us, so a running job is not read twice
    listening = state.events.add(job_id, ends_only=True)
    try:
        record = await owned(state, caller, job_id)
        if not record.status.terminal:
            record = await wait_for_end(state, job_id, wait, receive, listening)
        return json_response(job_view(record))
    finally:
        state.events.discard(job_id, listening)


_SUBMIT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": PREDICT_REQUEST_SCHEMA}}}}


@router.post(
    "/predict", status_code=202, response_model=JobAccepted, responses=_SUBMIT_ERRORS, openapi_extra=_SUBMIT_BODY,
    summary="Submit one job to the default model",
)  # fmt: skip
async def predict(
    request: Request, state: State, caller: Caller, idempotency_key: IdempotencyKey = None, prefer: Prefer = None
) -> Response:
    body = await read_body(request, state.settings.max_body_bytes)
    return await submit_job(state, caller, None, body, idempotency_key, prefer, request.receive)


@router.post(
    "/models/{model}/predict", status_code=202, response_model=JobAccepted, responses=_SUBMIT_ERRORS,
    openapi_extra=_SUBMIT_BODY, summary="Submit one job to a model",
)  # fmt: skip
async def predict_model(
    model: ModelName,
    request: Request,
    state: State,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Response:
    body = await read_body(request, state.settings.max_body_bytes)
    return await submit_job(state, caller, model, body, idempotency_key, prefer, request.receive)


@router.post(
    "/predict/test", status_code=202, response_model=JobAccepted, responses=_SUBMIT_ERRORS, summary="Submit a built-in sample"
)
async def predict_test(state: State, caller: Caller) -> Response:
    entry = state.models.require(None)
    body = orjson.dumps({"data": entry.require_signature().example_data()})
    return await submit_job(state, caller, None, body, None, None)


async def submit_bulk(
    state: AppState, caller: Principal, model_name: str | None, body: bytes, idempotency_key: str | None
) -> Response:
    """Each item validated on its own; the valid ones enqueued in one round trip; answers in order."""
    parsed = json_object(body, '{"items": [{"data": [[...]]}, ...]}')
    items = parsed.get("items")
    if not isinstance(items, list) or not items:
        raise invalid(["body", "items"], "must be a non-empty list of submits", "list_type")
    if len(items) > state.settings.max_bulk_items:
        raise invalid(
            ["body", "items"], f"at most {state.settings.max_bulk_items} items (MAX_BULK_ITEMS), got {len(items)}", "too_long"
        )
    unknown = sorted(set(parsed) - {"items"})
    if unknown:
        raise invalid(["body", unknown[0]], f"unknown field {unknown[0]!r}", "extra_forbidden")
    entry = state.models.require(model_name)
    answers: list[dict[str, Any] | None] = [None] * len(items)
    jobs: list[tuple[int, NewJob]] = []
    for i, item in enumerate(items):
        loc = ("body", "items", i)
        if not isinstance(item, dict):  # not a submit at all: the request itself is malformed
            raise invalid(list(loc), 'must be an object like {"data": [[...]]}', "model_attributes_type")
        try:
            fields = submit_fields(item, loc, BULK_ITEM_FIELDS)
            key = bulk_item_key(fields, idempotency_key, i, loc)
            jobs.append((i, state.validated_job(caller.name, entry, fields["data"], fields.get("priority", "normal"),
                                                fields.get("callback_url"), key, loc, raw=body)))  # fmt: skip
        except HTTPProblem as problem:
            if problem.status != 422:
                raise
            answers[i] = {"error": {"status": 422, "detail": problem.detail}}
    results = await state.store.enqueue_many([job for _, job in jobs]) if jobs else []
    for (i, _), result in zip(jobs, results, strict=True):
        if isinstance(result, JobQueueError):
            refusal = as_problem(result)
            assert refusal is not None
            answers[i] = {"error": {"status": refusal.status, "detail": refusal.detail}}
        else:
            answer: dict[str, Any] = {"job_id": result.job_id, "status": result.status}
            if not result.created:
                answer["replayed"] = True
            answers[i] = answer
    return json_response({"items": answers, "model": entry.name})


_BULK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": BULK_REQUEST_SCHEMA}}}}
_BULK_ERRORS = {k: v for k, v in _SUBMIT_ERRORS.items() if k != 200}


@router.post("/predict/batch", response_model=BulkAnswer, responses=_BULK_ERRORS, openapi_extra=_BULK_BODY,
             summary="Submit up to MAX_BULK_ITEMS jobs to the default model")  # fmt: skip
async def predict_batch(request: Request, state: State, caller: Caller, idempotency_key: IdempotencyKey = None) -> Response:
    body = await read_body(request, state.settings.max_body_bytes)
    return await submit_bulk(state, caller, None, body, idempotency_key)


@router.post("/models/{model}/predict/batch", response_model=BulkAnswer, responses=_BULK_ERRORS, openapi_extra=_BULK_BODY,
             summary="Submit up to MAX_BULK_ITEMS jobs to a model")  # fmt: skip
async def predict_model_batch(
    model: ModelName, request: Request, state: State, caller: Caller, idempotency_key: IdempotencyKey = None
) -> Response:
    body = await read_body(request, state.settings.max_body_bytes)
    return await submit_bulk(state, caller, model, body, idempotency_key)


@router.post(
    "/jobs/lookup", response_model=LookupAnswer, responses={401: _ERRORS[401], 422: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": LOOKUP_REQUEST_SCHEMA}}}},
    summary="Views of many jobs in one request, in the order asked",
)  # fmt: skip
async def lookup_jobs(request: Request, state: State, caller: Caller) -> Response:
    parsed = json_object(await read_body(request, state.settings.max_body_bytes), '{"ids": ["..."]}')
    unknown = sorted(set(parsed) - {"ids"})
    if unknown:
        raise invalid(["body", unknown[0]], f"unknown field {unknown[0]!r}", "extra_forbidden")
    ids = parsed.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= MAX_JOB_ID for i in ids):
        raise invalid(["body", "ids"], f"must be a list of job ids (strings of 1..{MAX_JOB_ID} characters)", "list_type")
    if len(ids) > state.settings.max_bulk_items:
        raise invalid(["body", "ids"], f"at most {state.settings.max_bulk_items} ids (MAX_BULK_ITEMS)", "too_long")
    records = await state.store.get_many(ids)
    items = [
        job_view(r) if r is not None and r.visible_to(caller.name, caller.admin) else {"job_id": job_id, "found": False}
        for job_id, r in zip(ids, records, strict=True)
    ]
    return json_response({"items": items})


@router.get("/job/{job_id}", response_model=JobView, responses=_ERRORS, summary="Job state and result")
async def get_job(
    job_id: JobId,
    request: Request,
    state: State,
    caller: Caller,
    wait: Annotated[float | None, Query(gt=0, le=MAX_WAIT_S, description="seconds to hold until the job ends")] = None,
) -> Response:
    return await read_job(state, caller, job_id, wait, request.receive)


@router.delete(
    "/job/{job_id}", response_model=JobView, responses={**_ERRORS, 409: {"model": ErrorBody}}, summary="Cancel a pending job"
)
async def cancel_job(job_id: JobId, state: State, caller: Caller) -> Response:
    await state.store.cancel(await owned(state, caller, job_id))
    return json_response(job_view(await state.store.get(job_id)))


@router.post(
    "/job/{job_id}/retry",
    status_code=202,
    response_model=JobView,
    responses={**_ERRORS, 409: {"model": ErrorBody}, 429: _SUBMIT_ERRORS[429]},
    summary="Re-queue a failed or expired job (counts like a submit)",
)
async def retry_job(job_id: JobId, state: State, caller: Caller, idempotency_key: RetryKey = None) -> Response:
    # The token retry.lua stores with the retry it made: the request sent again (by our Redis client
    # after a lost reply, or by the caller with the same Idempotency-Key) answers 202 again, never twice.
    token = f"key:{caller.name}:{idempotency_key}" if idempotency_key else uuid.uuid4().hex
    retried = await state.store.retry(await owned(state, caller, job_id), token)
    headers = {"Location": f"/job/{job_id}"}
    if idempotency_key and not retried.created:  # our own resend is no replay to the caller
        headers["Idempotent-Replayed"] = "true"
    return json_response(job_view(await state.store.get(job_id)), 202, headers)

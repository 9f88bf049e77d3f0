"""Jobs: submit, read (with long-poll), cancel, retry."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response

from api.errors import HTTPProblem, invalid, json_response
from api.schemas import PREDICT_REQUEST_SCHEMA, ErrorBody, JobAccepted, JobView
from api.state import AppState, get_state
from jobqueue.model_signature import InputError, parse_input
from jobqueue.protocol import JobRecord, epoch_ms_to_iso

router = APIRouter(tags=["jobs"])

LONG_POLL_RECHECK_S = 2.0  # re-read the record this often while waiting, in case a wake-up was missed
MAX_WAIT_S = 30
MAX_JOB_ID = 64
MAX_IDEMPOTENCY_KEY = 200
JobId = Annotated[str, Path(max_length=MAX_JOB_ID, description="id returned by POST /predict")]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY, description="same key within the job TTL: same job"),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown or expired job"},
}
_SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "body larger than MAX_BODY_BYTES"},
    422: {"model": ErrorBody, "description": "input does not fit the model; `loc` names the field"},
    429: {"model": ErrorBody, "description": "queue at MAX_QUEUE_LENGTH; see Retry-After"},
    503: {"model": ErrorBody, "description": "Redis unavailable; see Retry-After"},
}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def _validated_payload(body: bytes, state: AppState) -> bytes:
    """The job's stored input: the request's `data`, checked against the model signature."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(["body"], f"malformed JSON: {exc}", "json_invalid") from None
    if not isinstance(parsed, dict):
        raise invalid(["body"], "body must be a JSON object like {\"data\": [[...]]}", "model_attributes_type")
    if "data" not in parsed:
        raise invalid(["body", "data"], "field required", "missing")
    unknown = sorted(set(parsed) - {"data"})
    if unknown:
        raise invalid(["body", unknown[0]], f"unknown field {unknown[0]!r}", "extra_forbidden")
    try:
        parse_input(parsed["data"], state.require_signature(), state.settings.max_rows_per_job)
    except InputError as exc:
        raise invalid(exc.loc, exc.msg) from None
    return orjson.dumps({"data": parsed["data"]})


async def _enqueue(state: AppState, payload: bytes, idempotency_key: str | None) -> Response:
    job_id, created = await state.queue.enqueue(str(uuid.uuid4()), payload.decode(), idempotency_key)
    headers = {"Location": f"/job/{job_id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response({"job_id": job_id, "status": "pending"}, 202, headers)


@router.post(
    "/predict",
    status_code=202,
    response_model=JobAccepted,
    responses=_SUBMIT_ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PREDICT_REQUEST_SCHEMA}}}},
    summary="Submit one job (one or more input rows)",
)
async def predict(
    request: Request, state: Annotated[AppState, Depends(get_state)], idempotency_key: IdempotencyKey = None
) -> Response:
    body = await _read_body(request, state.settings.max_body_bytes)
    return await _enqueue(state, _validated_payload(body, state), idempotency_key)


@router.post(
    "/predict/test", status_code=202, response_model=JobAccepted, responses=_SUBMIT_ERRORS, summary="Submit a built-in sample"
)
async def predict_test(state: Annotated[AppState, Depends(get_state)]) -> Response:
    return await _enqueue(state, orjson.dumps({"data": state.require_signature().example_data()}), None)


def _view(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "status": record.status,
        "result": orjson.loads(record.result) if record.result is not None else None,
        "error": record.error,
        "created_at": epoch_ms_to_iso(record.created_at),
        "started_at": epoch_ms_to_iso(record.started_at),
        "finished_at": epoch_ms_to_iso(record.finished_at),
        "attempts": record.attempts,
    }


async def _wait_terminal(state: AppState, job_id: str, record: JobRecord, wait_s: float) -> JobRecord:
    """Hold until the job ends or `wait_s` passes; woken by Pub/Sub, not by polling Redis."""
    deadline = time.monotonic() + wait_s
    future = state.waiters.add(job_id)
    try:
        record = await state.queue.get(job_id)  # re-read after subscribing: no wake-up is missed
        while not record.status.terminal and not state.draining:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(asyncio.shield(future), min(remaining, LONG_POLL_RECHECK_S))
            except TimeoutError:
                pass
            record = await state.queue.get(job_id)
            if future.done():
                future = state.waiters.add(job_id)
    finally:
        state.waiters.discard(job_id, future)
    return record


@router.get("/job/{job_id}", response_model=JobView, responses=_ERRORS, summary="Job state and result")
async def get_job(
    job_id: JobId,
    state: Annotated[AppState, Depends(get_state)],
    wait: Annotated[float | None, Query(gt=0, le=MAX_WAIT_S, description="seconds to hold until the job ends")] = None,
) -> Response:
    record = await state.queue.get(job_id)
    if wait and not record.status.terminal:
        record = await _wait_terminal(state, job_id, record, wait)
    return json_response(_view(record))


@router.delete("/job/{job_id}", response_model=JobView, responses={**_ERRORS, 409: {"model": ErrorBody}}, summary="Cancel a pending job")
async def cancel_job(job_id: JobId, state: Annotated[AppState, Depends(get_state)]) -> Response:
    await state.queue.cancel(job_id)
    return json_response(_view(await state.queue.get(job_id)))


@router.post(
    "/job/{job_id}/retry",
    status_code=202,
    response_model=JobView,
    responses={**_ERRORS, 409: {"model": ErrorBody}, 429: {"model": ErrorBody}},
    summary="Re-queue a failed or expired job",
)
async def retry_job(job_id: JobId, state: Annotated[AppState, Depends(get_state)]) -> Response:
    await state.queue.retry(job_id)
    return json_response(_view(await state.queue.get(job_id)), 202, {"Location": f"/job/{job_id}"})

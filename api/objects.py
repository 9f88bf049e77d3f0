"""Submits by `input_url` (issue #26): what the API checks of an input object without downloading it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from api.errors import HTTPProblem, invalid
from api.state import AppState, ModelEntry
from jobqueue.objectstore import ObjectRef, ObjectRejected, ObjectStore, StoreUnavailable, check_against, single_input
from jobqueue.protocol import NewJob
from jobqueue.settings import Settings

RETRY_AFTER_S = 5  # the store being down is rarely a matter of one second


def store_unavailable(exc: StoreUnavailable) -> HTTPProblem:
    return HTTPProblem(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})


def require_store(state: AppState, loc: list[str | int]) -> ObjectStore:
    if state.objects is None:
        raise invalid(loc, "object storage is not configured on this service (OBJECT_STORE_URL)")
    return state.objects


async def validated_object_job(
    state: AppState,
    owner: str,
    entry: ModelEntry,
    input_url: Any,
    priority: str,
    callback_url: str | None,
    idempotency_key: str | None,
) -> NewJob:
    """A job whose input is an object: allowed location, size (HEAD) and, for an .npy, dtype and row
    shape against the model (a ranged GET of its header); 422 naming `input_url`, 503 when the store is down."""
    loc: list[str | int] = ["body", "input_url"]
    store = require_store(state, loc)
    if not isinstance(input_url, str):
        raise invalid(loc, "must be an s3://bucket/key URL string", "string_type")
    try:
        ref = ObjectRef.parse(input_url)
    except ValueError as exc:
        raise invalid(loc, str(exc)) from None
    if not store.permits(ref):
        allowed = ", ".join(f"s3://{a.bucket}/{a.prefix}" for a in store.allowed)
        raise invalid(loc, f"{ref.url} is outside the buckets and prefixes this service reads ({allowed})")
    signature = entry.require_signature()
    try:
        info = await asyncio.to_thread(store.inspect, ref)
        if info.npy is not None:
            check_against(info.npy, single_input(signature, ref.url), ref.url)
    except ObjectRejected as exc:
        raise invalid(loc, str(exc)) from None
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    payload = orjson.dumps({"input_url": ref.url}).decode()
    return state.new_job(owner, entry, payload, priority, callback_url, idempotency_key, ("body",))


def upload_deletion_ms(settings: Settings) -> int:
    """When an object handed out for an input now goes: once any job it can feed has ended and expired."""
    s = settings
    expires_at = time.time() + s.presign_expiry_seconds
    return int((expires_at + s.request_ttl_seconds + s.job_timeout_seconds * 2 + s.job_ttl_seconds) * 1000)


async def stored_input(state: AppState, content: bytes, fmt: str, model: str) -> ObjectRef:
    """An input the API received whole (an OIP request's binary tensors) written as an input object, so
    Redis keeps only its reference; scheduled for deletion as an upload is. 503 when the store does
    not take it (nothing then refers to the object). The key is the content's hash: a replay names the
    same object."""
    store = require_store(state, ["body"])
    ref = store.content_ref(content, fmt)
    await state.store.schedule_object_deletion(ref.key, upload_deletion_ms(state.settings), model)
    try:
        await asyncio.to_thread(store.put, ref, content, "application/octet-stream")
    except (StoreUnavailable, ObjectRejected) as exc:  # a write refused is the service's configuration, not the request
        raise store_unavailable(StoreUnavailable(str(exc))) from None
    return ref


async def read_result_object(state: AppState, url: str, limit: int) -> bytes | None:
    """A result object's bytes when it holds at most `limit` bytes, else None (it is never read then)."""
    store = require_store(state, ["result"])
    ref = ObjectRef.parse(url)

    def read() -> bytes | None:
        size = store.head(ref)
        return None if size > limit else store.read_range(ref, 0, size) if size else b""

    try:
        return await asyncio.to_thread(read)
    except (StoreUnavailable, ObjectRejected) as exc:
        raise store_unavailable(StoreUnavailable(str(exc))) from None

"""POST /uploads: a presigned PUT URL for a large input, and the `input_url` to submit it with (issue #26)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from api.auth import Principal, principal
from api.errors import json_response
from api.objects import require_store, store_unavailable, upload_deletion_ms
from api.schemas import ErrorBody, UploadGrant
from api.state import AppState, get_state
from jobqueue.objectstore import StoreUnavailable

router = APIRouter(tags=["uploads"])
State = Annotated[AppState, Depends(get_state)]
Caller = Annotated[Principal, Depends(principal)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid bearer token"},
    404: {"model": ErrorBody, "description": "unknown model"},
    422: {"model": ErrorBody, "description": "object storage is not configured (OBJECT_STORE_URL), or a bad format"},
    503: {"model": ErrorBody, "description": "the object store does not answer; see Retry-After"},
}
Format = Annotated[Literal["npy", "npz", "json"], Query(description="what the object will hold: .npy, .npz or a JSON body")]


async def new_upload(state: AppState, model_name: str | None, fmt: str) -> Response:
    """An upload key under OBJECT_STORE_URL, scheduled for deletion once any job it feeds can have
    ended and expired; 503 when the store does not answer (nothing is scheduled then)."""
    store = require_store(state, ["query", "format"])
    entry = state.models.require(model_name)
    try:
        await asyncio.to_thread(store.reachable)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    ref = store.upload_ref(fmt)
    s = state.settings
    await state.store.schedule_object_deletion(ref.key, upload_deletion_ms(s), entry.name)
    return json_response(
        {
            "upload_url": store.presign_put(ref),
            "method": "PUT",
            "input_url": ref.url,
            "model": entry.name,
            "expires_in": s.presign_expiry_seconds,
        },
        201,
    )


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadGrant,
    responses=_ERRORS,
    summary="A presigned PUT URL for a large input to the default model",
)
async def upload(state: State, _: Caller, format: Format = "npy") -> Response:
    return await new_upload(state, None, format)


@router.post(
    "/models/{model}/uploads",
    status_code=201,
    response_model=UploadGrant,
    responses=_ERRORS,
    summary="A presigned PUT URL for a large input to a model",
)
async def upload_model(model: Annotated[str, Path(max_length=40)], state: State, _: Caller, format: Format = "npy") -> Response:
    return await new_upload(state, model, format)

"""Admin routes for webhook notifications: list given-up deliveries, resend one (role admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from api.auth import admin
from api.errors import json_response
from api.schemas import ErrorBody
from api.state import AppState, get_state
from jobqueue.notifications import MAX_FAILED_NOTIFICATIONS, NotificationStore

router = APIRouter(prefix="/admin/notifications", tags=["admin"], dependencies=[Depends(admin)])

MAX_JOB_ID = 64  # as api/routes/jobs.py: ids are uuid4 strings
DEFAULT_LIMIT = 100
EXTRAS_KEY = "notifications"


async def get_notification_store(state: Annotated[AppState, Depends(get_state)]) -> NotificationStore:
    """One NotificationStore per app, on the API's Redis client (built on first use: registering the
    scripts does no I/O)."""
    store = state.extras.get(EXTRAS_KEY)
    if store is None:
        jobs = state.store
        store = state.extras[EXTRAS_KEY] = NotificationStore(
            jobs.client, state.settings, jobs.node_client, lambda: jobs.tags.all()
        )
    return store


Store = Annotated[NotificationStore, Depends(get_notification_store)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "needs an admin token"},
    404: {"model": ErrorBody, "description": "unknown or expired job"},
    409: {"model": ErrorBody, "description": "the job has not finished, or has no callback_url"},
}


@router.get("/failed", responses={403: _ERRORS[403]}, summary="Jobs whose webhook delivery was given up, newest first")
async def failed_notifications(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=MAX_FAILED_NOTIFICATIONS, description="most items returned")] = DEFAULT_LIMIT,
) -> Response:
    return json_response({"items": await store.failed(limit)})


@router.post("/{job_id}/resend", status_code=202, responses=_ERRORS, summary="Deliver a finished job's webhook again")
async def resend_notification(store: Store, job_id: Annotated[str, Path(max_length=MAX_JOB_ID)]) -> Response:
    state = await store.resend(job_id)  # JobNotFound -> 404, WrongState -> 409 (api/errors.py)
    return json_response({"job_id": job_id, "notification": {"state": state, "attempts": 0}}, 202, {"Location": f"/job/{job_id}"})

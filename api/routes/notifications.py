"""Admin routes for webhook notifications: list given-up deliveries, resend one.

The app's lifespan sets `app.state.notifications = NotificationStore(client, settings)`; the router is
included with the admin dependency (role admin), e.g.
`app.include_router(notifications.router, dependencies=[Depends(require_admin)])`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from api.errors import HTTPProblem, json_response
from jobqueue.notifications import MAX_FAILED_NOTIFICATIONS, NotificationStore

router = APIRouter(prefix="/admin/notifications", tags=["admin"])

MAX_JOB_ID = 64  # as api/routes/jobs.py: ids are uuid4 strings
DEFAULT_LIMIT = 100


async def get_notification_store(request: Request) -> NotificationStore:
    """The store the lifespan built; async so FastAPI does not hop to a thread for it."""
    store = getattr(request.app.state, "notifications", None)
    if store is None:
        raise HTTPProblem(503, "notifications are not set up in this API process")
    return store


Store = Annotated[NotificationStore, Depends(get_notification_store)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown or expired job"},
    409: {"description": "the job has not finished, or has no callback_url"},
}


@router.get("/failed", summary="Jobs whose webhook delivery was given up, newest first")
async def failed_notifications(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=MAX_FAILED_NOTIFICATIONS, description="most items returned")] = DEFAULT_LIMIT,
) -> Response:
    return json_response({"items": await store.failed(limit)})


@router.post("/{job_id}/resend", status_code=202, responses=_ERRORS, summary="Deliver a finished job's webhook again")
async def resend_notification(store: Store, job_id: Annotated[str, Path(max_length=MAX_JOB_ID)]) -> Response:
    state = await store.resend(job_id)  # JobNotFound -> 404, WrongState -> 409 (api/errors.py)
    return json_response({"job_id": job_id, "notification": {"state": state, "attempts": 0}}, 202)

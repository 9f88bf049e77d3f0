"""Admin routes (role admin): queue overview, dead letters and retry-all, one job in detail, pause and
resume a model's queue; and the web console at /console that calls them."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path
from fastapi import Query as QueryParam
from fastapi.responses import Response

from api.auth import admin as admin_principal
from api.errors import HTTPProblem, json_response
from api.schemas import ErrorBody
from api.state import AppState, get_state
from jobqueue import admin
from jobqueue.errors import JobNotFound
from jobqueue.protocol import epoch_ms_to_iso
from jobqueue.views import job_view

MAX_DEAD_LETTERS_PAGE = 1000
# The console is static: it may only load its own files and call this origin (no inline script, no CDN).
CONSOLE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
CONSOLE_FILES = {"index.html": "text/html; charset=utf-8", "console.css": "text/css", "console.js": "text/javascript"}


State = Annotated[AppState, Depends(get_state)]
# Every admin route can refuse the caller, and those taking a model or job name can not find it.
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that is not JSON"},
    401: {"model": ErrorBody, "description": "missing or invalid bearer token"},
    403: {"model": ErrorBody, "description": "not an admin token"},
    404: {"model": ErrorBody, "description": "unknown model or job"},
}
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin_principal)], responses=_ADMIN_ERRORS)
console_router = APIRouter(tags=["admin"], include_in_schema=False)


def served_models(state: AppState, name: str | None) -> list[str]:
    """[name] when given (404 naming the known models otherwise), else every served model."""
    return [state.models.require(name).name] if name else state.models.names()


def admin_view(job: admin.AdminJob) -> dict[str, Any]:
    """The contract's job view plus what an operator needs: input size, queue time, worker, owner."""
    return {
        **job_view(job.record),
        "queued_at": epoch_ms_to_iso(job.queued_at),
        "requeued_at": epoch_ms_to_iso(job.requeued_at),
        "input_bytes": job.input_bytes,
        "worker": job.worker,
        "owner": job.record.owner,
    }


@router.get("/overview", summary="Every model's queue: pending by priority, in flight, dead letters, workers, stats")
async def overview(state: State) -> Response:
    o = await admin.store_overview(state.store, state.models.names())
    return json_response(
        {
            "now": epoch_ms_to_iso(o.now_ms),
            "models": [m.as_dict() for m in o.models],
            "redis": {"memory_used_bytes": o.redis_memory_used_bytes, "memory_max_bytes": o.redis_memory_max_bytes},
            "notifications": {"pending": o.notify_pending, "failed": o.notify_failed},
        }
    )


@router.get("/dead-letters", summary="Dead-lettered jobs, newest first per model, with their error text")
async def dead_letters(
    state: State,
    model: Annotated[str | None, QueryParam(description="one model; default: all")] = None,
    limit: Annotated[int, QueryParam(ge=1, le=MAX_DEAD_LETTERS_PAGE, description="most jobs per model")] = 50,
) -> Response:
    jobs = await admin.store_dead_letters(state.store, served_models(state, model), limit)
    return json_response({"items": [admin_view(job) for job in jobs]})


@router.post("/dead-letters/retry", summary="Put every failed or expired dead letter back on its pending list")
async def retry_dead_letters(
    state: State,
    body: Annotated[dict[str, str] | None, Body(examples=[{"model": "iris"}], description='{"model"?: name}')] = None,
) -> Response:
    retrier = admin.DeadLetterRetrier(state.store)
    retried = 0
    for model in served_models(state, (body or {}).get("model")):
        retried += await retrier.retry(model)
    return json_response({"retried": retried})


@router.get("/jobs/{job_id}", summary="One job in detail: the job view plus input size, queue time, worker, owner")
async def job_detail(state: State, job_id: Annotated[str, Path(max_length=64)]) -> Response:
    job = await admin.store_job(state.store, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return json_response(admin_view(job))


@router.post("/models/{name}/pause", summary="Stop workers claiming this model's jobs (pending jobs stay queued)")
async def pause(state: State, name: str) -> Response:
    await admin.store_pause(state.store, served_models(state, name)[0], paused=True)
    return json_response({"name": name, "paused": True})


@router.post("/models/{name}/resume", summary="Let workers claim this model's jobs again")
async def resume(state: State, name: str) -> Response:
    await admin.store_pause(state.store, served_models(state, name)[0], paused=False)
    return json_response({"name": name, "paused": False})


def _console_file(name: str) -> bytes:
    return resources.files("api").joinpath("console", name).read_bytes()


@console_router.get("/console")
async def console_page() -> Response:
    """The console page. It loads without a token and asks for one; its data calls need an admin token."""
    return Response(_console_file("index.html"), media_type=CONSOLE_FILES["index.html"], headers=CONSOLE_HEADERS)


@console_router.get("/console/{asset}")
async def console_asset(asset: str) -> Response:
    if asset not in CONSOLE_FILES or asset == "index.html":
        raise HTTPProblem(404, "not found")
    return Response(_console_file(asset), media_type=CONSOLE_FILES[asset], headers=CONSOLE_HEADERS)

"""Admin routes (role admin): queue overview, dead letters and retry-all, one job in detail, pause and
resume a model's queue; and the web console at /console that calls them."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response

from api.errors import HTTPProblem, json_response
from jobqueue import admin
from jobqueue.keys import StoreKeys
from jobqueue.protocol import epoch_ms_to_iso

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


@dataclass(frozen=True)
class AdminContext:
    """What the admin routes need from the app: a Redis client, the key layout, the models, limits."""

    client: Any  # redis.asyncio.Redis
    keys: StoreKeys
    models: tuple[str, ...]
    job_ttl_seconds: int
    max_queue_length: int

    def model(self, name: str) -> str:
        """`name` if it is a served model, else a 404 naming the known ones."""
        if name not in self.models:
            raise HTTPProblem(404, f"unknown model {name!r}; known: {', '.join(self.models)}")
        return name


async def admin_context(request: Request) -> AdminContext:
    """The admin view of the app's state."""
    state = request.app.state.asyncinfer
    settings = state.settings
    return AdminContext(
        client=state.queue.client,
        keys=StoreKeys(settings.key_prefix),
        models=tuple(state.model_names),
        job_ttl_seconds=settings.job_ttl_seconds,
        max_queue_length=settings.max_queue_length,
    )


async def require_admin(request: Request) -> None:
    """Admin role required (401 without a valid token, 403 with a client token)."""
    await request.app.state.asyncinfer.require_admin(request)


Context = Annotated[AdminContext, Depends(admin_context)]
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
console_router = APIRouter(tags=["admin"], include_in_schema=False)


def _json_or_none(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def job_view(record: dict[str, Any]) -> dict[str, Any]:
    """The contract's job view of a raw record, plus what an operator needs: input size, queue time,
    worker and owner."""
    notification = None
    if record.get("notify_state"):
        notification = {
            "state": record["notify_state"],
            "attempts": int(record.get("notify_attempts") or 0),
            "last_status": int(record["notify_last_status"]) if record.get("notify_last_status") else None,
            "last_error": record.get("notify_last_error"),
        }

    def iso(name: str) -> str | None:
        value = record.get(name)
        return epoch_ms_to_iso(int(value)) if value else None

    return {
        "job_id": record["job_id"],
        "status": record["status"],
        "model": record.get("model"),
        "model_version": record.get("model_version"),
        "priority": record.get("priority") or "normal",
        "result": _json_or_none(record.get("result")),
        "error": record.get("error"),
        "attempts": int(record.get("attempts") or 0),
        "created_at": iso("created_at"),
        "started_at": iso("started_at"),
        "finished_at": iso("finished_at"),
        "notification": notification,
        "queued_at": iso("queued_at"),
        "input_bytes": record.get("input_bytes", 0),
        "worker": record.get("worker"),
        "owner": record.get("owner"),
    }


@router.get("/overview", summary="Every model's queue: pending by priority, in flight, dead letters, workers, stats")
async def overview(ctx: Context) -> Response:
    o = await admin.overview(ctx.client, ctx.keys, ctx.models)
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
    ctx: Context,
    model: Annotated[str | None, Query(description="one model; default: all")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_DEAD_LETTERS_PAGE, description="most jobs per model")] = 50,
) -> Response:
    models = [ctx.model(model)] if model else list(ctx.models)
    records = await admin.dead_letters(ctx.client, ctx.keys, models, limit)
    return json_response({"items": [job_view(r) for r in records]})


@router.post("/dead-letters/retry", summary="Put every failed or expired dead letter back on its pending list")
async def retry_dead_letters(
    ctx: Context,
    body: Annotated[dict[str, str] | None, Body(examples=[{"model": "iris"}], description='{"model"?: name}')] = None,
) -> Response:
    name = (body or {}).get("model")
    models = [ctx.model(name)] if name else list(ctx.models)
    retrier = admin.DeadLetterRetrier(ctx.client, ctx.keys, ctx.job_ttl_seconds, ctx.max_queue_length)
    return json_response({"retried": await retrier.retry(models)})


@router.get("/jobs/{job_id}", summary="One job in detail: the job view plus input size, queue time, worker, owner")
async def job_detail(ctx: Context, job_id: Annotated[str, Path(max_length=64)]) -> Response:
    (record,) = await admin.jobs(ctx.client, ctx.keys, [job_id])
    if record is None:
        raise HTTPProblem(404, f"job {job_id} not found (unknown id, or its record expired)")
    return json_response(job_view(record))


@router.post("/models/{name}/pause", summary="Stop workers claiming this model's jobs (pending jobs stay queued)")
async def pause(ctx: Context, name: str) -> Response:
    await admin.pause(ctx.client, ctx.keys.model(ctx.model(name)))
    return json_response({"name": name, "paused": True})


@router.post("/models/{name}/resume", summary="Let workers claim this model's jobs again")
async def resume(ctx: Context, name: str) -> Response:
    await admin.resume(ctx.client, ctx.keys.model(ctx.model(name)))
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

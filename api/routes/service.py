"""Service endpoints: index, liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from api.auth import Principal, admin
from api.errors import json_response
from api.schemas import ErrorBody, ServiceInfo
from api.state import AppState, get_state
from jobqueue import __version__
from jobqueue.connection import UNAVAILABLE

router = APIRouter(tags=["service"])
READINESS_REDIS_TIMEOUT_S = 1.0
State = Annotated[AppState, Depends(get_state)]


@router.get("/", response_model=ServiceInfo, summary="Name, version and links")
async def index(state: State) -> Response:
    links = {name: f"/{name}" for name in ("docs", "models", "metadata", "healthz", "readyz", "metrics", "console")}
    links["submit"] = "/predict"
    return json_response(
        {"name": "asyncinfer", "version": __version__, "models": state.models.names(), "default_model": state.models.default, "links": links}
    )


@router.get("/healthz", summary="Liveness: the process serves (never depends on Redis or workers)")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz", responses={503: {"model": ErrorBody}}, summary="Readiness: Redis answers and the default model's signature is known"
)
async def readyz(state: State) -> Response:
    if state.draining:
        return json_response({"status": "draining"}, 503)
    default = state.models.require(None)
    if not default.ready:
        return json_response({"status": "unavailable", "detail": f"model {default.name}: {default.error or 'loading'}"}, 503)
    try:
        await asyncio.wait_for(state.probe.ping(), READINESS_REDIS_TIMEOUT_S)
    except (*UNAVAILABLE, redis.ResponseError, TimeoutError) as exc:  # NOAUTH, protected mode: not ready either
        return json_response({"status": "unavailable", "detail": f"redis: {exc or 'timeout'}"}, 503)
    return json_response({"status": "ready", "models": {e.name: e.ready for e in state.models.entries.values()}})


async def metrics_text(state: AppState) -> str:
    """Queue depths and counters per model, in the Prometheus text format."""
    depths = await state.store.depths(state.models.names())
    lines: list[str] = []
    gauges = {
        "asyncinfer_jobs_pending": "Jobs waiting to start (the lists KEDA scales on).",
        "asyncinfer_jobs_inflight": "Jobs workers hold right now.",
        "asyncinfer_jobs_dead_letter": "Jobs in the dead-letter list.",
        "asyncinfer_workers": "Workers with a live or not yet reaped heartbeat.",
    }
    keys = {"asyncinfer_jobs_pending": "pending", "asyncinfer_jobs_inflight": "inflight",
            "asyncinfer_jobs_dead_letter": "dead", "asyncinfer_workers": "workers"}  # fmt: skip
    for name, help_text in gauges.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f'{name}{{model="{m}"}} {d[keys[name]]}' for m, d in depths.items()]
    for counter in ("enqueued", "completed", "failed", "retried", "recovered", "expired", "canceled"):
        name = f"asyncinfer_jobs_{counter}_total"
        lines += [f"# HELP {name} Jobs {counter} since the queue was created.", f"# TYPE {name} counter"]
        lines += [f'{name}{{model="{m}"}} {d.get(counter, 0)}' for m, d in depths.items()]
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (admin when on the main port)")
async def metrics(state: State, _: Annotated[Principal, Depends(admin)]) -> Response:
    if state.settings.metrics_port:
        return json_response({"detail": f"metrics are served on METRICS_PORT {state.settings.metrics_port}"}, 404)
    return PlainTextResponse(await metrics_text(state), media_type="text/plain; version=0.0.4")

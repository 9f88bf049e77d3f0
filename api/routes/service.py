"""Service endpoints: index, liveness, readiness, model metadata, Prometheus metrics."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from api.errors import json_response
from api.schemas import ErrorBody, ModelMetadata, ServiceInfo
from api.state import AppState, get_state
from jobqueue.connection import UNAVAILABLE

router = APIRouter(tags=["service"])
READINESS_REDIS_TIMEOUT_S = 1.0

try:
    VERSION = version("asyncinfer")
except PackageNotFoundError:  # running from a source tree without installing
    VERSION = "0.0.0"


@router.get("/", response_model=ServiceInfo, summary="Name, version and links")
async def index(state: Annotated[AppState, Depends(get_state)]) -> Response:
    links = {name: f"/{name}" for name in ("docs", "metadata", "healthz", "readyz", "metrics")}
    links["submit"] = "/predict"
    model = state.signature.name if state.signature else None
    return json_response({"name": "asyncinfer", "version": VERSION, "model": model, "links": links})


@router.get("/healthz", summary="Liveness: the process serves (never depends on Redis or workers)")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", responses={503: {"model": ErrorBody}}, summary="Readiness: Redis answers and the model signature is known")
async def readyz(state: Annotated[AppState, Depends(get_state)]) -> Response:
    if state.draining:
        return json_response({"status": "draining"}, 503)
    if state.signature is None:
        return json_response({"status": "unavailable", "detail": f"model signature: {state.signature_error}"}, 503)
    try:
        await asyncio.wait_for(state.queue.client.ping(), READINESS_REDIS_TIMEOUT_S)
    except (*UNAVAILABLE, redis.ResponseError, TimeoutError) as exc:  # NOAUTH, protected mode: not ready either
        return json_response({"status": "unavailable", "detail": f"redis: {exc or 'timeout'}"}, 503)
    return json_response({"status": "ready", "model": state.signature.name})


@router.get("/metadata", response_model=ModelMetadata, summary="The model's signature and labels")
async def metadata(state: Annotated[AppState, Depends(get_state)]) -> Response:
    signature = state.require_signature()
    return json_response({**signature.as_dict(), "example": {"data": signature.example_data()}})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (queue depths and counters)")
async def metrics(state: Annotated[AppState, Depends(get_state)]) -> Response:
    counts = await state.queue.depths()
    gauges = {
        "asyncinfer_jobs_pending": ("Jobs waiting to start (the list KEDA scales on).", counts["pending"]),
        "asyncinfer_jobs_inflight": ("Jobs workers hold right now.", counts["inflight"]),
        "asyncinfer_jobs_dead_letter": ("Jobs in the dead-letter list.", counts["dead"]),
        "asyncinfer_workers": ("Workers with a live or not yet reaped heartbeat.", counts["workers"]),
    }
    lines = []
    for name, (help_text, value) in gauges.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    for counter in ("enqueued", "completed", "failed", "recovered", "expired"):
        name = f"asyncinfer_jobs_{counter}_total"
        lines += [f"# HELP {name} Jobs {counter} since the queue was created.", f"# TYPE {name} counter"]
        lines.append(f"{name} {counts.get(counter, 0)}")
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

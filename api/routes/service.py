"""Service endpoints: index, liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from api.auth import Principal, admin
from api.errors import json_response
from api.metrics import metrics_text
from api.schemas import ErrorBody, ServiceInfo
from api.state import AppState, get_state
from jobqueue import __version__
from jobqueue.connection import REFUSED, UNAVAILABLE

router = APIRouter(tags=["service"])
READINESS_REDIS_TIMEOUT_S = 1.0
NOT_READY: tuple[type[BaseException], ...] = (*UNAVAILABLE, *REFUSED, TimeoutError)
State = Annotated[AppState, Depends(get_state)]


@router.get("/", response_model=ServiceInfo, summary="Name, version and links")
async def index(state: State) -> Response:
    links = {name: f"/{name}" for name in ("docs", "models", "metadata", "healthz", "readyz", "metrics", "console")}
    links["submit"] = "/predict"
    return json_response(
        {
            "name": "asyncinfer",
            "version": __version__,
            "models": state.models.names(),
            "default_model": state.models.default,
            "links": links,
        }
    )


@router.get("/healthz", summary="Liveness: the process serves (never depends on Redis or workers)")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    responses={503: {"model": ErrorBody}},
    summary="Readiness: Redis answers and the default model's signature is known",
)
async def readyz(state: State) -> Response:
    if state.draining:
        return json_response({"status": "draining"}, 503)
    default = state.models.require(None)
    if not default.ready:
        return json_response({"status": "unavailable", "detail": f"model {default.name}: {default.error or 'loading'}"}, 503)
    try:
        await asyncio.wait_for(state.probe.ping(), READINESS_REDIS_TIMEOUT_S)
    except NOT_READY as exc:  # NOAUTH, protected mode: not ready either
        return json_response({"status": "unavailable", "detail": f"redis: {exc or 'timeout'}"}, 503)
    return json_response({"status": "ready", "models": {e.name: e.ready for e in state.models.entries.values()}})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (admin when on the main port)")
async def metrics(state: State, _: Annotated[Principal, Depends(admin)]) -> Response:
    if state.settings.metrics_port:
        return json_response({"detail": f"metrics are served on METRICS_PORT {state.settings.metrics_port}"}, 404)
    return PlainTextResponse(await metrics_text(state), media_type="text/plain; version=0.0.4")

"""Service endpoints: index, liveness, readiness, Prometheus metrics; the API docs pages (Swagger UI, ReDoc)."""

from __future__ import annotations

import asyncio
import functools
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from api.auth import Principal, admin
from api.errors import HTTPProblem, json_response
from api.metrics import metrics_body
from api.schemas import ErrorBody, ServiceInfo
from api.state import AppState, get_state
from jobqueue import __version__
from jobqueue.connection import REFUSED, UNAVAILABLE

router = APIRouter(tags=["service"])
# Swagger UI's and ReDoc's files come from the fastapi-offline wheel and are served by this process,
# never from a CDN: /docs works offline and behind a proxy that blocks outside hosts.
docs_router = APIRouter(include_in_schema=False)
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
DOCS_ASSET_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
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
    if not state.store.tags.loaded:
        return json_response({"status": "unavailable", "detail": "redis: the models' hash tags are not read yet"}, 503)
    return json_response({"status": "ready", "models": {e.name: e.ready for e in state.models.entries.values()}})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (admin when on the main port)")
async def metrics(request: Request, state: State, _: Annotated[Principal, Depends(admin)]) -> Response:
    if state.settings.metrics_port:
        return json_response({"detail": f"metrics are served on METRICS_PORT {state.settings.metrics_port}"}, 404)
    body, content_type = await metrics_body(state, request.headers.get("accept"))
    return Response(body, media_type=content_type)


@functools.cache
def _docs_asset(name: str) -> bytes:
    return resources.files("fastapi_offline").joinpath("static", name).read_bytes()


def _docs_urls(request: Request) -> tuple[str, str]:
    """The spec's URL and the assets' folder, under the prefix a proxy may mount the API at (root_path)."""
    root = request.scope.get("root_path", "")
    return f"{root}/openapi.json", f"{root}/docs/assets"


@docs_router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    spec, assets = _docs_urls(request)
    return get_swagger_ui_html(
        openapi_url=spec,
        title="asyncinfer - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
    )


@docs_router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    spec, assets = _docs_urls(request)
    js, icon = f"{assets}/redoc.standalone.js", f"{assets}/favicon.png"
    return get_redoc_html(
        openapi_url=spec, title="asyncinfer - ReDoc", redoc_js_url=js, redoc_favicon_url=icon, with_google_fonts=False
    )


@docs_router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    if name not in DOCS_ASSETS:
        raise HTTPProblem(404, "not found")
    return Response(_docs_asset(name), media_type=DOCS_ASSETS[name], headers=DOCS_ASSET_HEADERS)

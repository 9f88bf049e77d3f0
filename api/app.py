"""Assembles the FastAPI app: settings, lifespan (Redis, models, events, tokens), routers, middleware."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import TokenFile
from api.cross_site import CrossSiteGuard
from api.errors import HTTPProblem, install_error_handlers, problem_response
from api.hotpath import HotPathMiddleware
from api.metrics import RequestMetricsMiddleware
from api.metrics_listener import MetricsListener
from api.routes import admin, jobs, models, notifications, oip, service, streams, uploads
from api.state import AppState, JobEvents, ModelRegistry
from jobqueue import __version__, tracing
from jobqueue.connection import REFUSED, UNAVAILABLE, async_client, async_probe_client
from jobqueue.keys import StoreKeys
from jobqueue.models import ModelConfig, load_models
from jobqueue.objectstore import object_store
from jobqueue.protocol import JobStore
from jobqueue.settings import Settings, get_settings
from jobqueue.shards import TagConflict, load_tags_async
from jobqueue.ssrf import validate_callback_url
from jobqueue.views import sign_result_urls_with

log = logging.getLogger("asyncinfer.api")
MODELS_STARTUP_WAIT_S = 10.0
STARTUP_STOP_CHECK_S = 0.1  # how soon a SIGTERM during start-up is noticed
UNLIMITED_PATHS = ("/healthz", "/readyz")


class ConcurrencyLimit:
    """At most MAX_CONCURRENT_REQUESTS requests at once per process (long polls included); more get
    503 with Retry-After at once instead of queueing unboundedly in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Event streams are long-lived and capped on their own (api/routes/streams.py): counted here,
        # a few hundred watching clients would lock every submit out.
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS or scope["path"].endswith("/events"):
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            problem = HTTPProblem(
                503, f"this API process is serving {self.limit} requests (MAX_CONCURRENT_REQUESTS)", {"Retry-After": "1"}
            )
            return await problem_response(problem)(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class AsyncInferAPI(FastAPI):
    """The FastAPI app behind the process's own outer layers (`front`): request metrics, the
    concurrency limit and the hot path run before FastAPI's and Starlette's middleware stack, which
    per request costs more than our handlers (routing, error and telemetry middleware, an OTEL
    environment lookup). Everything the hot path does not answer goes through FastAPI unchanged."""

    front: ASGIApp
    stopping = False  # set by the process's SIGTERM handler (api/main.py), start-up included

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def serve_framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def outer_layers(app: AsyncInferAPI, limit: int, hotpath: bool = True) -> ASGIApp:
    """Metrics outermost (503s from the concurrency limit count too), then the cross-site guard (before
    anything is routed, the hot path included), then the limit, then the hot path."""
    inner: ASGIApp = HotPathMiddleware(app.serve_framework, app) if hotpath else app.serve_framework
    return RequestMetricsMiddleware(CrossSiteGuard(ConcurrencyLimit(inner, limit)))


async def wait_unless_stopping(task: asyncio.Task[None], app: AsyncInferAPI, timeout_s: float) -> None:
    """Wait for a start-up task up to `timeout_s`, but not past a SIGTERM (`app.stopping`): a process
    told to stop while it starts exits at once instead of finishing its start-up first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not task.done() and not app.stopping:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        await asyncio.wait({task}, timeout=min(remaining, STARTUP_STOP_CHECK_S))


async def load_model_tags(store: JobStore, client: redis.asyncio.Redis, models: list[ModelConfig]) -> None:
    """On a Cluster, each model's hash tag (jobqueue/shards.py), read (or chosen) once the Cluster answers;
    until then submits answer 503 and the API is not ready. Standalone: nothing to read."""
    delay = 0.1
    while not store.tags.loaded:
        try:
            store.tags = await load_tags_async(store.settings, client, models)
        except TagConflict as exc:  # an operator's to fix: unready (and saying why) until then
            log.error("model tags: %s; retrying every 5s", exc)
            await asyncio.sleep(5.0)
        except (*UNAVAILABLE, *REFUSED) as exc:
            log.warning("model tags: the Cluster does not answer yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_app(settings: Settings | None = None) -> AsyncInferAPI:
    settings = settings or get_settings()
    traced = tracing.setup("asyncinfer-api", settings.tracing_headers_file)  # imports opentelemetry only when OTEL_* turns it on
    configs = load_models(settings)  # a bad MODELS_FILE stops the start with its message
    tokens = TokenFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
    if tokens is None:
        log.warning(
            "AUTHENTICATION IS OFF (no AUTH_TOKENS_FILE): anyone who reaches this API can submit, read and cancel any job"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert isinstance(app, AsyncInferAPI)  # (for the type checker) create_app builds no other
        # on a Cluster: the node serving the tag registry (Pub/Sub hears every node's events there)
        client = async_client(settings, slot_key=StoreKeys(settings.key_prefix).shard_registry)
        store = JobStore(client, settings)
        objects = object_store(settings)
        sign_result_urls_with(objects.presign_get_url if objects else None)
        state = AppState(
            settings=settings,
            store=store,
            probe=async_probe_client(settings),
            models=ModelRegistry(configs),
            events=JobEvents(client, store.keys.events, sentinels=bool(settings.redis_sentinels)),
            tokens=tokens,
            callback_validator=validate_callback_url,
            objects=objects,
        )
        app.state.asyncinfer = state
        # The API reads every model's signature itself so it validates while zero workers run.
        loader = asyncio.create_task(state.models.load_all(), name="load-models")
        await wait_unless_stopping(loader, app, MODELS_STARTUP_WAIT_S)  # normally done at once
        tags = asyncio.create_task(load_model_tags(store, client, list(configs.values())), name="load-model-tags")
        state.events.start()
        # Start-up objects (FastAPI, pydantic, numpy, onnx signatures) move out of the collector's
        # reach: a full collection under load then scans only what requests allocate (a tail-latency cut).
        gc.collect()
        gc.freeze()
        listener = MetricsListener(state) if settings.metrics_port else None
        if listener:
            await listener.start(settings.host, settings.metrics_port)
        try:
            yield
        finally:
            loader.cancel()
            tags.cancel()
            if listener:
                await listener.stop()
            await state.events.stop()
            await state.probe.aclose()
            await store.aclose()
            await client.aclose()

    docs = settings.docs_enabled
    app = AsyncInferAPI(
        title="asyncinfer",
        summary="Asynchronous ML inference: submit, get 202 and a job id; poll, long-poll, wait, stream or get a webhook.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served by service.docs_router from packaged files, not from a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    if docs:
        app.include_router(service.docs_router)
    app.include_router(jobs.router)
    app.include_router(streams.router)
    app.include_router(models.router)
    app.include_router(service.router)
    app.include_router(oip.router)
    app.include_router(uploads.router)
    app.include_router(notifications.router)
    app.include_router(admin.router)
    app.include_router(admin.console_router)
    install_error_handlers(app)
    if traced:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # a SERVER span per request from the client's traceparent (the hot path makes its own: api/hotpath.py)
        FastAPIInstrumentor.instrument_app(app, tracer_provider=tracing.PROVIDER, excluded_urls="healthz,readyz,metrics")
    app.front = outer_layers(app, settings.max_concurrent_requests)
    return app

"""Open Inference Protocol (KServe V2 REST) routes under /v2: health, server and model metadata, and
`infer`, which is served through the job queue so Triton/KServe clients work unchanged while workers
autoscale behind it.

`infer` turns the request into a job, waits up to OIP_WAIT_SECONDS for it and answers the protocol's
inference response (200); past the wait, or with `Prefer: respond-async`, it answers 202 with the job
id and `Location: /job/<id>`, where the job can be followed like any other. Every error is
`{"error": "..."}`, as the protocol has it.
"""

from __future__ import annotations

import asyncio
import io
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match

from api import oip
from api.auth import Principal
from api.auth import principal as authenticate
from api.errors import HTTPProblem, as_problem, json_response
from api.objects import read_result_object, stored_input
from api.routes.jobs import submit_and_wait
from api.routes.service import NOT_READY, READINESS_REDIS_TIMEOUT_S
from jobqueue import __version__
from jobqueue.settings import PRIORITIES

SERVER_NAME = "asyncinfer"
EXTENSIONS = ["binary_tensor_data"]
MAX_IDEMPOTENCY_KEY = 200  # as /predict: a key longer than this is a client bug, not a key
RETRY_AFTER_S = 1
TERMINAL_ERRORS = {  # how a job that ended without a result is told to an OIP client
    "failed": (500, "inference failed"),
    "canceled": (409, "the job was canceled before it ran"),
    "expired": (503, "the job expired in the queue before a worker took it"),
}


def problem_text(detail: Any) -> str:
    """One line for an HTTPProblem detail (FastAPI's 422 list names each field as `a.b.c: msg`)."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(part) for part in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The protocol's error body."""
    return json_response({"error": message}, status, headers)


def oip_error_for(exc: Exception) -> Response | None:
    """The OIP answer for a known failure, or None for a bug (a 500 from the framework)."""
    if isinstance(exc, oip.OIPError):
        return error_response(exc.status, str(exc))
    if isinstance(exc, RequestValidationError):
        return error_response(400, problem_text(exc.errors()))
    problem = as_problem(exc)
    if problem is None:
        return None
    # the protocol's clients expect 400 for a request that does not fit the model, not FastAPI's 422
    status = 400 if problem.status == 422 else problem.status
    return error_response(status, problem_text(problem.detail), problem.headers)


class OIPRoute(APIRoute):
    """A route whose errors are `{"error": ...}` rather than the rest of the API's `{"detail": ...}`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = oip_error_for(exc)
                if response is None:
                    raise
                return response

        return handle


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=OIPRoute)

# A null optional member reads as absent, so the schemas allow it (OpenAPI 3.1 type lists).
_PARAMETERS_SCHEMA: dict[str, Any] = {"type": ["object", "null"]}
_TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": sorted(oip.OIP_TO_NUMPY)},
        "parameters": {**_PARAMETERS_SCHEMA, "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        "data": {"description": "row-major elements, flat or nested (a bare value for a one-element tensor)"},
    },
}
_REQUESTED_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS_SCHEMA},
}
_IRIS_EXAMPLE = {"id": "1", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"JSON inference request; with binary tensors: the JSON header ({oip.HEADER_LENGTH} bytes),"
        " then the raw tensors.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": ["string", "null"]},
                        "parameters": _PARAMETERS_SCHEMA,
                        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR_SCHEMA},
                        "outputs": {"type": ["array", "null"], "items": _REQUESTED_OUTPUT_SCHEMA},
                    },
                },
                "example": _IRIS_EXAMPLE,
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _errors(*codes_and_reasons: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error codes, each with the protocol's `{"error": ...}` body."""
    return {
        code: {"description": why, "content": {"application/json": {"schema": _ERROR_SCHEMA}}} for code, why in codes_and_reasons
    }


_UNAUTHORIZED = (401, "missing or invalid bearer token")
_UNKNOWN = (404, "unknown model (the message names the known ones) or version")
_NOT_LOADED = (503, "the model's signature is not loaded yet; see Retry-After")
_READINESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "not ready", "content": {"application/json": {"schema": {"type": "object"}}}}
}
_MODEL_RESPONSES = {**_errors(_UNAUTHORIZED, _UNKNOWN), **_READINESS_RESPONSES}
_METADATA_RESPONSES = _errors(_UNAUTHORIZED, _UNKNOWN, _NOT_LOADED)
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "inference response; binary outputs, when asked for, follow the JSON header",
        "content": {"application/json": {}, "application/octet-stream": {}},
    },
    202: {"description": "still running after OIP_WAIT_SECONDS, or Prefer: respond-async: {job_id, status}; see Location"},
    **_errors(
        (400, "the request does not fit the protocol or the model; the message names the field"),
        _UNAUTHORIZED,
        _UNKNOWN,
        (409, "the job was canceled"),
        (413, "body larger than MAX_BODY_BYTES"),
        (415, "unsupported Content-Encoding"),
        (429, "queue full or rate limited; see Retry-After"),
        (500, "the job failed in the worker"),
        (503, "Redis unavailable or the model not loaded; see Retry-After"),
    ),
}


def _state(request: Request) -> Any:
    return request.app.state.asyncinfer


def _model(request: Request, name: str, version: str | None = None) -> Any:
    """The model entry, or 404 naming the known models (or the version served)."""
    state = _state(request)
    entry = state.models.get(name)
    if entry is None:
        known = ", ".join(state.models.names()) or "none"
        raise oip.OIPError(f"unknown model {name!r}; known models: {known}", 404)
    if version is not None and version != entry.version:
        raise oip.OIPError(f"model {name!r} has no version {version!r}; it serves version {entry.version!r}", 404)
    return entry


def _is_ready(entry: Any) -> bool:
    return bool(entry.ready) and entry.signature is not None


def _require_ready(entry: Any) -> Any:
    """The model's signature, or 503 while it is not loaded (the API validates without a worker)."""
    if not _is_ready(entry):
        message = f"model {entry.name!r} is not ready (its signature is not loaded yet)"
        raise HTTPProblem(503, message, {"Retry-After": str(RETRY_AFTER_S)})
    return entry.signature


# -- health and metadata ---------------------------------------------------------------------------


@router.get("", responses=_errors(_UNAUTHORIZED), summary="Server metadata")
async def server_metadata(request: Request) -> Response:
    await authenticate(request)
    return json_response({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", summary="Server liveness (200 while the process serves)")
async def server_live() -> Response:
    return json_response({"live": True})


async def _redis_answers(state: Any) -> bool:
    try:
        await asyncio.wait_for(state.probe.ping(), READINESS_REDIS_TIMEOUT_S)
    except NOT_READY:  # NOAUTH, protected mode: not ready either
        return False
    return True


@router.get(
    "/health/ready", responses=_READINESS_RESPONSES, summary="Server readiness: not draining, every model loaded, Redis answers"
)
async def server_ready(request: Request) -> Response:
    # workers may be at zero: jobs wait in the queue for them, so they are no part of readiness
    state = _state(request)
    models_loaded = all(_is_ready(state.models.get(name)) for name in state.models.names())
    ready = not state.draining and models_loaded and await _redis_answers(state)
    return json_response({"ready": ready}, 200 if ready else 503)


MODEL_PATH = "/models/{model_name}"
MODEL_VERSION_PATH = "/models/{model_name}/versions/{model_version}"
ModelHandler = Callable[[Request, str, str | None], Awaitable[Response]]


def model_endpoint(
    suffix: str, method: str, handler: ModelHandler, on_model: tuple[str, str], on_version: tuple[str, str], **route: Any
) -> None:
    """Serve `handler` on a model's path and on its version's path: one implementation (`version` is None
    on the first). `on_model`/`on_version`: each route's (operation name, summary)."""

    async def model_route(request: Request, model_name: str) -> Response:
        return await handler(request, model_name, None)

    async def version_route(request: Request, model_name: str, model_version: str) -> Response:
        return await handler(request, model_name, model_version)

    for path, endpoint, (name, summary) in ((MODEL_PATH, model_route, on_model), (MODEL_VERSION_PATH, version_route, on_version)):
        router.add_api_route(path + suffix, endpoint, methods=[method], name=name, summary=summary, **route)


async def model_ready(request: Request, name: str, version: str | None) -> Response:
    await authenticate(request)
    entry = _model(request, name, version)
    ready = _is_ready(entry)
    return json_response({"name": entry.name, "ready": ready}, 200 if ready else 503)


async def model_metadata(request: Request, name: str, version: str | None) -> Response:
    await authenticate(request)
    entry = _model(request, name, version)
    signature = _require_ready(entry)
    return json_response(oip.model_metadata(entry.name, entry.version, signature))


model_endpoint(
    "/ready", "GET", model_ready, ("model_ready", "Model readiness"), ("model_version_ready", "Model version readiness"),
    responses=_MODEL_RESPONSES,
)  # fmt: skip
model_endpoint(
    "", "GET", model_metadata, ("model_metadata", "Model metadata: versions, platform, tensors"),
    ("model_version_metadata", "Model version metadata"), responses=_METADATA_RESPONSES,
)  # fmt: skip


# -- inference ---------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes; gzip/deflate bodies (tritonclient's
    request compression) are inflated, and the limit applies to the inflated size too."""
    too_big = HTTPProblem(413, f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise oip.OIPError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)", 415)
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)  # never inflate more than the limit: a zip bomb stops here
    except zlib.error as exc:
        raise oip.OIPError(f"the body is not valid {encoding} data: {exc}") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise too_big
    return inflated


def _preferences(request: Request) -> set[str]:
    return {token.strip().lower() for token in request.headers.get("prefer", "").split(",") if token.strip()}


def _preferred_wait(preferences: set[str], limit_s: float) -> tuple[float, bool]:
    """How long to wait for the job: `Prefer: wait=N` may shorten OIP_WAIT_SECONDS, never lengthen it.
    Returns (seconds, whether the header was applied); an unreadable value is ignored (RFC 7240)."""
    for preference in preferences:
        name, _, value = preference.partition("=")
        if name.strip() == "wait":
            try:
                wanted = float(value.strip())
            except ValueError:
                continue
            if 0 <= wanted < limit_s:
                return wanted, True
    return limit_s, False


def _priority(parameters: dict[str, Any]) -> str:
    """Our priority from the request's `priority` parameter when it names one; Triton's numeric
    priority levels have no meaning here and are ignored."""
    value = parameters.get("priority")
    return value if isinstance(value, str) and value in PRIORITIES else "normal"


def _accepted(job_id: str, status: str, applied: dict[str, str]) -> Response:
    return json_response({"job_id": job_id, "status": status}, 202, {"Location": f"/job/{job_id}", **applied})


async def infer(request: Request, name: str, version: str | None) -> Response:
    """Inference through the queue: the request becomes a job, answered when it ends within the wait.
    An idempotent replay answers its job's real state (a completed job's outputs, an ended job's
    error, 202 while it runs), as /predict does."""
    caller: Principal = await authenticate(request)
    state = _state(request)
    entry = _model(request, name, version)
    signature = _require_ready(entry)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise oip.OIPError(f"the Idempotency-Key header has more than {MAX_IDEMPOTENCY_KEY} characters")

    body = await read_body(request, state.settings.max_body_bytes)
    header_length = oip.parse_header_length(request.headers.get(oip.HEADER_LENGTH), len(body))
    infer_request = oip.parse_infer_request(body, header_length)
    priority = _priority(infer_request.parameters)
    binary_bytes = len(body) - header_length if header_length is not None else 0
    if state.objects is not None and binary_bytes > state.settings.inline_result_max_bytes and _all_numeric(infer_request):
        # large binary tensors go as an input object, as the SDK's large arrays do: Redis keeps a reference
        rows = oip.checked_inputs(infer_request, signature)
        content, fmt = oip.input_file(infer_request, signature)
        ref = await stored_input(state, content, fmt, entry.name)
        payload = orjson.dumps({"input_url": ref.url}).decode()
        job = state.new_job(caller.name, entry, payload, priority, None, idempotency_key, ("body",))
    else:
        data, rows = oip.job_data(infer_request, signature)
        job = state.validated_job(caller.name, entry, data, priority, idempotency_key=idempotency_key)

    preferences = _preferences(request)
    respond_async = "respond-async" in preferences
    wait_s, wait_applied = (0.0, False) if respond_async else _preferred_wait(preferences, state.settings.oip_wait_seconds)
    submitted = await submit_and_wait(state, job, wait_s, request.receive)  # stops early if the client leaves
    headers = {**submitted.replay_headers, **({"Preference-Applied": f"wait={wait_s:g}"} if wait_applied else {})}
    record = submitted.ended
    if record is None:  # still pending or processing after the wait, or not waited for
        if respond_async:
            headers["Preference-Applied"] = "respond-async"
        return _accepted(submitted.job_id, submitted.status, headers)
    status = str(record.status)
    if status in TERMINAL_ERRORS:
        code, what = TERMINAL_ERRORS[status]
        message = f"{what}: {record.error}" if record.error else what
        if code == 503:
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return error_response(code, f"{message} (job {record.job_id})", headers)

    try:
        if record.result_object is None:
            tensors = oip.oip_outputs(orjson.loads(record.result or "null"), signature, rows)
        else:
            # read whole only up to MAX_BODY_BYTES, so the API's memory stays bounded; larger: 202, and
            # the job view's result_url serves it
            stored = await read_result_object(state, record.result_object, state.settings.max_body_bytes)
            if stored is None:
                return _accepted(record.job_id, status, headers)
            tensors = _result_tensors(record.result_object, stored, signature, rows)
    except (ValueError, TypeError) as exc:  # a result from another model version, say
        return error_response(500, f"the job's result cannot be read as this model's outputs: {exc} (job {record.job_id})")
    content, json_length = oip.build_response(entry.name, entry.version, infer_request, tensors)
    if json_length is None:
        return Response(content, media_type="application/json", headers=headers)
    return Response(content, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(json_length), **headers})


def _all_numeric(request: oip.InferRequest) -> bool:
    """Whether every input can be an array object (BYTES cannot: .npy holds no pickled objects)."""
    return all(tensor.datatype != "BYTES" for tensor in request.inputs)


def _result_tensors(url: str, content: bytes, signature: Any, rows: int) -> list[oip.OutputTensor]:
    """The outputs held by a result object: an .npz of the model's outputs (an array input) or the
    JSON result a worker offloaded (INLINE_RESULT_MAX_BYTES)."""
    if url.endswith(".npz"):
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            return oip.oip_outputs_of_arrays({name: archive[name] for name in archive.files}, signature, rows)
    return oip.oip_outputs(orjson.loads(content), signature, rows)


model_endpoint(
    "/infer", "POST", infer, ("infer", "Inference (through the queue; 202 past OIP_WAIT_SECONDS)"),
    ("infer_version", "Inference on a model version"), responses=_INFER_RESPONSES, openapi_extra=_INFER_BODY,
)  # fmt: skip


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def unsupported(request: Request, path: str) -> Response:
    """Anything else under /v2 (Triton's model configuration, statistics, repository, shared-memory
    extensions...): a 404 in the protocol's error shape, so OIP clients show why; a served path asked
    with another method stays a 405 with `Allow`."""
    allowed = sorted(
        method
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint is not unsupported and route.matches(request.scope)[0] is Match.PARTIAL
        for method in (route.methods or ())
    )
    if allowed:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}", {"Allow": ", ".join(allowed)})
    return error_response(
        404,
        f"{request.method} /v2/{path} is not served: asyncinfer implements the Open Inference Protocol's health,"
        f" metadata and infer endpoints and the extensions {EXTENSIONS}",
    )

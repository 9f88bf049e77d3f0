"""Request and response bodies, named by role; used for the OpenAPI document and for responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jobqueue.states import JobStatus

_DATA = {
    "description": "Rows for a single-input model, or an object mapping each model input name to its rows.",
    "oneOf": [
        {"type": "array", "minItems": 1, "items": {}},
        {"type": "object", "additionalProperties": {"type": "array", "minItems": 1}},
    ],
}
_SUBMIT_PROPERTIES: dict[str, Any] = {
    "data": _DATA,
    "priority": {"type": "string", "enum": ["high", "normal", "low"], "default": "normal"},
    "callback_url": {
        "type": "string",
        "description": "https URL that gets the job view, signed (Standard Webhooks), when the job ends",
    },
}
# Request bodies are parsed by hand for speed and exact error locations; these are their documented shapes.
PREDICT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "additionalProperties": False,
    "properties": _SUBMIT_PROPERTIES,
    "example": {"data": [[5.1, 3.5, 1.4, 0.2]]},
}
BULK_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["items"],
    "additionalProperties": False,
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            # Each item is checked on its own and refused in place (the request still succeeds):
            # documented here, so that an invalid item is not a schema violation of the request.
            "items": {
                "type": "object",
                "description": f"a submit: {[*_SUBMIT_PROPERTIES, 'idempotency_key']} (`idempotency_key`: its own key)",
            },
        }
    },
    "example": {"items": [{"data": [[5.1, 3.5, 1.4, 0.2]]}, {"data": [[6.7, 3.0, 5.2, 2.3]], "priority": "high"}]},
}
LOOKUP_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ids"],
    "additionalProperties": False,
    "properties": {"ids": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 64}}},
}


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus = JobStatus.PENDING
    model: str


class Notification(BaseModel):
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None = None
    last_error: str | None = None


class JobView(BaseModel):
    job_id: str
    status: JobStatus
    model: str | None = None
    model_version: str | None = Field(None, description="sha256 (short) of the model file that ran the job")
    priority: Literal["high", "normal", "low"] = "normal"
    result: Any = None
    error: str | None = None
    attempts: int = 0
    created_at: str | None = Field(None, description="ISO-8601 UTC")
    started_at: str | None = None
    finished_at: str | None = None
    notification: Notification | None = None
    result_url: str | None = Field(
        None, description="only for a result in the object store (`result` is null then): a presigned GET that expires"
    )


class UploadGrant(BaseModel):
    upload_url: str = Field(description="PUT the input here (presigned; no Authorization header)")
    method: Literal["PUT"] = "PUT"
    input_url: str = Field(description='submit with {"input_url": this}')
    model: str
    expires_in: int = Field(description="seconds the upload_url stays valid")


class ErrorBody(BaseModel):
    detail: Any


class BulkItemError(BaseModel):
    status: int
    detail: Any


class BulkItem(BaseModel):
    job_id: str | None = None
    status: JobStatus | None = None
    replayed: bool = Field(False, description="present and true when the item's idempotency key found an earlier job")
    error: BulkItemError | None = None


class BulkAnswer(BaseModel):
    items: list[BulkItem]
    model: str


class NotFoundItem(BaseModel):
    job_id: str
    found: Literal[False] = False


class LookupAnswer(BaseModel):
    items: list[JobView | NotFoundItem]


class TensorView(BaseModel):
    name: str
    dtype: str
    shape: list[int | str | None]


class ModelMetadata(BaseModel):
    name: str
    version: str | None
    inputs: list[TensorView]
    outputs: list[TensorView]
    labels: list[str] | None = None
    example: Any = None


class ModelSummary(BaseModel):
    name: str
    version: str | None
    ready: bool
    default: bool
    error: str | None = None


class ModelList(BaseModel):
    models: list[ModelSummary]


class ServiceInfo(BaseModel):
    name: str
    version: str
    models: list[str]
    default_model: str
    links: dict[str, str]

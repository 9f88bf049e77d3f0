"""Request and response bodies, named by role; used for the OpenAPI document and for responses."""

from typing import Any

from pydantic import BaseModel, Field

from jobqueue.states import JobStatus

# The request body is parsed by hand for speed and exact error locations; this is its documented shape.
PREDICT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "additionalProperties": False,
    "properties": {
        "data": {
            "description": "Rows for a single-input model, or an object mapping each model input name to its rows.",
            "oneOf": [
                {"type": "array", "minItems": 1, "items": {}},
                {"type": "object", "additionalProperties": {"type": "array", "minItems": 1}},
            ],
        }
    },
    "example": {"data": [[5.1, 3.5, 1.4, 0.2]]},
}


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus = JobStatus.PENDING


class JobView(BaseModel):
    job_id: str
    status: JobStatus
    result: Any = None
    error: str | None = None
    created_at: str | None = Field(None, description="ISO-8601 UTC")
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0


class ErrorBody(BaseModel):
    detail: Any


class TensorView(BaseModel):
    name: str
    dtype: str
    shape: list[int | str | None]


class ModelMetadata(BaseModel):
    name: str
    version: str
    inputs: list[TensorView]
    outputs: list[TensorView]
    labels: list[str] | None = None
    example: Any = None


class ServiceInfo(BaseModel):
    name: str
    version: str
    model: str | None
    links: dict[str, str]

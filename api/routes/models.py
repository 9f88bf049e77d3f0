"""Models: the list, each model's signature, and the default model's metadata."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response

from api.auth import Principal, principal
from api.errors import json_response
from api.schemas import ErrorBody, ModelList, ModelMetadata
from api.state import AppState, ModelEntry, get_state

router = APIRouter(tags=["models"])
State = Annotated[AppState, Depends(get_state)]
Caller = Annotated[Principal, Depends(principal)]


def _metadata(entry: ModelEntry) -> Response:
    signature = entry.require_signature()
    return json_response(
        {**signature.as_dict(), "name": entry.name, "version": entry.version, "example": {"data": signature.example_data()}}
    )


@router.get(
    "/models", response_model=ModelList, responses={401: {"model": ErrorBody}}, summary="Served models, versions, readiness"
)
async def list_models(state: State, _: Caller) -> Response:
    models = [
        {
            "name": e.name,
            "version": e.version,
            "ready": e.ready,
            "default": e.name == state.models.default,
            "error": e.error or None,
        }
        for e in state.models.entries.values()
    ]
    return json_response({"models": models})


@router.get(
    "/models/{model}",
    response_model=ModelMetadata,
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    summary="A model's signature, labels and an example input",
)
async def model_metadata(model: Annotated[str, Path(max_length=40)], state: State, _: Caller) -> Response:
    return _metadata(state.models.require(model))


@router.get("/metadata", response_model=ModelMetadata, responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
            summary="The default model's signature and labels")  # fmt: skip
async def metadata(state: State, _: Caller) -> Response:
    return _metadata(state.models.require(None))

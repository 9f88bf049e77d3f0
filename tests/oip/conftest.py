"""Fixtures for the Open Inference Protocol tests: the test models and an app over a fake AppState."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from onnx import TensorProto

from api.routes import oip as oip_routes
from jobqueue.models import ModelConfig
from jobqueue.settings import Settings
from tests.conftest import MODEL_PATH
from tests.oip.fakes import AppClient, FakeModels, FakeState, fake_entry
from tests.oip.models import build_identity_model, build_int64_model, build_zipmap_model
from worker.model import OnnxModel


@pytest.fixture(scope="session")
def oip_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model name -> ONNX file: iris (the bundled model) and the exact-value test models."""
    root = tmp_path_factory.mktemp("oip-models")
    return {
        "iris": Path(MODEL_PATH),
        "ints": build_int64_model(root / "ints.onnx"),
        "text": build_identity_model(root / "text.onnx", TensorProto.STRING, name="text"),
        "half": build_identity_model(root / "half.onnx", TensorProto.FLOAT16, name="half"),
        "flags": build_identity_model(root / "flags.onnx", TensorProto.BOOL, name="flags"),
        "zipmap": build_zipmap_model(root / "zipmap.onnx"),
    }


@pytest.fixture(scope="session")
def loaded_models(oip_models: dict[str, Path]) -> dict[str, OnnxModel]:
    """Each test model loaded once, through the worker's own class."""
    return {name: OnnxModel(ModelConfig(name, str(path))) for name, path in oip_models.items()}


@pytest.fixture
def fake_state(loaded_models: dict[str, OnnxModel]) -> FakeState:
    entries = [fake_entry(name, model) for name, model in loaded_models.items()]
    return FakeState(Settings(max_body_bytes=4096, oip_wait_seconds=5), FakeModels(entries))


@pytest.fixture
def fake_client(fake_state: FakeState) -> AppClient:
    """The /v2 routes alone, over the fake state (no lifespan: the state is set here)."""
    app = FastAPI()
    app.include_router(oip_routes.router)
    app.state.asyncinfer = fake_state
    return AppClient(app)

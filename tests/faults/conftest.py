"""Fixtures of the fault suite: test models built once, a redis-server of a test's own (to STOP, kill or
starve it), and direct access to the jobs in Redis."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from onnx import TensorProto
from stack import RedisServer

from tests.faults.helpers import Jobs, write_models_file
from tests.faults.load import StatePoller, SubmitLoad
from tests.support.models import (
    batch_mean_model,
    fixed_one_output_model,
    identity_model,
    loop_iterations_per_second,
    loop_model,
)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test model, built once per session."""
    root = tmp_path_factory.mktemp("models")
    identity_model(root / "int64.onnx", TensorProto.INT64)
    identity_model(root / "float.onnx", TensorProto.FLOAT)
    identity_model(root / "text.onnx", TensorProto.STRING)
    batch_mean_model(root / "batch-mean.onnx")
    fixed_one_output_model(root / "fixed-one.onnx")
    loop_model(root / "loop.onnx")
    loop_model(root / "loop-wide.onnx", width="K")  # rows of any width: each width is its own model call
    return root


@pytest.fixture(scope="session")
def loop_speed(model_dir: Path) -> float:
    """Loop iterations per second on this machine now (sizes "takes about N seconds" inputs)."""
    return loop_iterations_per_second(model_dir / "loop.onnx")


@pytest.fixture
def models_file(model_dir: Path, tmp_path: Path) -> Path:
    """int64 (default), float, text, batch-mean and loop, all served by one API. (fixed-one is left out:
    an API waits MODELS_STARTUP_WAIT_S for a model that never loads; its own test adds it.)"""
    names = ("int64", "float", "text", "batch-mean", "loop")
    return write_models_file(tmp_path / "models.yaml", {name: model_dir / f"{name}.onnx" for name in names})


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone: it may be frozen (SIGSTOP), starved or reconfigured."""
    server = RedisServer(tmp_path / "own-redis").start(tmp_path / "own-redis.log")
    yield server
    if server.proc and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)  # a frozen server would ignore SIGTERM until killed
    server.stop()


@pytest.fixture
def own_client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=30)
    yield client
    client.close()


@pytest.fixture
def own_jobs(own_client: redis.Redis) -> Jobs:
    return Jobs(own_client)


@pytest.fixture
def jobs(redis_client: redis.Redis) -> Jobs:
    """Jobs in the session's redis-server (flushed for this test)."""
    return Jobs(redis_client)


@pytest.fixture
def load_threads() -> Iterator[list[SubmitLoad | StatePoller]]:
    """Submit loads and pollers (tests/faults/load.py) to stop when the test ends, failed or not."""
    running: list[SubmitLoad | StatePoller] = []
    yield running
    for thread in running:
        thread.stop()

"""Several models in one stack: routing, one queue per model, versions on results, and an API that
knows a large model without holding its weights."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import psutil
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from jobqueue.models import ModelConfigError, file_version, load_models
from jobqueue.settings import Settings
from tests.conftest import MODEL_PATH, service_env
from tests.support.samples import ROW


def int64_doubler(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["n", 2])
    two = numpy_helper.from_array(np.array(2, dtype=np.int64), "two")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "doubler", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def big_model(path: Path, megabytes: int) -> Path:
    """A valid model whose weights weigh `megabytes` (float32 MatMul weights)."""
    columns = megabytes * 2**20 // (4 * 4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", columns])
    weights = numpy_helper.from_array(np.ones((4, columns), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "big", [x], [y], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    doubler = int64_doubler(tmp_path / "doubler.onnx")
    path.write_text(
        yaml.safe_dump({"iris": {"path": MODEL_PATH}, "doubler": {"path": str(doubler), "max_batch_size": 8}}, sort_keys=False)
    )
    return path


def test_models_file_is_read_with_overrides_and_checked(tmp_path, models_file):
    models = load_models(Settings(models_file=str(models_file)))
    assert list(models) == ["iris", "doubler"] and models["doubler"].max_batch_size == 8 and models["iris"].max_batch_size == 128
    assert list(load_models(Settings(models_file=str(models_file), default_model="doubler"))) == ["doubler", "iris"]
    assert list(load_models(Settings(model_path=MODEL_PATH))) == ["iris"]  # MODEL_PATH alone: one model
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("Bad_Name: {path: x.onnx}", "not a valid model name"),
        ("iris: {}", "needs a `path`"),
        ("iris: {path: x.onnx, colour: red}", "unknown fields"),
        ("iris: {path: x.onnx, max_batch_size: 0}", "max_batch_size"),
    ]:
        bad.write_text(text)
        with pytest.raises(ModelConfigError, match=message):
            load_models(Settings(models_file=str(bad)))
    with pytest.raises(ModelConfigError, match="DEFAULT_MODEL 'nope'"):
        load_models(Settings(models_file=str(models_file), default_model="nope"))


# Per-model overrides Settings itself refuses (its bounds and types); each once broke a worker mid-job.
BAD_OVERRIDES = [
    ("max_batch_wait_ms: .nan", "max_batch_wait_ms"),
    ("max_batch_wait_ms: .inf", "max_batch_wait_ms"),
    ("max_batch_wait_ms: 1e12", "max_batch_wait_ms"),
    ("max_batch_size: 1.9", "max_batch_size"),
    ("labels: [a, b]", "labels"),
    ("inference_threads: {a: 1}", "inference_threads"),
]


@pytest.mark.parametrize("override, field", BAD_OVERRIDES)
def test_a_bad_per_model_override_stops_the_api_and_the_worker_naming_model_and_field(
    processes, redis_server, tmp_path, override, field
):
    models = tmp_path / "models.yaml"
    models.write_text(f"iris: {{path: {MODEL_PATH}}}\nranker: {{path: {MODEL_PATH}, {override}}}\n")
    env = service_env(redis_server.url, MODELS_FILE=models)
    api = processes.spawn_api_unready(env)
    worker = processes.worker(dict(env, MODEL_NAME="iris"))  # another model's bad entry stops it too
    assert api.wait(60) != 0 and worker.wait(60) != 0
    for log in tmp_path.glob("*.log"):
        assert f"MODELS_FILE: model 'ranker': {field}:" in log.read_text(), (log.name, processes.logs())


def test_every_per_model_override_within_the_settings_bounds_is_served(processes, redis_server, redis_client, tmp_path):
    # redis_client: a clean database (an earlier test, the fuzzer, may have left the model paused)
    labels = tmp_path / "labels.txt"
    labels.write_text("setosa\nversicolor\nvirginica\n")
    overrides = {
        "labels": str(labels),
        "max_batch_size": 4096,
        "max_batch_wait_ms": 2.5,
        "inference_providers": ["CPUExecutionProvider"],
        "inference_threads": 1,
    }
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"iris": {"path": MODEL_PATH, **overrides}}))
    assert load_models(Settings(models_file=str(models)))["iris"].max_batch_wait_ms == 2.5
    env = service_env(redis_server.url, MODELS_FILE=models)
    _, url = processes.api(env)
    processes.worker(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        done = http.get(f"/job/{job_id}", params={"wait": 20}).json()
    assert done["status"] == "completed" and done["result"]["class_name"] in ("setosa", "versicolor", "virginica")


def test_two_models_route_queue_and_version_separately(processes, redis_server, redis_client, models_file):
    env = service_env(redis_server.url, MODELS_FILE=models_file)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        listed = http.get("/models").json()["models"]
        doubler_version = file_version(yaml.safe_load(models_file.read_text())["doubler"]["path"])
        assert [(m["name"], m["ready"], m["default"]) for m in listed] == [("iris", True, True), ("doubler", True, False)]
        assert listed[1]["version"] == doubler_version
        assert http.get("/models/doubler").json()["inputs"] == [{"name": "x", "dtype": "int64", "shape": ["n", 2]}]
        assert http.get("/metadata").json()["name"] == "iris"
        unknown = http.post("/models/nope/predict", json={"data": [[1, 2]]})
        assert unknown.status_code == 404 and "iris, doubler" in unknown.json()["detail"]
        # validated against each model's own signature while no worker runs
        assert http.post("/models/doubler/predict", json={"data": [ROW]}).status_code == 422
        doubled = http.post("/models/doubler/predict", json={"data": [[2**53 + 1, -7]]}).json()["job_id"]
        classified = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        assert redis_client.lrange("asyncinfer:doubler:pending:normal", 0, -1) == [doubled]
        assert redis_client.lrange("asyncinfer:iris:pending:normal", 0, -1) == [classified]
        processes.worker(dict(env, MODEL_NAME="doubler"))  # each model scales on its own queue
        done = http.get(f"/job/{doubled}", params={"wait": 20}).json()
        assert done["status"] == "completed" and done["result"] == {"prediction": [2 * (2**53 + 1), -14]}
        assert (done["model"], done["model_version"]) == ("doubler", doubler_version)
        assert http.get(f"/job/{classified}").json()["status"] == "pending"  # no iris worker yet
        processes.worker(dict(env, MODEL_NAME="iris"))
        iris = http.get(f"/job/{classified}", params={"wait": 20}).json()
        assert iris["status"] == "completed" and iris["model_version"] == file_version(MODEL_PATH)


def test_a_worker_for_an_unknown_model_stops_with_a_message(processes, redis_server, models_file, tmp_path):
    proc = processes.worker(service_env(redis_server.url, MODELS_FILE=models_file, MODEL_NAME="ranker"))
    assert proc.wait(30) != 0
    assert "MODEL_NAME 'ranker' is not configured (known: iris, doubler)" in processes.logs()


@pytest.mark.slow
def test_the_api_knows_a_large_model_without_holding_its_weights(processes, redis_server, tmp_path):
    big = big_model(tmp_path / "big.onnx", 200)
    assert big.stat().st_size > 200 * 10**6
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"iris": {"path": MODEL_PATH}, "big": {"path": str(big)}}, sort_keys=False))
    proc, url = processes.api(service_env(redis_server.url, MODELS_FILE=models))
    with httpx.Client(base_url=url, timeout=30) as http:
        assert [m["ready"] for m in http.get("/models").json()["models"]] == [True, True]
        assert http.post("/models/big/predict", json={"data": [[1, 2, 3, 4]]}).status_code == 202
        assert http.post("/models/big/predict", json={"data": [[1, 2, 3]]}).status_code == 422
    rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
    assert rss_mb < 150, f"API RSS {rss_mb:.0f} MB with a 200 MB model"

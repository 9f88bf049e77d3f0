"""The /v2 endpoints on a real stack (redis-server, the API and one worker per model, as processes),
driven by tritonclient[http], an independent Open Inference Protocol client. Outputs are compared with
onnxruntime run directly on the same rows, and with exact INT64 and BYTES values."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from tests.conftest import Processes, service_env
from tests.oip.test_protocol import IRIS_IN
from tests.support.models import loop_model

SERVED_WITH_WORKER = ("iris", "ints", "text")
SERVED_WITHOUT_WORKER = "flags"  # its jobs stay pending: the 202 paths
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.3, 2.9, 5.6, 1.8]], dtype=np.float32)


@pytest.fixture(scope="module")
def stack(redis_server, oip_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One API and a worker per model (but `flags`) for the whole module; yields the API's base URL."""
    root = tmp_path_factory.mktemp("oip-stack")
    models_file = root / "models.yaml"
    names = (*SERVED_WITH_WORKER, SERVED_WITHOUT_WORKER)
    models_file.write_text(yaml.safe_dump({name: {"path": str(oip_models[name])} for name in names}, sort_keys=False))
    env = service_env(redis_server.url, MODELS_FILE=str(models_file), OIP_WAIT_SECONDS=20, KEY_PREFIX=f"oip{time.time_ns()}")
    processes = Processes(root)
    try:
        _, base_url = processes.api(env)
        for name in SERVED_WITH_WORKER:
            processes.worker({**env, "MODEL_NAME": name})
        yield base_url
    finally:
        processes.stop_all()
        print(processes.logs())


@pytest.fixture
def client(stack: str) -> Iterator[triton.InferenceServerClient]:
    # first requests may wait for a worker still loading its model: a timeout well above that
    client = triton.InferenceServerClient(stack.removeprefix("http://"), connection_timeout=60, network_timeout=60)
    yield client
    client.close()


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "asyncinfer" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("ints")
    assert meta["name"] == "ints" and meta["platform"] == "onnx_onnxv1" and len(meta["versions"]) == 1
    assert meta["inputs"] == [
        {"name": "x", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "shift", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert meta["outputs"] == [
        {"name": "y", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "shifted", "datatype": "INT64", "shape": [-1, 3]},
    ]
    version = meta["versions"][0]
    assert client.is_model_ready("ints") and client.is_model_ready("ints", model_version=version)
    assert client.get_model_metadata("ints", model_version=version) == meta
    assert not client.is_model_ready("ints", model_version="not-" + version)
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404" and "known models: iris, ints, text, flags" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("ints")  # a Triton extension we do not serve: a readable 404
    assert caught.value.status() == "404" and "is not served" in caught.value.message()


@pytest.mark.parametrize("binary", [False, True])
def test_iris_matches_onnxruntime(client, oip_models, binary):
    session = ort.InferenceSession(str(oip_models["iris"]), providers=["CPUExecutionProvider"])
    expected_label, expected_probabilities = session.run(["label", "probabilities"], {IRIS_IN: ROWS})
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    result = client.infer("iris", [infer_input(IRIS_IN, ROWS, "FP32", binary)], outputs=outputs, request_id="iris-1")
    assert result.get_response()["id"] == "iris-1" and result.get_response()["model_name"] == "iris"
    np.testing.assert_array_equal(result.as_numpy("label"), expected_label)
    # the worker may batch these rows with others' jobs: the same kernels, but allow float rounding
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected_probabilities, rtol=1e-6, atol=1e-7)
    assert result.as_numpy("probabilities").dtype == np.float32


@pytest.mark.parametrize("binary", [False, True])
def test_int64_values_come_back_exactly(client, binary):
    x = np.array([[2**62 + 1, -(2**63), 2**63 - 1], [9_007_199_254_740_993, -1, 0]], dtype=np.int64)
    shift = np.array([[0], [-7]], dtype=np.int64)
    inputs = [infer_input("x", x, "INT64", binary), infer_input("shift", shift, "INT64", binary)]
    # no outputs named: tritonclient asks for every output as binary (binary_data_output)
    result = client.infer("ints", inputs)
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    np.testing.assert_array_equal(result.as_numpy("shifted"), x + shift)
    assert result.as_numpy("y").dtype == np.int64


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_round_trip(client, binary):
    words = np.array([["héllo", "wörld"], ["", "comma, separated"]], dtype=np.object_)
    result = client.infer(
        "text", [infer_input("value", words, "BYTES", binary)], outputs=[triton.InferRequestedOutput("echo", binary_data=binary)]
    )
    echoed = result.as_numpy("echo")
    assert [[item.decode() if isinstance(item, bytes) else item for item in row] for row in echoed.tolist()] == words.tolist()


def test_bad_requests_are_400_naming_the_field(client):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [infer_input(IRIS_IN, ROWS.astype(np.float64), "FP64", True)])
    assert (
        caught.value.status() == "400"
        and f"inputs[0] ('{IRIS_IN}').datatype is FP64, the model expects FP32" in caught.value.message()
    )
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [infer_input(IRIS_IN, ROWS[:, :3].copy(), "FP32", False)])
    assert caught.value.status() == "400" and "does not match the model's [-1, 4] on axis 1" in caught.value.message()


# Shapes no tensor can have (or numpy cannot lay out) although some hold no element at all.
ABSURD_SHAPES = [
    [1, 0, 2**63 - 1],  # no element, but numpy refuses the dimension
    [0, 2**62, 2**62],  # the non-zero dimensions' product overflows int64
    [1, 0, 2**64 - 1],  # past the protocol's int64 dimensions
    [0] * 70,  # more dimensions than numpy has
    [1, -4],
    [2**40, 2**40],  # far more elements than the body holds
]


def post_on(connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """One request on an open connection, which must still be open after the answer: (status, body)."""
    socket = connection.sock
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
    response = connection.getresponse()
    text = response.read().decode()
    assert connection.sock is socket and not response.will_close, "the API closed the keep-alive connection"
    return response.status, text


@pytest.mark.parametrize("binary", [False, True])
def test_absurd_shapes_are_400_naming_the_field_on_a_connection_that_stays_open(stack, binary):
    connection = http.client.HTTPConnection(stack.removeprefix("http://"), timeout=60)
    connection.connect()
    try:
        for shape in ABSURD_SHAPES:
            tensor = {"name": IRIS_IN, "shape": shape, "datatype": "FP32"}
            tensor |= {"parameters": {"binary_data_size": 0}} if binary else {"data": []}
            body = json.dumps({"inputs": [tensor]}).encode()
            headers = {"Inference-Header-Content-Length": str(len(body))} if binary else {}
            status, text = post_on(connection, "/v2/models/iris/infer", body, headers)
            assert status == 400 and f"inputs[0] ('{IRIS_IN}').shape" in json.loads(text)["error"], (shape, text)
        good = {"inputs": [{"name": IRIS_IN, "shape": [1, 4], "datatype": "FP32", "data": ROWS[0].tolist()}]}
        status, text = post_on(connection, "/v2/models/iris/infer", json.dumps(good).encode(), {})
        assert status == 200 and json.loads(text)["model_name"] == "iris", text
    finally:
        connection.close()


def test_an_absurd_shape_from_tritonclient_is_a_400_and_the_client_goes_on(client):
    tensor = infer_input(IRIS_IN, np.zeros((1, 0), np.float32), "FP32", True)
    tensor.set_shape([1, 0, 2**63 - 1])  # tritonclient checks the shape against the data only when it is set
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [tensor])
    assert caught.value.status() == "400" and f"inputs[0] ('{IRIS_IN}').shape" in caught.value.message()
    result = client.infer("iris", [infer_input(IRIS_IN, ROWS[:1], "FP32", True)])
    assert result.as_numpy("label").shape == (1,)


def test_an_idempotent_replay_answers_the_jobs_real_state(stack):
    url = f"{stack}/v2/models/iris/infer"
    key = {"Idempotency-Key": f"oip-replay-{time.time_ns()}"}
    body = {"id": "r1", "inputs": [{"name": IRIS_IN, "shape": [1, 4], "datatype": "FP32", "data": ROWS[0].tolist()}]}
    first = httpx.post(url, json=body, headers=key, timeout=30)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    # the job completed: a replay answers its result, whether it would wait or not
    for prefer in ({}, {"Prefer": "respond-async"}, {"Prefer": "wait=0"}):
        replay = httpx.post(url, json=body, headers={**key, **prefer}, timeout=30)
        assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true", (prefer, replay.text)
        assert replay.json() == first.json()
    # no worker serves `flags`: a replay of its job says pending, and once canceled, the job's error
    flags_url = f"{stack}/v2/models/flags/infer"
    flags_key = {"Idempotency-Key": f"oip-replay-flags-{time.time_ns()}", "Prefer": "respond-async"}
    flags = {"inputs": [{"name": "value", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]}]}
    pending = httpx.post(flags_url, json=flags, headers=flags_key, timeout=30)
    assert pending.status_code == 202 and "idempotent-replayed" not in pending.headers
    replay = httpx.post(flags_url, json=flags, headers=flags_key, timeout=30)
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == pending.json() and replay.headers["location"] == pending.headers["location"]
    assert httpx.delete(f"{stack}{pending.headers['location']}", timeout=30).json()["status"] == "canceled"
    replay = httpx.post(flags_url, json=flags, headers=flags_key, timeout=30)
    assert replay.status_code == 409 and replay.headers["idempotent-replayed"] == "true"
    assert "canceled" in replay.json()["error"] and pending.json()["job_id"] in replay.json()["error"]


def test_a_replay_of_a_failed_job_answers_its_error(processes, redis_server, tmp_path):
    """A job that really fails in a worker: a Loop model's input hangs it past JOB_TIMEOUT_SECONDS."""
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump({"loop": {"path": str(loop_model(tmp_path / "loop.onnx"))}}))
    env = service_env(
        redis_server.url, MODELS_FILE=models_file, JOB_TIMEOUT_SECONDS=1, INFERENCE_THREADS=1, KEY_PREFIX=f"oip{time.time_ns()}"
    )
    _, base_url = processes.api(env)
    processes.worker(env)
    url, key = f"{base_url}/v2/models/loop/infer", {"Idempotency-Key": "hangs"}
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [10**12]}]}  # hours of loop
    first = httpx.post(url, json=body, headers=key, timeout=60)
    assert first.status_code == 500 and "JOB_TIMEOUT_SECONDS" in first.json()["error"], first.text
    for prefer in ({}, {"Prefer": "respond-async"}):
        replay = httpx.post(url, json=body, headers={**key, **prefer}, timeout=60)
        assert replay.status_code == 500 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == first.json()


def test_respond_async_and_a_job_past_the_wait_answer_202(stack):
    body = {"id": "a1", "inputs": [{"name": IRIS_IN, "shape": [1, 4], "datatype": "FP32", "data": ROWS[0].tolist()}]}
    response = httpx.post(f"{stack}/v2/models/iris/infer", json=body, headers={"Prefer": "respond-async"}, timeout=30)
    assert response.status_code == 202 and response.headers["preference-applied"] == "respond-async"
    job_id = response.json()["job_id"]
    assert response.json() == {"job_id": job_id, "status": "pending"} and response.headers["location"] == f"/job/{job_id}"
    job = httpx.get(f"{stack}/job/{job_id}", params={"wait": 20}, timeout=30).json()
    assert job["status"] == "completed" and job["model"] == "iris" and "prediction" in job["result"]
    # no worker serves `flags`: the job is still pending when the (shortened) wait ends
    flags = {"inputs": [{"name": "value", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]}]}
    started = time.monotonic()
    response = httpx.post(f"{stack}/v2/models/flags/infer", json=flags, headers={"Prefer": "wait=1"}, timeout=30)
    assert (
        response.status_code == 202
        and response.json()["status"] == "pending"
        and response.headers["location"].startswith("/job/")
    )
    assert 0.9 <= time.monotonic() - started < 10


def test_body_limit_is_413(stack):
    big = {"inputs": [{"name": IRIS_IN, "shape": [100_000, 4], "datatype": "FP32", "data": [1.5] * 400_000}]}
    response = httpx.post(f"{stack}/v2/models/iris/infer", json=big, timeout=30)
    assert response.status_code == 413 and "MAX_BODY_BYTES" in response.json()["error"]


def test_auth_guards_everything_but_health(redis_server, oip_models, processes, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice client alice-token-0123456789\nbob client bob-token-0123456789ab\n")
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump({"iris": {"path": str(oip_models["iris"])}}))
    env = service_env(
        redis_server.url, MODELS_FILE=str(models_file), AUTH_TOKENS_FILE=str(tokens), KEY_PREFIX=f"oip{time.time_ns()}"
    )
    _, base_url = processes.api(env)
    assert httpx.get(f"{base_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{base_url}/v2/health/ready").status_code == 200
    response = httpx.get(f"{base_url}/v2/models/iris")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {"error": "missing bearer token: send 'Authorization: Bearer <token>'"}

    alice = {"Authorization": "Bearer alice-token-0123456789"}
    client = triton.InferenceServerClient(base_url.removeprefix("http://"))
    try:
        assert client.get_model_metadata("iris", headers=alice)["name"] == "iris"
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata("iris", headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert caught.value.status() == "401"
    finally:
        client.close()
    # no worker here: respond-async queues the job, owned by alice (bob cannot see it)
    body = {"inputs": [{"name": IRIS_IN, "shape": [1, 4], "datatype": "FP32", "data": ROWS[0].tolist()}]}
    response = httpx.post(f"{base_url}/v2/models/iris/infer", json=body, headers={**alice, "Prefer": "respond-async"})
    assert response.status_code == 202
    location = f"{base_url}{response.headers['location']}"
    assert httpx.get(location, headers=alice).json()["status"] == "pending"
    assert httpx.get(location, headers={"Authorization": "Bearer bob-token-0123456789ab"}).status_code == 404

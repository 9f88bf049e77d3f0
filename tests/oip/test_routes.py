"""The /v2 routes over a fake AppState (tests/oip/fakes.py): status codes, error bodies, 202 paths, limits.
Jobs run through the worker's own OnnxModel, so outputs are checked against onnxruntime directly."""

from __future__ import annotations

import gzip

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton

from api.errors import HTTPProblem
from jobqueue import __version__
from jobqueue.states import JobStatus
from tests.conftest import MODEL_PATH
from tests.oip.fakes import FakeRecord
from tests.oip.test_protocol import IRIS_IN, triton_body

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


def onnxruntime_outputs(rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(MODEL_PATH, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {IRIS_IN: rows}), strict=True))


def iris_json(rows: np.ndarray = ROWS, **extra) -> dict:
    return {"inputs": [{"name": IRIS_IN, "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}], **extra}


def test_server_metadata_and_health(fake_client, fake_state):
    meta = fake_client.get("/v2").json()
    assert meta == {"name": "asyncinfer", "version": __version__, "extensions": ["binary_tensor_data"]}
    assert fake_client.get("/v2/health/live").status_code == 200
    assert fake_client.get("/v2/health/ready").json() == {"ready": True}
    fake_state.probe.down = True
    assert fake_client.get("/v2/health/ready").status_code == 503
    fake_state.probe.down = False
    fake_state.draining = True
    assert fake_client.get("/v2/health/ready").status_code == 503
    fake_state.draining = False
    fake_state.models.get("half").ready = False
    response = fake_client.get("/v2/health/ready")
    assert response.status_code == 503 and response.json() == {"ready": False}
    assert fake_client.get("/v2/health/live").status_code == 200  # liveness never depends on any of these


def test_model_metadata_and_readiness(fake_client, fake_state):
    meta = fake_client.get("/v2/models/ints").json()
    assert meta["platform"] == "onnx_onnxv1" and meta["versions"] == ["0123abcd"]
    assert meta["inputs"] == [
        {"name": "x", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "shift", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert fake_client.get("/v2/models/ints/versions/0123abcd").json() == meta
    assert fake_client.get("/v2/models/ints/ready").status_code == 200
    assert fake_client.get("/v2/models/ints/versions/0123abcd/ready").status_code == 200
    fake_state.models.get("ints").ready = False
    assert fake_client.get("/v2/models/ints/ready").status_code == 503
    response = fake_client.get("/v2/models/ints")
    assert response.status_code == 503 and "not ready" in response.json()["error"] and response.headers["retry-after"]


def test_unknown_model_or_version_is_404_naming_what_exists(fake_client):
    response = fake_client.get("/v2/models/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown model 'nope'; known models: iris, ints, text, half, flags, zipmap"}
    response = fake_client.post("/v2/models/nope/infer", json=iris_json())
    assert response.status_code == 404 and "known models: iris" in response.json()["error"]
    response = fake_client.get("/v2/models/iris/versions/7/ready")
    assert (
        response.status_code == 404
        and response.json()["error"] == "model 'iris' has no version '7'; it serves version '0123abcd'"
    )
    response = fake_client.post("/v2/models/iris/versions/7/infer", json=iris_json())
    assert response.status_code == 404 and "has no version '7'" in response.json()["error"]
    response = fake_client.post("/v2/models/iris/versions/0123abcd/infer", json=iris_json())
    assert response.status_code == 200 and response.json()["model_version"] == "0123abcd"


def test_json_infer_matches_onnxruntime(fake_client, fake_state):
    response = fake_client.post("/v2/models/iris/infer", json=iris_json(id="req-7"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "iris" and body["model_version"] == "0123abcd" and body["id"] == "req-7"
    expected = onnxruntime_outputs(ROWS)
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [3]
    assert outputs["label"]["data"] == expected["label"].tolist()
    assert outputs["probabilities"]["shape"] == [3, 3] and outputs["probabilities"]["datatype"] == "FP32"
    np.testing.assert_array_equal(np.array(outputs["probabilities"]["data"], np.float32).reshape(3, 3), expected["probabilities"])
    # the job was queued like any submit: the single-input list form
    assert fake_state.submitted[-1]["data"] == ROWS.tolist()


def test_binary_infer_with_tritonclient_encoding(fake_client):
    x = np.array([[2**62 + 1, -(2**63), 2**63 - 1]], dtype=np.int64)
    shift = np.array([[-1]], dtype=np.int64)
    body, json_size = triton_body([("x", x, "INT64", True), ("shift", shift, "INT64", True)])
    response = fake_client.post(
        "/v2/models/ints/infer", content=body, headers={"Inference-Header-Content-Length": str(json_size)}
    )
    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    result = triton.InferResult.from_response_body(response.content, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    np.testing.assert_array_equal(result.as_numpy("shifted"), x + shift)


@pytest.mark.parametrize(
    "name, datatype, array",
    [
        ("text", "BYTES", np.array([["héllo", "wörld"], ["", "a b"]], dtype=object)),
        ("half", "FP16", np.array([[0.5, -65504], [1e-3, 3]], dtype=np.float16)),
        ("flags", "BOOL", np.array([[True, False], [False, False]])),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_bytes_fp16_bool_round_trip(fake_client, name, datatype, array, binary):
    body, json_size = triton_body(
        [("value", array, datatype, binary)], outputs=[triton.InferRequestedOutput("echo", binary_data=binary)]
    )
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
    response = fake_client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header_length = response.headers.get("inference-header-content-length")
    assert (header_length is not None) == binary
    result = triton.InferResult.from_response_body(response.content, header_length=int(header_length) if binary else None)
    got = result.as_numpy("echo")
    if datatype == "BYTES":
        got = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(got)
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(
    "body, field",
    [
        (
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
            "inputs[0] ('X').datatype is FP64",
        ),
        (
            {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            "inputs[0] ('X').shape [1, 3] does not match",
        ),
        (
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]},
            "inputs[0] ('X').parameters.binary_data_size is 16 but only 0 bytes",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_field(fake_client, fake_state, body, field):
    response = fake_client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 400 and field in response.json()["error"], response.text
    assert not fake_state.submitted  # refused before anything was queued


def test_submit_validation_becomes_400_with_the_field(fake_client):
    # NaN passes the wire format but not the model input check every submit gets (a 422 there)
    rows = np.array([[np.nan, 1, 1, 1]], dtype=np.float32)
    body, json_size = triton_body([(IRIS_IN, rows, "FP32", True)])
    response = fake_client.post(
        "/v2/models/iris/infer", content=body, headers={"Inference-Header-Content-Length": str(json_size)}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("body.data.0.0: values must be finite")


def test_queue_refusals_keep_status_and_retry_after(fake_client, fake_state):
    fake_state.refuse = HTTPProblem(429, "queue holds 5 jobs (MAX_QUEUE_LENGTH); try again later", {"Retry-After": "1"})
    response = fake_client.post("/v2/models/iris/infer", json=iris_json())
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json() == {"error": "queue holds 5 jobs (MAX_QUEUE_LENGTH); try again later"}
    fake_state.refuse = HTTPProblem(503, "job store (Redis) is unavailable", {"Retry-After": "1"})
    assert fake_client.post("/v2/models/iris/infer", json=iris_json()).status_code == 503


def test_respond_async_and_a_job_still_pending_answer_202(fake_client, fake_state):
    response = fake_client.post("/v2/models/iris/infer", json=iris_json(), headers={"Prefer": "respond-async"})
    assert response.status_code == 202 and response.headers["preference-applied"] == "respond-async"
    job_id = response.json()["job_id"]
    assert response.json() == {"job_id": job_id, "status": "pending"} and response.headers["location"] == f"/job/{job_id}"
    fake_state.run_jobs = False  # no worker: the wait ends with the job still pending
    response = fake_client.post("/v2/models/iris/infer", json=iris_json())
    assert response.status_code == 202 and response.json()["status"] == "pending" and "preference-applied" not in response.headers


def test_body_limit_is_413_also_after_gzip(fake_client, fake_state):
    big = iris_json(np.full((300, 4), 5.125, np.float32))  # ~7 kB of JSON > MAX_BODY_BYTES=4096
    response = fake_client.post("/v2/models/iris/infer", json=big)
    assert response.status_code == 413 and "MAX_BODY_BYTES" in response.json()["error"]
    packed = gzip.compress(orjson.dumps(big))
    assert len(packed) < 4096  # small on the wire, too big once inflated
    response = fake_client.post("/v2/models/iris/infer", content=packed, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    response = fake_client.post(
        "/v2/models/iris/infer", content=gzip.compress(orjson.dumps(iris_json())), headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200 and len(response.json()["outputs"]) == 2
    assert not [s for s in fake_state.submitted if len(s["data"]) == 300]


def test_failed_job_is_an_oip_error(fake_client, fake_state):
    fake_state.outcome = FakeRecord(JobStatus.FAILED, error="model raised: boom")
    response = fake_client.post("/v2/models/iris/infer", json=iris_json())
    assert response.status_code == 500 and response.json()["error"].startswith("inference failed: model raised: boom (job ")


def test_prefer_wait_shortens_the_wait_and_is_reported(fake_client, fake_state):
    response = fake_client.post("/v2/models/iris/infer", json=iris_json(), headers={"Prefer": "wait=2"})
    assert response.status_code == 200 and response.headers["preference-applied"] == "wait=2"
    fake_state.run_jobs = False
    response = fake_client.post("/v2/models/iris/infer", json=iris_json(), headers={"Prefer": "wait=0"})
    assert response.status_code == 202 and response.headers["preference-applied"] == "wait=0"
    # longer than OIP_WAIT_SECONDS (5 here) is not honoured, so not reported either
    response = fake_client.post("/v2/models/iris/infer", json=iris_json(), headers={"Prefer": "wait=60"})
    assert response.status_code == 202 and "preference-applied" not in response.headers


@pytest.mark.parametrize("binary", [False, True])
def test_zipmap_probabilities_come_back_as_json_text(fake_client, binary):
    meta = fake_client.get("/v2/models/zipmap").json()
    assert meta["outputs"] == [
        {"name": "output_label", "datatype": "BYTES", "shape": [-1]},
        {"name": "output_probability", "datatype": "BYTES", "shape": [-1]},  # a sequence of maps: JSON text per row
    ]
    inputs = [triton.InferInput(IRIS_IN, [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(ROWS[:2], binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=[triton.InferRequestedOutput(name, binary_data=binary) for name in ("output_label", "output_probability")]
    )
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
    response = fake_client.post("/v2/models/zipmap/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header_length = response.headers.get("inference-header-content-length")
    result = triton.InferResult.from_response_body(response.content, header_length=int(header_length) if header_length else None)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("output_label").tolist()]
    assert labels == ["setosa", "virginica"]
    maps = [orjson.loads(v) for v in result.as_numpy("output_probability").tolist()]
    assert [max(m, key=m.get) for m in maps] == labels and all(abs(sum(m.values()) - 1) < 1e-5 for m in maps)


def test_other_v2_paths_are_404_in_the_protocols_shape(fake_client):
    response = fake_client.get("/v2/models/iris/config")
    assert response.status_code == 404
    assert response.json()["error"].startswith("GET /v2/models/iris/config is not served")
    assert fake_client.post("/v2/repository/index").status_code == 404
    assert fake_client.get("/v2/models/iris").status_code == 200  # the real routes still win
    response = fake_client.request("PUT", "/v2/models/iris/infer")  # a served path, another method: 405
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert "PUT is not allowed" in response.json()["error"]

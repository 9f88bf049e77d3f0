"""End to end over HTTP only: the same tests run against a local stack, containers or a cluster ingress."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import auth_headers
from tests.support.samples import IRIS


def submit(http, data) -> str:
    response = http.post("/predict", json={"data": data})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending" and response.headers["location"] == f"/job/{body['job_id']}"
    uuid.UUID(body["job_id"])  # random UUIDs
    return body["job_id"]


def wait_done(http, job_id: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = http.get(f"/job/{job_id}", params={"wait": 10}).json()
        if body["status"] not in ("pending", "processing"):
            return body
    raise AssertionError(f"job {job_id} not finished after {timeout_s}s")


@pytest.mark.parametrize("name", list(IRIS))
def test_round_trip_returns_the_iris_class(http, name):
    job = wait_done(http, submit(http, [IRIS[name]]))
    assert job["status"] == "completed", job
    assert job["result"]["class_name"] == name
    assert job["result"]["prediction"] == list(IRIS).index(name)
    assert len(job["result"]["probabilities"]) == 3
    assert job["attempts"] >= 1 and job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_many_jobs_all_complete(http):
    ids = [submit(http, [IRIS["virginica"]]) for _ in range(100)]
    jobs = [wait_done(http, job_id) for job_id in ids]
    assert {job["status"] for job in jobs} == {"completed"}


def test_long_poll_returns_as_soon_as_job_completes(http):
    job_id = submit(http, [IRIS["setosa"]])
    started = time.monotonic()
    body = http.get(f"/job/{job_id}", params={"wait": 20}).json()
    assert body["status"] == "completed"
    assert time.monotonic() - started < 10  # woke on completion, not at the 20 s limit


def test_predict_test_sample(http):
    response = http.post("/predict/test")
    assert response.status_code == 202
    assert wait_done(http, response.json()["job_id"])["status"] == "completed"


def test_unknown_job_is_404_with_message(http):
    response = http.get(f"/job/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"data": [[5.1, 3.5, 1.4]]}, "data", "4 values"),
        ({"data": [["a", 3.5, 1.4, 0.2]]}, "data", "numbers"),
        ({"data": []}, "data", "non-empty"),
        ({"data": [[1, 2, 3, 4], [1, 2]]}, "data", "ragged"),
        ({"data": [[1e39, 1, 1, 1]]}, "data", "finite"),
        ({"data": [[[1, 2, 3, 4]]]}, "data", "shape"),
        ({"rows": [[1, 2, 3, 4]]}, "data", "required"),
        ({"data": [[1, 2, 3, 4]], "extra": 1}, "extra", "unknown"),
        ({"data": [[1, 2, 3, 4]] * 1000}, "data", "MAX_ROWS_PER_JOB"),
    ],
)
def test_bad_input_is_422_naming_the_field(http, body, field, words):
    response = http.post("/predict", json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert field in error["loc"] and words in error["msg"]


@pytest.mark.parametrize("raw", [b"{not json", b'{"data": [[NaN, 1, 2, 3]]}', b'{"data": [[Infinity, 1, 2, 3]]}', b"[1, 2]", b""])
def test_malformed_json_and_non_finite_literals_are_422(http, raw):
    response = http.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_oversized_body_is_413(http):
    response = http.post("/predict", content=b'{"data": [' + b"[1,2,3,4]," * 200_000 + b"[1,2,3,4]]}")
    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["detail"]


def test_wait_out_of_range_is_422(http):
    response = http.get(f"/job/{uuid.uuid4()}", params={"wait": 31})
    assert response.status_code == 422
    assert "wait" in response.json()["detail"][0]["loc"]


def test_idempotency_key_returns_the_same_job(http):
    key = str(uuid.uuid4())
    first = http.post("/predict", json={"data": [IRIS["setosa"]]}, headers={"Idempotency-Key": key})
    second = http.post("/predict", json={"data": [IRIS["setosa"]]}, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers.get("idempotent-replayed") == "true"


def test_cancel_and_retry_refuse_wrong_states(http):
    job_id = submit(http, [IRIS["setosa"]])
    assert wait_done(http, job_id)["status"] == "completed"
    cancel = http.delete(f"/job/{job_id}")
    assert cancel.status_code == 409 and cancel.json()["status"] == "completed"
    assert http.post(f"/job/{job_id}/retry").status_code == 409
    assert http.delete(f"/job/{uuid.uuid4()}").status_code == 404


def test_service_endpoints(http):
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").json()["status"] == "ready"
    meta = http.get("/metadata").json()
    assert meta["inputs"][0]["shape"][1] == 4 and meta["labels"] == list(IRIS)
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert http.get("/").json()["links"]["docs"] == "/docs"
    assert http.get("/docs").status_code == 200
    assert "/predict" in http.get("/openapi.json").json()["paths"]
    metrics = http.get("/metrics")  # 404 where metrics have their own port (the chart)
    assert metrics.status_code == 404 or "asyncinfer_queue_pending_jobs" in metrics.text


def test_a_burst_of_concurrent_submits_is_all_accepted(base_url):
    """More concurrent requests than the API has Redis connections: they wait, none is refused."""
    import asyncio

    async def burst() -> list[int]:
        async with httpx.AsyncClient(
            base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=400), headers=auth_headers()
        ) as client:
            responses = await asyncio.gather(*(client.post("/predict", json={"data": [IRIS["setosa"]]}) for _ in range(400)))
        return [r.status_code for r in responses]

    assert set(asyncio.run(burst())) == {202}

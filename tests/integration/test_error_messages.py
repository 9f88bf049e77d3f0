"""Refusals a user can act on, over HTTP against a real API: a 422 names the bad row and column, a 409
names the states the operation needs, and a failed job's error says "failed after" once."""

from __future__ import annotations

import httpx
import pytest

from asyncinfer_client import Client, JobFailed
from jobqueue.states import Outcome
from tests.conftest import service_env
from tests.support.queue import SyncJobs
from tests.support.samples import ROW

ROWS = [ROW] * 30


def with_row(index: int, row: object) -> list[object]:
    """ROWS with row `index` replaced: one bad row among many."""
    return [*ROWS[:index], row, *ROWS[index + 1 :]]


@pytest.fixture
def api_url(processes, redis_server, redis_client) -> str:
    _, url = processes.api(service_env(redis_server.url))
    return url


@pytest.mark.parametrize(
    ("data", "loc", "words"),
    [
        (with_row(17, [5.1, 3.5, 1.4, None]), [17, 3], "null at data[17][3]; expected a number"),
        (with_row(17, [5.1, 3.5, "1.4", 0.2]), [17, 2], 'string "1.4" at data[17][2]; expected a number'),
        (with_row(17, [5.1, 3.5, 1.4, True]), [17, 3], "true at data[17][3]; expected a number"),
        (with_row(9, [5.1, 3.5, 1.4]), [9], "data[9] has 3 values where 4 were expected"),
        (with_row(9, 5.1), [9], "wrap it in a list"),
        (ROW, [], "data is a list of rows: to send one row, wrap it in a list"),
        (
            with_row(17, [5.1, 3.5, 1.4, 1e39]),
            [17, 3],
            "values must be finite numbers in float range: the value at data[17][3] is not",
        ),
    ],
)
def test_a_bad_row_among_many_is_named_by_row_and_column(api_url, redis_client, data, loc, words):
    with httpx.Client(base_url=api_url) as http:
        for path in ("/predict", "/models/iris/predict"):
            answer = http.post(path, json={"data": data})
            assert answer.status_code == 422, answer.text
            [error] = answer.json()["detail"]
            assert error["loc"] == ["body", "data", *loc] and words in error["msg"], error
        [item] = http.post("/predict/batch", json={"items": [{"data": data}]}).json()["items"]
        [error] = item["error"]["detail"]
        assert error["loc"] == ["body", "items", 0, "data", *loc] and words in error["msg"], error
    assert redis_client.dbsize() == 0  # nothing stored


def test_a_409_says_which_states_the_operation_needs(api_url, redis_client, settings):
    queue = SyncJobs(redis_client, settings)
    with httpx.Client(base_url=api_url) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        retried = http.post(f"/job/{job_id}/retry")
        assert retried.status_code == 409
        assert retried.json() == {"detail": "retry needs a failed or dead-lettered job; this job is pending", "status": "pending"}
        queue.claim("w", 1)
        queue.finish("w", [(job_id, Outcome.COMPLETED, "[0]")])
        canceled = http.delete(f"/job/{job_id}")
        assert canceled.status_code == 409
        assert canceled.json()["detail"] == "cancel needs a pending job; this job is completed"


def test_a_job_failed_on_its_last_attempt_says_failed_after_once(api_url, redis_client, settings):
    queue = SyncJobs(redis_client, settings.model_copy(update={"max_attempts": 1}))
    with Client(api_url) as client:
        job = client.submit([ROW])
        queue.claim("w", 1)
        queue.finish("w", [(job.id, Outcome.RETRY, "worker lost while processing")])
        with pytest.raises(JobFailed) as caught:
            job.result(timeout=10)
    message = str(caught.value)
    assert message == f"job {job.id} failed after 1 attempts: worker lost while processing"
    assert message.count("failed after") == 1

"""The SDK against the real local stack: redis-server, the API and a worker as processes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from asyncinfer_client import AsyncClient, Client, Conflict, JobCanceled, JobExpired, NotFound, Outcome, Timeout
from tests.client.helpers import JOB_KEYS, ROW, SETOSA, VIRGINICA, run_cli
from tests.conftest import service_env


def test_submit_wait_and_predict(stack):
    with Client(stack.url) as client:
        job = client.submit([SETOSA])
        view = job.wait(timeout=20)
        assert view.status == "completed" and view.job_id == job.id and view.attempts >= 1
        assert view.result["class_name"] == "setosa"
        assert client.predict([VIRGINICA], timeout=20)["class_name"] == "virginica"
        assert client.get(job.id).result == view.result
        with pytest.raises(Conflict) as raised:
            client.cancel(job.id)  # it completed: nothing to cancel
        assert raised.value.status == 409


def test_async_client_has_the_same_methods(stack):
    async def scenario() -> tuple[object, object, object]:
        async with AsyncClient(stack.url) as client:
            job = await client.submit([SETOSA])
            result = await job.result(timeout=20)
            predicted = await client.predict([VIRGINICA], timeout=20)
            again = await client.get(job.id)
            return result, predicted, again

    result, predicted, again = asyncio.run(scenario())
    assert result["class_name"] == "setosa" and predicted["class_name"] == "virginica"
    assert again.result == result


def test_submit_with_wait_returns_the_ended_job_in_one_request(stack):
    with Client(stack.url) as client:
        job = client.submit([SETOSA], wait=10)
    assert job.view is not None and job.view.status == "completed"  # `Prefer: wait` answered with the view
    assert job.view.result["class_name"] == "setosa"


def test_same_idempotency_key_returns_the_same_job(stack):
    with Client(stack.url) as client:
        first = client.submit([SETOSA], idempotency_key="order-17")
        second = client.submit([SETOSA], idempotency_key="order-17")
    assert first.id == second.id and second.replayed and not first.replayed


def test_canceled_pending_job_raises_job_canceled(api_only):
    with Client(api_only.url) as client:
        job = client.submit([ROW])
        assert job.cancel().status == "canceled"
        with pytest.raises(JobCanceled) as raised:
            job.wait(timeout=5)
        assert raised.value.job_id == job.id and raised.value.view.status == "canceled"


def test_unknown_job_is_not_found_and_waiting_times_out(api_only):
    with Client(api_only.url) as client:
        with pytest.raises(NotFound) as raised:
            client.get("no-such-job")
        assert raised.value.status == 404
        job = client.submit([ROW])  # no worker: it stays pending
        with pytest.raises(Timeout):
            job.wait(timeout=1)


def _inputs(count: int) -> list[list[list[float]]]:
    return [[SETOSA] if i % 2 == 0 else [VIRGINICA] for i in range(count)]


def _check_all(outcomes: list[Outcome], count: int) -> None:
    assert sorted(o.index for o in outcomes) == list(range(count))  # every input exactly once
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
    for outcome in outcomes:  # each result belongs to its own input
        assert outcome.result["class_name"] == ("setosa" if outcome.index % 2 == 0 else "virginica")
    assert len({o.job_id for o in outcomes}) == count


def test_map_1000_inputs_in_order(stack, redis_client):
    with Client(stack.url) as client:
        outcomes = list(client.map(_inputs(1000), concurrency=4, chunk_size=100, timeout=120))
    assert [o.index for o in outcomes] == list(range(1000))
    _check_all(outcomes, 1000)
    assert len(redis_client.keys(JOB_KEYS)) == 1000  # one job per input, none twice


def test_map_1000_inputs_as_completed_async(stack, redis_client):
    async def collect() -> list[Outcome]:
        async with AsyncClient(stack.url) as client:
            return [o async for o in client.map(_inputs(1000), concurrency=4, chunk_size=50, ordered=False, timeout=120)]

    outcomes = asyncio.run(collect())
    _check_all(outcomes, 1000)
    assert len(redis_client.keys(JOB_KEYS)) == 1000


def test_lookup_models_and_metadata(stack):
    with Client(stack.url) as client:
        job = client.submit([SETOSA])
        job.wait(timeout=20)
        found, missing = client.lookup([job.id, "no-such-job"])
        assert found is not None and found.status == "completed" and missing is None
        models = client.models()
        assert [m["name"] for m in models] == ["iris"] and models[0]["default"] is True
        assert client.metadata()["inputs"][0]["shape"][-1] == 4
        assert client.metadata("iris")["example"]["data"]


def test_named_model_routes_and_unknown_model(stack):
    with Client(stack.url) as client:
        job = client.submit([SETOSA], model="iris", priority="high")
        view = job.wait(timeout=20)
        assert view.model == "iris" and view.priority == "high" and job.model == "iris"
        outcomes = list(client.map(_inputs(10), model="iris", chunk_size=5, timeout=60))
        assert [o.index for o in outcomes] == list(range(10)) and all(o.view.model == "iris" for o in outcomes)
        with pytest.raises(NotFound) as raised:
            client.submit([SETOSA], model="no-such-model")
        assert "iris" in str(raised.value)  # the refusal names the models there are


def test_map_reports_an_item_the_service_refuses_and_runs_the_others(stack):
    with Client(stack.url) as client:
        outcomes = list(client.map([[SETOSA], [[1.0, 2.0]], [VIRGINICA]], timeout=60))
    assert [o.status for o in outcomes] == ["completed", "rejected", "completed"]
    refused = outcomes[1].error
    assert refused is not None and refused.status == 422 and "4 values" in str(refused)
    assert outcomes[1].job_id is None


def test_expired_job_raises_job_expired_and_retry_runs_it(processes, redis_server, redis_client):
    env = service_env(redis_server.url, REQUEST_TTL_SECONDS=1)
    _, url = processes.api(env)
    with Client(url) as client:
        job = client.submit([SETOSA])
        time.sleep(1.3)  # not started within REQUEST_TTL_SECONDS: the worker will expire it instead of running it
        processes.worker(env)
        with pytest.raises(JobExpired) as raised:
            job.wait(timeout=15)
        assert "REQUEST_TTL_SECONDS" in (raised.value.view.error or "")
    retried = run_cli(["retry", job.id], url)  # the CLI's retry: queued again, then run
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] in {"pending", "processing", "completed"}  # the worker may be quick
    waited = run_cli(["wait", job.id, "--timeout-s", "15"], url)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert json.loads(waited.stdout)["result"]["class_name"] == "setosa"

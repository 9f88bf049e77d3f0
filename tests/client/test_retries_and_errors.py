"""Retries, idempotency keys and typed errors, against a fake service that refuses on cue."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from stack import free_port

from asyncinfer_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionFailed,
    JobCanceled,
    JobExpired,
    JobFailed,
    RateLimited,
    RetryPolicy,
    Timeout,
)
from tests.client.fake_service import SLOW_DATA
from tests.client.helpers import FAST_RETRY, ROW

TOKEN = "s3cret-token-value"
SLOW_FIRST_CHUNK = [SLOW_DATA] * 10 + [[ROW]] * 20  # with chunks of 10, the first chunk ends last


@pytest.mark.parametrize("status", [503, 429])
def test_submit_retries_honour_retry_after_and_reuse_one_key(fake, status):
    fake.service.fail_first, fake.service.fail_status, fake.service.retry_after = 2, status, "1"
    with Client(fake.url, retry=FAST_RETRY) as client:
        started = time.monotonic()
        job = client.submit([ROW])
        elapsed = time.monotonic() - started
    keys = fake.service.submit_keys()
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0]  # one key, created once, sent on every attempt
    assert fake.service.jobs_created == 1 and job.id in fake.service.jobs_by_key.values()
    assert elapsed >= 2.0  # twice Retry-After: 1, not the policy's 0.05 s backoff


def test_async_submit_retries_without_duplicate_jobs(fake):
    fake.service.fail_first, fake.service.fail_status, fake.service.retry_after = 3, 503, "0"

    async def submit_twenty() -> list[str]:
        async with AsyncClient(fake.url, retry=FAST_RETRY) as client:
            jobs = await asyncio.gather(*(client.submit([ROW]) for _ in range(20)))
        return [job.id for job in jobs]

    ids = asyncio.run(submit_twenty())
    keys = fake.service.submit_keys()
    assert len(keys) == 23  # three refused attempts were sent again
    assert len(set(keys)) == 20 == fake.service.jobs_created == len(set(ids))


def test_dropped_connection_is_retried_with_the_same_key(fake):
    fake.service.drop_first = 2
    with Client(fake.url, retry=FAST_RETRY) as client:
        client.submit([ROW])
    keys = fake.service.submit_keys()
    assert len(keys) == 3 and len(set(keys)) == 1
    assert fake.service.jobs_created == 1


def test_unreachable_service_raises_connection_failed_after_retries(client_env):
    # port 9 (discard): nothing listens
    with Client("http://127.0.0.1:9", retry=FAST_RETRY) as client, pytest.raises(ConnectionFailed):
        client.submit([ROW])


def test_refused_connection_is_retried_briefly_and_names_the_url(client_env, caplog):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a wrong URL, or a stack not started
    caplog.set_level(logging.INFO, logger="asyncinfer_client")
    with Client(url) as client, pytest.raises(ConnectionFailed, match=f"cannot connect to {url}"):
        client.get("some-job")

    async def main() -> None:
        async with AsyncClient(url) as client:
            await client.get("some-job")

    with pytest.raises(ConnectionFailed, match=f"cannot connect to {url}"):
        asyncio.run(main())
    retries = [record for record in caplog.records if "ConnectError; retry" in record.getMessage()]
    assert len(retries) == 2 * RetryPolicy().max_refused_retries == 4  # not the 5 retries of other failures


def test_retries_run_out_into_rate_limited_with_retry_after(fake):
    fake.service.fail_first, fake.service.fail_status, fake.service.retry_after = 100, 429, "0"
    with Client(fake.url, retry=RetryPolicy(max_retries=2, backoff_base_s=0.01)) as client, pytest.raises(RateLimited) as raised:
        client.submit([ROW])
    assert raised.value.status == 429 and raised.value.retry_after_s == 0
    assert "queue is full" in str(raised.value)
    assert len(fake.service.submit_keys()) == 3 and fake.service.jobs_created == 0


def test_bulk_request_keeps_one_key_per_request_across_retries(fake):
    fake.service.fail_first, fake.service.retry_after = 2, "0"
    with Client(fake.url, retry=FAST_RETRY) as client:
        jobs = client.submit_many([[ROW]] * 250, chunk_size=100)
    keys = fake.service.bulk_keys()
    assert len(keys) == 5 and len(set(keys)) == 3  # 3 chunks; the first was sent 3 times with its one key
    assert keys[0] == keys[1] == keys[2]
    assert fake.service.jobs_created == 250 and len({job.id for job in jobs}) == 250


def test_failed_job_raises_job_failed_with_the_worker_error(fake):
    fake.service.job_status, fake.service.job_error = "failed", "model call failed: shape mismatch"
    with Client(fake.url, retry=FAST_RETRY) as client:
        job = client.submit([ROW])
        with pytest.raises(JobFailed) as raised:
            job.result(timeout=5)
        with pytest.raises(JobFailed):
            client.predict([ROW], timeout=5)
    assert raised.value.error == "model call failed: shape mismatch"
    assert raised.value.job_id == job.id and raised.value.view.attempts == 3
    assert "shape mismatch" in str(raised.value)


@pytest.mark.parametrize(("status", "error"), [("canceled", JobCanceled), ("expired", JobExpired)])
def test_canceled_and_expired_jobs_raise_their_errors(fake, status, error):
    fake.service.job_status = status

    async def wait() -> None:
        async with AsyncClient(fake.url, retry=FAST_RETRY) as client:
            job = await client.submit([ROW])
            await job.wait(timeout=5)

    with pytest.raises(error) as raised:
        asyncio.run(wait())
    assert raised.value.view.status == status


def test_wait_gives_up_with_timeout_in_slices(fake):
    fake.service.job_status = "pending"
    with Client(fake.url, retry=FAST_RETRY) as client:
        job = client.submit([ROW])
        started = time.monotonic()
        with pytest.raises(Timeout) as raised:
            job.wait(timeout=1.5)
    assert 1.4 <= time.monotonic() - started < 4
    assert raised.value.job_id == job.id
    polls = [r for r in fake.service.requests if r.method == "GET"]
    assert polls and all(0 < float(r.query["wait"][0]) <= 1.5 for r in polls)  # long polls, never past the deadline


def test_prefer_wait_is_sent_when_submit_waits(fake):
    with Client(fake.url, retry=FAST_RETRY) as client:
        client.submit([ROW], wait=45)
    assert fake.service.requests[0].prefer == "wait=30"  # the service holds at most 30 s


def test_token_is_sent_but_never_shown(fake, caplog):
    fake.service.required_token = TOKEN
    caplog.set_level(logging.DEBUG)
    with Client(fake.url, token=TOKEN, retry=FAST_RETRY) as client:
        client.submit([ROW])
        assert TOKEN not in repr(client)
    assert fake.service.requests[-1].authorization == f"Bearer {TOKEN}"
    with Client(fake.url, token="wrong-" + TOKEN, retry=FAST_RETRY) as client, pytest.raises(AuthenticationError) as raised:
        client.submit([ROW])
    assert raised.value.status == 401
    assert TOKEN not in str(raised.value) and TOKEN not in repr(raised.value) and TOKEN not in repr(raised.value.__dict__)
    assert TOKEN not in caplog.text


def test_url_and_token_default_from_the_environment(fake, monkeypatch):
    fake.service.required_token = TOKEN
    monkeypatch.setenv("ASYNCINFER_URL", fake.url)
    monkeypatch.setenv("ASYNCINFER_TOKEN", TOKEN)
    with Client(retry=FAST_RETRY) as client:
        assert client.base_url == fake.url
        client.submit([ROW])
    assert fake.service.jobs_created == 1


@pytest.mark.parametrize("ordered", [True, False])
def test_map_order_with_a_slow_first_chunk(fake, ordered):
    fake.service.slow_delay_s = 1.5  # the first chunk's jobs end last
    with Client(fake.url, retry=FAST_RETRY) as client:
        indexes = [o.index for o in client.map(SLOW_FIRST_CHUNK, concurrency=3, chunk_size=10, ordered=ordered, timeout=20)]
    assert sorted(indexes) == list(range(30))
    if ordered:
        assert indexes == list(range(30))  # held back until the first chunk ended
    else:
        assert sorted(indexes[:20]) == list(range(10, 30)) and sorted(indexes[20:]) == list(range(10))  # as they ended


def test_async_map_as_completed_with_a_slow_first_chunk(fake):
    fake.service.slow_delay_s = 1.5

    async def collect() -> list[int]:
        async with AsyncClient(fake.url, retry=FAST_RETRY) as client:
            return [o.index async for o in client.map(SLOW_FIRST_CHUNK, concurrency=3, chunk_size=10, ordered=False, timeout=20)]

    indexes = asyncio.run(collect())
    assert sorted(indexes[:20]) == list(range(10, 30)) and sorted(indexes[20:]) == list(range(10))


def test_map_reports_a_chunk_that_did_not_end_in_time_as_timeouts(fake):
    fake.service.job_status = "pending"
    with Client(fake.url, retry=FAST_RETRY) as client:
        outcomes = list(client.map([[ROW]] * 5, chunk_size=5, timeout=0.5))
    assert [o.status for o in outcomes] == ["timeout"] * 5
    with pytest.raises(Timeout):
        outcomes[0].unwrap()


def test_map_sends_items_refused_for_a_full_queue_again(fake):
    fake.service.refuse_items_first = 15  # the first chunk entirely, half of the second
    with Client(fake.url, retry=FAST_RETRY) as client:
        outcomes = list(client.map([[ROW]] * 30, concurrency=1, chunk_size=10, timeout=20))
    assert [o.status for o in outcomes] == ["completed"] * 30
    assert fake.service.jobs_created == 30 and len(fake.service.bulk_keys()) >= 4  # refused items went again


def test_map_gives_up_on_refused_items_when_retries_run_out(fake):
    fake.service.refuse_items_first = 10_000

    async def collect() -> list[str]:
        async with AsyncClient(fake.url, retry=RetryPolicy(max_retries=2, backoff_base_s=0.01)) as client:
            return [o.status async for o in client.map([[ROW]] * 4, chunk_size=4)]

    assert asyncio.run(collect()) == ["rejected"] * 4
    assert len(fake.service.bulk_keys()) == 3 and fake.service.jobs_created == 0

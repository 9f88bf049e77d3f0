"""Redis Sentinel failover (issue #24) on real processes: three redis-servers, three Sentinels, the API,
workers and the notifier, all on loopback. With REDIS_MIN_REPLICAS_ACK=1 no acknowledged job is lost,
none gets two results, and the services follow the new primary without a restart."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest
import redis

from jobqueue.connection import demoted
from jobqueue.keys import StoreKeys
from tests.conftest import service_env
from tests.faults.helpers import Jobs, assert_queue_consistent, resume, start_paused
from tests.faults.load import PAYLOAD, SubmitLoad, serve_under_load
from tests.faults.sentinel_cluster import DOWN_AFTER_MS, SentinelCluster
from tests.notifier.conftest import Notifiers
from tests.notifier.helpers import Receiver, new_secret
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
STORE = StoreKeys("asyncinfer")
ACK_TIMEOUT_MS = 500
# What "a few seconds past down-after" means here: Sentinel's vote and promotion, the clients' next
# discovery, and a loaded 2-core CI machine.
FAILOVER_503_BUDGET_S = DOWN_AFTER_MS / 1000 + 10


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    root = tmp_path / "cluster"
    root.mkdir()
    started = SentinelCluster(root).start()
    yield started
    started.stop()


def sentinel_env(cluster: SentinelCluster, **overrides: object) -> dict[str, str]:
    # REDIS_URL's host points nowhere on purpose: only its db and credentials count with Sentinels
    return service_env(
        "redis://127.0.0.1:1/0",
        REDIS_SENTINELS=cluster.sentinel_env,
        REDIS_MIN_REPLICAS_ACK=1,
        REDIS_REPLICA_ACK_TIMEOUT_MS=ACK_TIMEOUT_MS,
        REDIS_DEADLINE_SECONDS=3,
        **overrides,
    )


def all_completed(jobs: Jobs, job_ids: list[str]) -> bool:
    return all(r.get("status") == "completed" for r in jobs.records(job_ids))


def test_primary_killed_under_submit_load_loses_no_acknowledged_job(cluster: SentinelCluster, processes, load_threads) -> None:
    env = sentinel_env(cluster)
    _, base = processes.api(env)
    for _ in range(2):
        processes.worker(env)
    load = SubmitLoad(base).start()
    load_threads.append(load)
    wait_until(lambda: len(load.acknowledged()) >= 50, 30, "submits before the kill")
    old_port = cluster.primary_port()
    killed_at = time.monotonic()
    cluster.servers[cluster.index_of(old_port)].kill()
    cluster.wait_failover(old_port)
    # keep submitting until the API has acknowledged submits for a while on the new primary
    wait_until(lambda: sum(1 for when, s, _ in load.answers if s == 202 and when > killed_at) >= 50, 60, "submits after failover")
    load.stop()

    counts = load.statuses()
    assert set(counts) <= {202, 503}, f"only 202 or 503 (never a 500 or a hang): {counts}"
    refused = [when - killed_at for when, status, _ in load.answers if status == 503]
    seconds_of_503 = max(refused, default=0.0)
    assert seconds_of_503 < FAILOVER_503_BUDGET_S, f"503s went on {seconds_of_503:.1f}s after the kill"

    acknowledged = load.acknowledged()
    primary = Jobs(cluster.primary())
    wait_until(
        lambda: all_completed(primary, acknowledged),
        60,
        "every acknowledged job to complete",
    )
    records = primary.records(acknowledged)
    lost = [job_id for job_id, r in zip(acknowledged, records, strict=True) if not r]
    run_twice = sum(1 for r in records if int(r.get("attempts") or 0) > 1)
    assert not lost and all(r.get("result") for r in records)
    assert len(set(acknowledged)) == len(acknowledged)
    print(
        f"\nprimary SIGKILL under load: {len(acknowledged)} jobs acknowledged, {counts[503]} answers 503 for"
        f" {seconds_of_503:.1f}s after the kill (down-after {DOWN_AFTER_MS} ms), jobs lost {len(lost)},"
        f" jobs run twice {run_twice}"
    )


def test_both_replicas_stopped_submits_answer_503_within_the_ack_timeout(cluster: SentinelCluster, processes) -> None:
    """And what such a 503 means: the submit or cancel may have been stored (the README's promise), a
    repeat with the same Idempotency-Key finds it, and no end is shown before replicas hold it."""
    env = sentinel_env(cluster)
    _, base = processes.api(env)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    # the shipped min-replicas-max-lag (5 s): the primary keeps taking writes while this test needs it
    cluster.client(0).config_set("min-replicas-max-lag", 5)
    with httpx.Client(base_url=base, timeout=20) as http:
        pending = http.post("/predict", content=PAYLOAD).json()["job_id"]  # no worker: it stays pending
        for index in range(1, 3):
            cluster.signal(index, signal.SIGSTOP)
        try:
            started = time.monotonic()
            submitted = http.post("/predict", content=PAYLOAD, headers=key)
            took = time.monotonic() - started
            canceled = http.delete(f"/job/{pending}")
            read = http.get(f"/job/{pending}")
        finally:
            for index in range(1, 3):
                cluster.signal(index, signal.SIGCONT)
        assert submitted.status_code == 503, submitted.text
        assert "Retry-After" in submitted.headers
        assert "Idempotency-Key" in submitted.json()["detail"]
        assert took < ACK_TIMEOUT_MS / 1000 + 2, f"the 503 took {took:.2f}s"
        assert canceled.status_code == 503, canceled.text
        assert read.status_code == 503, f"an end no replica holds was shown: {read.text}"

        # replicas back: the refused cancel and submit had been stored, and now they are acknowledged
        wait_until(lambda: http.get(f"/job/{pending}").status_code == 200, 10, "the replicas to catch up")
        assert http.get(f"/job/{pending}").json()["status"] == "canceled"
        repeated = http.post("/predict", content=PAYLOAD, headers=key)
        assert repeated.status_code == 202 and repeated.headers.get("Idempotent-Replayed") == "true", repeated.text


def test_a_replicas_refusals_read_as_a_demoted_primary(cluster: SentinelCluster) -> None:
    """What a client still connected to a primary that became a replica hears, on this Redis: a write,
    or a script's first write (Redis 6.2 runs the script). Both make a Sentinel client reconnect and
    ask the Sentinels again (jobqueue/multiplex.py for the API, WorkerQueue._run for a worker)."""
    replica = cluster.client(1)
    refusals = []
    for attempt in (lambda: replica.set("k", "v"), lambda: replica.eval("return redis.call('SET', 'k', 'v')", 0)):
        with pytest.raises(redis.ResponseError) as refused:
            attempt()
        refusals.append(refused.value)
    assert all(demoted(error) for error in refusals), refusals
    with pytest.raises(redis.ResponseError) as other:
        replica.eval("return redis.call('NOSUCHCOMMAND')", 0)
    assert not demoted(other.value)


def test_frozen_primary_rejoins_as_a_replica_and_nothing_goes_backwards(
    cluster: SentinelCluster, processes, load_threads
) -> None:
    load, poller = serve_under_load(processes, sentinel_env(cluster), load_threads)
    wait_until(lambda: len(load.acknowledged()) >= 30, 30, "submits before the freeze")
    old_port = cluster.primary_port()
    old = cluster.index_of(old_port)
    frozen_at = time.monotonic()
    cluster.signal(old, signal.SIGSTOP)
    new_port = cluster.wait_failover(old_port)
    wait_until(lambda: sum(1 for when, s, _ in load.answers if s == 202 and when > frozen_at) >= 30, 60, "submits after failover")
    cluster.signal(old, signal.SIGCONT)
    # cut off from its replicas, the resumed old primary takes no write (min-replicas-to-write), or
    # it has been turned into a replica already (READONLY): either way nothing it takes can be acknowledged
    with pytest.raises(redis.ResponseError, match="NOREPLICAS|READONLY"):
        cluster.client(old).set("asyncinfer:probe", "1")
    cluster.wait(
        lambda: cluster.client(old).info("replication").get("master_port") == new_port, "the old primary to rejoin as a replica"
    )
    time.sleep(1)  # a little load with the old primary back as a replica
    load.stop()
    poller.stop()

    counts = load.statuses()
    assert set(counts) <= {202, 503}, f"only 202 or 503: {counts}"
    acknowledged = load.acknowledged()
    primary = Jobs(cluster.primary())
    wait_until(lambda: all_completed(primary, acknowledged), 60, "every acknowledged job")
    assert all(r.get("result") for r in primary.records(acknowledged))
    assert not poller.went_backwards(), poller.went_backwards()[:3]
    assert sum(len(views) for views in poller.seen.values()) > 50, "the poller read jobs throughout"


def test_a_worker_holding_jobs_whose_claim_was_lost_sees_them_run_again_with_one_result(
    cluster: SentinelCluster, processes, models_file: Path, loop_speed: float
) -> None:
    env = sentinel_env(cluster, MODELS_FILE=models_file, MODEL_NAME="loop", MAX_BATCH_SIZE=8)
    jobs = Jobs(cluster.client(0))
    holder = start_paused(jobs, "loop", lambda: processes.worker(env))
    ids = [jobs.enqueue("loop", [[v]]) for v in (int(loop_speed * 1.5), 3, 5)]
    assert jobs.client.wait(2, 5000) == 2  # both replicas hold the jobs, pending, and the model paused
    # From here on nothing the primary takes reaches a replica: they are frozen and their links cut (a
    # frozen replica would still find what was sent in its socket buffer when resumed). The primary
    # takes writes anyway, as it does for MIN_REPLICAS_MAX_LAG seconds after losing its replicas.
    for index in (1, 2):
        cluster.signal(index, signal.SIGSTOP)
    jobs.client.config_set("min-replicas-to-write", 0)
    jobs.client.client_kill_filter(_type="replica")
    resume(jobs, "loop")
    wait_until(lambda: set(jobs.statuses(ids)) == {"processing"}, 5, "the worker to claim the batch")
    cluster.servers[0].kill()
    for index in (1, 2):
        cluster.signal(index, signal.SIGCONT)
    cluster.wait_failover(cluster.servers[0].port, 40)
    survivor = Jobs(cluster.primary())
    # The claim was lost with the old primary: pending again on the new one, unless the holder, which
    # followed the failover with its results in hand, has recorded them already (finish takes a result
    # for a job that has not ended: the first result wins, and the pending copy is then never run).
    assert set(survivor.statuses(ids)) <= {"pending", "completed"}, survivor.records(ids)
    resume(survivor, "loop")  # the resume was lost too
    processes.worker(env)  # a second worker: the jobs may run again on either
    wait_until(lambda: survivor.all_ended(ids), 60, "the jobs to run again on the new primary")
    records = survivor.records(ids)
    assert {r["status"] for r in records} == {"completed"}, records
    assert all(r.get("result") for r in records)
    assert holder.poll() is None, "the worker that held the batch followed the failover"
    wait_until(lambda: not any(survivor.processing_lists("loop").values()), 30, "nothing left held")
    assert_queue_consistent(survivor, "loop")


def test_waiters_and_the_notifier_report_every_end_after_a_failover(cluster: SentinelCluster, processes, tmp_path: Path) -> None:
    secret = new_secret()
    receiver = Receiver(secret)
    env = sentinel_env(cluster, WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE="true")
    _, base = processes.api(env)
    notifiers = Notifiers("redis://127.0.0.1:1/0", secret, tmp_path)
    notifier_env = {k: env[k] for k in ("REDIS_SENTINELS", "REDIS_MIN_REPLICAS_ACK", "REDIS_REPLICA_ACK_TIMEOUT_MS")}
    try:
        notifiers.start(**notifier_env)
        with httpx.Client(base_url=base, timeout=20) as http:
            body = {"data": [[5.9, 3.0, 4.2, 1.5]], "callback_url": receiver.url}
            ids = [http.post("/predict", json=body).json()["job_id"] for _ in range(6)]
        reported = asyncio.run(report_ends_across_a_failover(cluster, processes, env, base, ids))
        wait_until(lambda: len(receiver.accepted) == len(ids), 30, "a webhook for every job")
    finally:
        notifiers.stop_all()
        receiver.stop()
    assert {view["job_id"] for view in receiver.accepted.values()} == set(ids)
    assert {view["status"] for view in receiver.accepted.values()} == {"completed"}
    for how, (job_id, late_s) in reported.items():
        assert late_s < WAKE_BUDGET_S, f"{how} reported {job_id} {late_s:.1f}s after it ended: it did not resubscribe"


# Waiters woken by the event subscription report an end within this; one that missed the failover
# would only notice at its slow re-read (SSE keep-alive 15 s, WebSocket 30 s).
WAKE_BUDGET_S = 8.0


async def report_ends_across_a_failover(
    cluster: SentinelCluster, processes, env: dict[str, str], base: str, ids: list[str]
) -> dict[str, tuple[str, float]]:
    """Open a WebSocket on every job, an SSE stream and a long poll on one each, freeze the primary, and
    start the worker once the Sentinels promoted a replica: every end happens on the new primary while
    the old one holds the API's subscription open and silent. Returns, per waiter, a job and how long
    after its end (Redis clock) the waiter reported it."""
    ws_url = base.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(ws_url)
        await ws.send_json({"subscribe": ids})
        sse = asyncio.create_task(sse_end(session, f"{base}/job/{ids[0]}/events"))
        poll = asyncio.create_task(long_poll_end(session, f"{base}/job/{ids[1]}"))
        await asyncio.sleep(0.5)
        old_port = cluster.primary_port()
        cluster.signal(cluster.index_of(old_port), signal.SIGSTOP)
        await asyncio.to_thread(cluster.wait_failover, old_port)
        await asyncio.to_thread(processes.worker, env)
        reported: dict[str, tuple[str, float]] = {}
        async with asyncio.timeout(60):
            views: dict[str, tuple[dict, float]] = {}
            while len(views) < len(ids):
                message = await ws.receive_json()
                if message.get("type") == "job":
                    views[message["job"]["job_id"]] = (message["job"], time.time())
            reported["websocket"] = max(((j, t - finished_s(v)) for j, (v, t) in views.items()), key=lambda x: x[1])
            for how, task in (("sse", sse), ("long poll", poll)):
                view, at = await task
                reported[how] = (view["job_id"], at - finished_s(view))
        await ws.close()
    return reported


def finished_s(view: dict) -> float:
    return datetime.fromisoformat(view["finished_at"].replace("Z", "+00:00")).timestamp()


async def sse_end(session: aiohttp.ClientSession, url: str) -> tuple[dict, float]:
    """The `end` event's view and when it arrived, reconnecting as an EventSource does."""
    while True:
        async with session.get(url) as response:
            event = ""
            async for line in response.content:
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text.removeprefix("event: ")
                elif text.startswith("data: ") and event == "end":
                    return orjson.loads(text.removeprefix("data: ")), time.time()
        await asyncio.sleep(0.5)


async def long_poll_end(session: aiohttp.ClientSession, url: str) -> tuple[dict, float]:
    """GET ?wait=20 until the job has ended, repeated on a 503 (Redis away) as its Retry-After says."""
    while True:
        async with session.get(url, params={"wait": "20"}) as response:
            if response.status == 200:
                view = await response.json()
                if view["status"] == "completed":
                    return view, time.time()
        await asyncio.sleep(0.5)

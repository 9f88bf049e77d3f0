"""Everything else works unchanged on a Redis Cluster with sharded queues (issue #25): bulk submit and
lookup, Prefer: wait, long poll, SSE and the WebSocket, webhooks through the notifier, cancel, pause and
resume, dead letters and retry, a SIGKILLed worker's jobs, /metrics and /admin/overview summing shards;
and a standalone Redis keeps untagged ids."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import redis
import yaml
from stack import RedisServer

from tests.conftest import MODEL_PATH, Processes, service_env
from tests.integration.test_client_paths import setosa_result, wait_all_done, ws_messages, ws_nothing_more
from tests.notifier.conftest import Notifiers
from tests.notifier.helpers import Receiver, new_secret
from tests.support.cluster_stack import SHARDED, SHARDS, SINGLE, cluster_env, job_key, shard_tag, two_models_file
from tests.support.models import loop_iterations_per_second, loop_model
from tests.support.redis_cluster import RedisClusterHarness
from tests.support.samples import ROW
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
HANG = 10**12  # Loop iterations: hours of work, so only the watchdog ends the call (tests/faults/test_poison.py)


def one_per_shard(http: httpx.Client, path: str = "/predict", **fields: Any) -> list[str]:
    """Submit until each shard of the model has one job (submits go to the shards in turn)."""
    ids = []
    for _ in range(SHARDS):
        answer = http.post(path, json={"data": [ROW], **fields})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["job_id"])
    assert len({shard_tag(i) for i in ids}) == SHARDS, ids
    return ids


def test_bulk_lookup_prefer_wait_and_long_poll(processes: Processes, redis_cluster: RedisClusterHarness) -> None:
    env = cluster_env(redis_cluster)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=60) as http:
        bulk = http.post("/predict/batch", json={"items": [{"data": [ROW]}] * (SHARDS * 3)}).json()["items"]
        ids = [item["job_id"] for item in bulk]
        assert len({shard_tag(i) for i in ids}) == SHARDS
        # not ids this service makes: an untagged uuid and a "tag" no shard has, each "not found"
        strangers = [str(uuid.uuid4()), f"{uuid.uuid4()}.zz", f"{uuid.uuid4()}.NOT-A-TAG"]
        looked = http.post("/jobs/lookup", json={"ids": [*strangers, *ids]}).json()["items"]
        assert looked[:3] == [{"job_id": i, "found": False} for i in strangers], looked[:3]
        assert [(v["job_id"], v["status"]) for v in looked[3:]] == [(i, "pending") for i in ids]
        assert all(http.get(f"/job/{i}").status_code == 404 for i in strangers)

        # a long poll held while no worker runs ends with the job's end once one starts
        polled: list[httpx.Response] = []
        poll = threading.Thread(target=lambda: polled.append(http.get(f"/job/{ids[-1]}", params={"wait": 30})))
        poll.start()
        time.sleep(1)
        assert not polled, "the long poll answered before the job ended"
        processes.worker(env)
        poll.join(90)
        assert polled and polled[0].status_code == 200
        setosa_result(polled[0].json())
        for view in wait_all_done(http, ids):
            setosa_result(view)

        for _ in range(SHARDS):  # Prefer: wait on every shard
            answer = http.post("/predict", json={"data": [ROW]}, headers={"Prefer": "wait=30"})
            assert answer.status_code == 200, answer.text
            setosa_result(answer.json())
            ids.append(answer.json()["job_id"])
    assert len({shard_tag(i) for i in ids[-SHARDS:]}) == SHARDS


async def sse_views(session: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, job view) of each data event of a job's SSE stream, until the server ends it."""
    events, event = [], {}
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in event:
                    events.append((event.get("event", "message"), orjson.loads(event["data"])))
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")
    return events


def test_sse_and_websocket_follow_jobs_on_every_shard(processes: Processes, redis_cluster: RedisClusterHarness) -> None:
    env = cluster_env(redis_cluster)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        ids = one_per_shard(http)
        before = one_per_shard(http)  # subscribed to once they ended (or about to): each still arrives once

    async def scenario() -> tuple[list[list[tuple[str, dict[str, Any]]]], list[dict[str, Any]], list[dict[str, Any]]]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session,
            session.ws_connect(url.replace("http://", "ws://") + "/ws") as ws,
        ):
            await ws.send_json({"subscribe": ids})
            streams = [asyncio.create_task(sse_views(session, f"{url}/job/{i}/events")) for i in ids]
            await ws_nothing_more(ws, 1.0)  # nothing has ended: no worker yet
            processes.worker(env)
            live = await ws_messages(ws, SHARDS, timeout_s=60)
            ended = [await stream for stream in streams]
            await ws.send_json({"subscribe": before})
            late = await ws_messages(ws, SHARDS, timeout_s=30)
            await ws_nothing_more(ws, 0.5)
        return ended, live, late

    ended, live, late = asyncio.run(scenario())
    assert {m["type"] for m in live + late} == {"job"}
    assert sorted(m["job"]["job_id"] for m in live) == sorted(ids)
    assert sorted(m["job"]["job_id"] for m in late) == sorted(before)
    for message in live + late:
        setosa_result(message["job"])
    for job_id, events in zip(ids, ended, strict=True):
        assert events[0][0] == "status" and events[0][1]["status"] == "pending", events
        assert events[-1][0] == "end" and events[-1][1]["job_id"] == job_id, events
        setosa_result(events[-1][1])


def test_webhooks_from_every_shard_reach_the_receiver(
    processes: Processes, redis_cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    secret = new_secret()
    receiver = Receiver(secret)
    notifiers = Notifiers(redis_cluster.seed_url, secret, tmp_path)
    try:
        env = cluster_env(redis_cluster, WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE="true")
        _, url = processes.api(env)
        notifiers.start(REDIS_CLUSTER="true", QUEUE_SHARDS=SHARDS)
        with httpx.Client(base_url=url, timeout=30) as http:
            canceled = one_per_shard(http, callback_url=receiver.url)  # no worker yet: canceled while pending
            for job_id in canceled:
                assert http.delete(f"/job/{job_id}").status_code == 200
            processes.worker(env)
            completed = one_per_shard(http, callback_url=receiver.url)
            wait_until(lambda: len(receiver.accepted) == 2 * SHARDS, 60, "a webhook for each job")
            views = {view["job_id"]: view for view in receiver.accepted.values()}
            assert set(views) == {*canceled, *completed}
            assert all(views[i]["status"] == "canceled" for i in canceled)
            for job_id in completed:
                setosa_result(views[job_id])
            assert all(r.verified for r in receiver.requests) and len(receiver.requests) == 2 * SHARDS
            wait_until(
                lambda: all(http.get(f"/job/{i}").json()["notification"]["state"] == "delivered" for i in completed),
                20,
                "delivered states",
            )
            assert http.get("/admin/overview").json()["notifications"] == {"pending": 0, "failed": 0}
    finally:
        notifiers.stop_all()
        receiver.stop()
        print(notifiers.logs())


def test_pause_resume_cancel_and_retry_of_expired_jobs(processes: Processes, redis_cluster: RedisClusterHarness) -> None:
    ttl_s = 2
    env = cluster_env(redis_cluster, REQUEST_TTL_SECONDS=ttl_s)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post(f"/admin/models/{SHARDED}/pause").status_code == 200
        processes.worker(env)
        stale = one_per_shard(http) + one_per_shard(http)
        canceled = stale.pop()
        assert http.delete(f"/job/{canceled}").json()["status"] == "canceled"
        time.sleep(ttl_s + 1)  # paused: nothing starts, so every stale job outlives REQUEST_TTL_SECONDS
        fresh = one_per_shard(http)
        model = http.get("/admin/overview").json()["models"][0]
        assert model["paused"] and model["pending"]["normal"] == len(stale) + len(fresh), model
        assert all(http.get(f"/job/{i}").json()["status"] == "pending" for i in stale + fresh)

        assert http.post(f"/admin/models/{SHARDED}/resume").status_code == 200
        for view in wait_all_done(http, fresh):
            setosa_result(view)
        expired = wait_all_done(http, stale)
        assert {v["status"] for v in expired} == {"expired"}, expired
        assert not http.get("/admin/overview").json()["models"][0]["paused"]

        for job_id in stale:  # a retry puts each back on its own shard's list
            retried = http.post(f"/job/{job_id}/retry")
            # a worker is running: the view read after the retry may show it started already
            assert retried.status_code == 202 and retried.json()["status"] != "expired", retried.text
        for view in wait_all_done(http, stale):
            setosa_result(view)
        assert http.get(f"/job/{canceled}").json()["status"] == "canceled"
        stats = http.get("/admin/overview").json()["models"][0]["stats"]
    assert (stats["expired"], stats["retried"], stats["canceled"]) == (len(stale), len(stale), 1), stats
    assert stats["completed"] == len(stale) + len(fresh), stats


@pytest.fixture(scope="module")
def loop_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loop_model(tmp_path_factory.mktemp("loop") / "loop.onnx")


def loop_env(cluster: RedisClusterHarness, directory: Path, loop_path: Path, **overrides: object) -> dict[str, str]:
    """MODELS_FILE: `loop` (each job runs as long as its input says) in 3 shards, its worker's model."""
    path = directory / "loop.yaml"
    path.write_text(yaml.safe_dump({"loop": {"path": str(loop_path), "shards": SHARDS}}))
    return cluster_env(cluster, MODELS_FILE=path, MODEL_NAME="loop", MAX_BATCH_SIZE=1, INFERENCE_THREADS=1, **overrides)


def test_a_poison_input_is_dead_lettered_and_its_retry_runs_again(
    processes: Processes, redis_cluster: RedisClusterHarness, tmp_path: Path, loop_path: Path
) -> None:
    env = loop_env(redis_cluster, tmp_path, loop_path, JOB_TIMEOUT_SECONDS=1, MAX_ATTEMPTS=1)
    _, url = processes.api(env)
    processes.worker(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        poison = http.post("/predict", json={"data": [[HANG]]}).json()["job_id"]
        good = [http.post("/predict", json={"data": [[n]]}).json()["job_id"] for n in (3, 5)]
        failed = http.get(f"/job/{poison}", params={"wait": 30}).json()
        assert failed["status"] == "failed" and "JOB_TIMEOUT_SECONDS" in failed["error"], failed
        assert all(v["status"] == "completed" for v in wait_all_done(http, good))
        assert poison in http.get("/admin/dead-letters").text
        retried = http.post(f"/job/{poison}/retry")
        assert retried.status_code == 202 and retried.json()["status"] in ("pending", "processing"), retried.text
        again = http.get(f"/job/{poison}", params={"wait": 30}).json()
        assert again["status"] == "failed" and again["attempts"] == 1, again
        assert http.get("/admin/overview").json()["models"][0]["dead"] == 1
        assert http.post("/admin/dead-letters/retry").status_code == 200  # retry-all, over every shard
        wait_until(lambda: http.get("/admin/overview").json()["models"][0]["stats"]["failed"] == 3, 60, "a third run")
        stats = http.get("/admin/overview").json()["models"][0]["stats"]
    assert (stats["failed"], stats["retried"], stats["completed"]) == (3, 2, 2), stats


def test_a_sigkilled_workers_held_jobs_run_again_on_another_once_each(
    processes: Processes, redis_cluster: RedisClusterHarness, tmp_path: Path, loop_path: Path
) -> None:
    trips = int(loop_iterations_per_second(loop_path) * 2)  # about 2 s of model time per job
    env = loop_env(redis_cluster, tmp_path, loop_path)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        ids = [http.post("/predict", json={"data": [[trips + n]]}).json()["job_id"] for n in range(SHARDS)]
        assert len({shard_tag(i) for i in ids}) == SHARDS
        victim = processes.worker(env)

        def held() -> list[str]:
            return [i for i in ids if http.get(f"/job/{i}").json()["status"] == "processing"]

        with redis_cluster.cluster_client() as client:
            first_shard = client.hget("asyncinfer:shards", "loop/0")
        # a job of another shard than the one the worker starts on: recovery must look at every shard
        wait_until(lambda: {shard_tag(i) for i in held()} - {first_shard}, 60, "the worker to hold a later shard's job")
        holding = held()
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        processes.worker(env)
        views = {v["job_id"]: v for v in wait_all_done(http, ids, timeout_s=120)}
        model = http.get("/admin/overview").json()["models"][0]
    assert all(v["status"] == "completed" for v in views.values()), views
    assert all(views[i]["attempts"] == 2 for i in holding), (holding, views)
    assert [views[i]["result"]["prediction"] for i in ids] == [[trips + n] for n in range(SHARDS)], views
    # exactly one result each: one completion counted per job, the held ones recovered once
    assert model["stats"]["completed"] == SHARDS and model["stats"]["recovered"] == len(holding), model
    assert model["inflight"] == 0 and len(model["workers"]) >= 1


def test_metrics_and_overview_sum_every_shard(processes: Processes, redis_cluster: RedisClusterHarness, tmp_path: Path) -> None:
    env = cluster_env(redis_cluster, MODELS_FILE=two_models_file(tmp_path))
    _, url = processes.api(env)  # no worker: everything stays pending
    with httpx.Client(base_url=url, timeout=30) as http:
        normal = [i for _ in range(4) for i in one_per_shard(http)]
        high = one_per_shard(http, priority="high")
        solo = [http.post(f"/models/{SINGLE}/predict", json={"data": [ROW]}).json()["job_id"] for _ in range(2)]
        overview = {m["name"]: m for m in http.get("/admin/overview").json()["models"]}
        metrics = http.get("/metrics").text
    assert overview[SHARDED]["pending"] == {"high": len(high), "normal": len(normal), "low": 0}, overview
    assert overview[SINGLE]["pending"] == {"high": 0, "normal": len(solo), "low": 0}, overview
    assert overview[SHARDED]["stats"]["enqueued"] == len(normal) + len(high)
    assert f'asyncinfer_queue_pending_jobs{{model="{SHARDED}",priority="normal"}} {float(len(normal))}' in metrics
    assert f'asyncinfer_queue_pending_jobs{{model="{SHARDED}",priority="high"}} {float(len(high))}' in metrics
    assert f'asyncinfer_queue_pending_jobs{{model="{SINGLE}",priority="normal"}} {float(len(solo))}' in metrics
    assert f'asyncinfer_jobs_enqueued_total{{model="{SHARDED}"}} {float(len(normal) + len(high))}' in metrics
    # each shard's own list holds its share: the sums above are of the shards' lists
    with redis_cluster.cluster_client() as client:
        lengths = {tag: client.llen(f"asyncinfer:{{{tag}}}:{SHARDED}:pending:normal") for tag in {shard_tag(i) for i in normal}}
        assert all(client.exists(job_key(i)) for i in normal + high + solo)
    assert sorted(lengths.values()) == [len(normal) // SHARDS] * SHARDS, lengths


def test_a_standalone_redis_keeps_untagged_ids(
    processes: Processes, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    env = service_env(redis_server.url, MODEL_PATH=MODEL_PATH)  # no REDIS_CLUSTER
    _, url = processes.api(env)
    processes.worker(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        ids = [http.post("/predict", json={"data": [ROW]}).json()["job_id"] for _ in range(SHARDS)]
        for view in wait_all_done(http, ids):
            setosa_result(view)
    assert all(str(uuid.UUID(i)) == i for i in ids), ids  # a plain uuid4, no ".<tag>"
    assert all(redis_client.exists(f"asyncinfer:job:{i}") for i in ids)
    assert redis_client.exists("asyncinfer:iris:stats") and not redis_client.exists("asyncinfer:shards")

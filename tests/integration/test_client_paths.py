"""Getting results back, on real processes (redis-server, API, worker): Prefer wait, SSE with resume,
the WebSocket, bulk submit, lookup, and the fair share between priorities."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import redis
from stack import RedisServer

from jobqueue.protocol import WorkerQueue
from tests.conftest import service_env
from tests.support.samples import IRIS
from tests.support.waiting import wait_until

ROW = IRIS["setosa"]
SETOSA = {"prediction": 0, "class_name": "setosa"}
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "root": "root-token-0123456789a"}
KEEPALIVE_WAIT_S = 20  # the API sends one every 15 s


def tokens_env(tmp_path: Path, redis_url: str, **overrides: object) -> dict[str, str]:
    """Service environment with AUTH_TOKENS_FILE: clients alice and bob, admin root."""
    path = tmp_path / "tokens"
    path.write_text(f"alice client {TOKENS['alice']}\nbob client {TOKENS['bob']}\nroot admin {TOKENS['root']}\n")
    return service_env(redis_url, AUTH_TOKENS_FILE=path, **overrides)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def setosa_result(view: dict[str, Any]) -> None:
    """The exact end state of a setosa job."""
    assert view["status"] == "completed", view
    assert {k: view["result"][k] for k in SETOSA} == SETOSA
    assert abs(sum(view["result"]["probabilities"]) - 1) < 1e-4
    assert view["error"] is None and view["attempts"] == 1 and view["finished_at"] is not None


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Server-Sent Events as dicts (`id`, `event`, `data`, `retry`); a comment line as {"comment": text}."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line == "":
            if event:
                yield event
            event = {}
        else:
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value


def data_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Only the events that carry data, with `data` parsed."""
    for event in sse_events(response):
        if "data" in event:
            yield {**event, "data": orjson.loads(event["data"])}


def wait_all_done(http: httpx.Client, job_ids: list[str], timeout_s: float = 60, **headers: str) -> list[dict[str, Any]]:
    """Views of the jobs once none is pending or processing (looked up in chunks of 500)."""
    deadline = time.monotonic() + timeout_s
    while True:
        views = []
        for i in range(0, len(job_ids), 500):
            answer = http.post("/jobs/lookup", json={"ids": job_ids[i : i + 500]}, headers=headers)
            assert answer.status_code == 200, answer.text
            views += answer.json()["items"]
        if all(v.get("status") not in ("pending", "processing") for v in views):
            return views
        assert time.monotonic() < deadline, Counter(v.get("status") for v in views)
        time.sleep(0.2)


# -- Prefer: wait ---------------------------------------------------------------------------------


def test_prefer_wait_answers_200_with_the_finished_job(processes, redis_server, redis_client):
    env = service_env(redis_server.url)
    _, url = processes.api(env)
    processes.worker(env)
    with httpx.Client(base_url=url, timeout=40) as http:
        for path in ("/predict", "/models/iris/predict"):
            answer = http.post(path, json={"data": [ROW]}, headers={"Prefer": "wait=20"})
            assert answer.status_code == 200, answer.text
            assert answer.headers["preference-applied"] == "wait=20"
            assert "Prefer" in answer.headers["vary"]
            view = answer.json()
            assert answer.headers["location"] == f"/job/{view['job_id']}"
            setosa_result(view)
            assert view["model"] == "iris" and view["priority"] == "normal"
            assert http.get(f"/job/{view['job_id']}").json() == view  # the full view, same as GET /job


def test_prefer_wait_without_a_worker_answers_202_after_the_wait(processes, redis_server, redis_client):
    _, url = processes.api(service_env(redis_server.url))
    with httpx.Client(base_url=url, timeout=10) as http:
        started = time.monotonic()
        answer = http.post("/predict", json={"data": [ROW]}, headers={"Prefer": "respond-async, wait=1"})
        waited = time.monotonic() - started
        assert answer.status_code == 202 and 1.0 <= waited < 4, (answer.status_code, waited)
        body = answer.json()
        assert body == {"job_id": body["job_id"], "status": "pending", "model": "iris"}
        assert answer.headers["location"] == f"/job/{body['job_id']}"
        assert answer.headers["preference-applied"] == "wait=1" and "Prefer" in answer.headers["vary"]

        started = time.monotonic()
        plain = http.post("/predict", json={"data": [ROW]})
        assert plain.status_code == 202 and time.monotonic() - started < 0.9
        assert "preference-applied" not in plain.headers and "Prefer" in plain.headers["vary"]
        assert plain.json()["status"] == "pending" and plain.headers["location"] == f"/job/{plain.json()['job_id']}"
    assert redis_client.llen("asyncinfer:iris:pending:normal") == 2


# -- Server-Sent Events ---------------------------------------------------------------------------


def test_sse_resumes_with_last_event_id_and_ends_with_the_final_view(processes, redis_server, redis_client, tmp_path):
    env = tokens_env(tmp_path, redis_server.url)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=KEEPALIVE_WAIT_S)) as http:
        job_id = http.post("/predict", json={"data": [ROW]}, headers=bearer("alice")).json()["job_id"]
        assert http.get(f"/job/{job_id}/events").status_code == 401
        assert http.get(f"/job/{job_id}/events", headers=bearer("bob")).status_code == 404  # another principal's
        assert http.get("/job/no-such-job/events", headers=bearer("alice")).status_code == 404

        # No worker: the current state at once, then only keep-alive comments; the client drops.
        with http.stream("GET", f"/job/{job_id}/events", headers=bearer("alice")) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["cache-control"] == "no-cache" and stream.headers["x-accel-buffering"] == "no"
            events = sse_events(stream)
            assert next(events) == {"retry": "3000"}
            first = next(events)
            assert first["event"] == "status" and first["id"] == "pending-0-0"
            assert orjson.loads(first["data"]) == http.get(f"/job/{job_id}", headers=bearer("alice")).json()
            started = time.monotonic()
            assert next(events) == {"comment": "keep-alive"}
            assert 10 < time.monotonic() - started < KEEPALIVE_WAIT_S

        # Reconnect with Last-Event-ID while still pending, then a worker starts: no repeat of the
        # pending state, the transitions, and the end.
        with http.stream("GET", f"/job/{job_id}/events", headers={**bearer("alice"), "Last-Event-ID": first["id"]}) as stream:
            processes.worker(env)
            resumed = list(data_events(stream))  # the server ends the stream after `end`
        final = http.get(f"/job/{job_id}", headers=bearer("alice")).json()
        setosa_result(final)
        assert [e["event"] for e in resumed][-1] == "end"
        assert resumed[-1]["data"] == final
        started_ms = redis_client.hget(f"asyncinfer:job:{job_id}", "started_at")
        assert resumed[-1]["id"] == f"completed-1-{started_ms}"
        for event in resumed[:-1]:  # at most the processing state: the run may end before it is read
            assert event["event"] == "status" and event["data"]["status"] == "processing"
            assert event["id"] == f"processing-1-{started_ms}"

        # After the end: the end at once to a new client; 204 to one that has it already.
        with http.stream("GET", f"/job/{job_id}/events", headers=bearer("alice")) as stream:
            again = list(data_events(stream))
        assert [(e["event"], e["id"], e["data"]) for e in again] == [("end", resumed[-1]["id"], final)]
        with http.stream("GET", f"/job/{job_id}/events", headers={**bearer("alice"), "Last-Event-ID": "pending-0-0"}) as stream:
            assert [e["event"] for e in data_events(stream)] == ["end"]
        done = http.get(f"/job/{job_id}/events", headers={**bearer("alice"), "Last-Event-ID": resumed[-1]["id"]})
        assert done.status_code == 204 and done.content == b""
        admin = http.get(f"/job/{job_id}/events", headers=bearer("root"))  # an admin sees every job
        assert admin.status_code == 200 and f"id: {resumed[-1]['id']}" in admin.text


def test_sse_streams_every_transition_of_a_job(processes, redis_server, redis_client):
    """A stream opened before the worker sees pending, then (for a multi-row job that takes a moment
    or not) processing, then the end: ids strictly in the order of the job's states."""
    env = service_env(redis_server.url)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = http.post("/predict", json={"data": list(IRIS.values())}).json()["job_id"]
        with http.stream("GET", f"/job/{job_id}/events") as stream:
            events = data_events(stream)
            assert next(events)["id"] == "pending-0-0"
            processes.worker(env)
            rest = list(events)
        assert rest[-1]["event"] == "end"
        results = rest[-1]["data"]["result"]
        assert [r["class_name"] for r in results] == list(IRIS)
        assert [e["data"]["status"] for e in rest] in (["processing", "completed"], ["completed"])
        assert len({e["id"] for e in rest}) == len(rest)


def test_sse_reports_pending_again_after_recovery(processes, redis_server, redis_client, settings):
    """A worker dies holding the job: the stream shows processing, pending again (recovered, attempt
    kept), then the second run's end; every state with its own id."""
    env = service_env(redis_server.url)
    _, url = processes.api(env)
    doomed = WorkerQueue(redis_client, settings, "iris", "doomed-version")
    with httpx.Client(base_url=url, timeout=15) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        with http.stream("GET", f"/job/{job_id}/events") as stream:
            events = data_events(stream)
            seen = [next(events)]
            assert [job.job_id for job in doomed.claim("doomed-worker", 1).jobs] == [job_id]
            first_start = redis_client.hget(f"asyncinfer:job:{job_id}", "started_at")
            seen.append(next(events))
            # its heartbeat deadline passes while the rescuer keeps beating (a silence of every
            # worker would look like a Redis outage, and recovery would wait out a grace period)
            deadline = time.monotonic() + settings.worker_ttl_seconds + 0.3
            while time.monotonic() < deadline:
                doomed.heartbeat("rescuer")
                time.sleep(settings.heartbeat_interval_seconds / 2)
            assert doomed.recover("rescuer").requeued == 1
            seen.append(next(events))
            processes.worker(env)
            seen += list(events)
    second_start = redis_client.hget(f"asyncinfer:job:{job_id}", "started_at")
    states = [(e["event"], e["id"], e["data"]["status"], e["data"]["attempts"]) for e in seen]
    assert states[:3] == [
        ("status", "pending-0-0", "pending", 0),
        ("status", f"processing-1-{first_start}", "processing", 1),
        ("status", f"pending-1-{first_start}", "pending", 1),  # recovered: the attempt is kept
    ]
    end = ("end", f"completed-2-{second_start}", "completed", 2)
    assert states[3:] in ([("status", f"processing-2-{second_start}", "processing", 2), end], [end])
    assert seen[-1]["data"]["result"]["class_name"] == "setosa" and seen[-1]["data"]["model_version"] != "doomed-version"


# -- WebSocket ------------------------------------------------------------------------------------


async def ws_messages(ws: aiohttp.ClientWebSocketResponse, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The next `count` JSON messages."""
    messages = []
    async with asyncio.timeout(timeout_s):
        while len(messages) < count:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            messages.append(orjson.loads(message.data))
    return messages


async def ws_nothing_more(ws: aiohttp.ClientWebSocketResponse, quiet_s: float = 1.5) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(quiet_s):
            message = await ws.receive()
            raise AssertionError(f"unexpected message {message}")


def test_websocket_delivers_each_of_100_jobs_once(processes, redis_server, redis_client, tmp_path):
    env = tokens_env(tmp_path, redis_server.url)
    _, url = processes.api(env)
    ws_url = url.replace("http://", "ws://") + "/ws"
    with httpx.Client(base_url=url, timeout=30) as http:
        items = [{"data": [IRIS[name]]} for name in list(IRIS) * 34][:100]
        answer = http.post("/predict/batch", json={"items": items}, headers=bearer("alice"))
        job_ids = [item["job_id"] for item in answer.json()["items"]]
        bobs = http.post("/predict", json={"data": [ROW]}, headers=bearer("bob")).json()["job_id"]
    assert len(set(job_ids)) == 100

    async def scenario() -> dict[str, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            # a bad or missing token: the socket is closed with 4401 before any message is read
            for query in ("", f"?token={TOKENS['alice']}x"):
                async with session.ws_connect(ws_url + query) as ws:
                    closing = await ws.receive()
                    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401, closing
            async with session.ws_connect(f"{ws_url}?token={TOKENS['alice']}") as ws:
                # malformed messages are answered, the connection stays
                await ws.send_str("not json")
                await ws.send_json({"subscribe": "not-a-list"})
                await ws.send_json({"subscribe": [""], "extra": 1})
                errors = await ws_messages(ws, 3)
                assert [e["type"] for e in errors] == ["error"] * 3 and "malformed JSON" in errors[0]["detail"]
                # the first 60 (one twice) with a bogus id and bob's job, while nothing runs
                await ws.send_json({"subscribe": [*job_ids[:60], job_ids[0], "bogus-id", bobs]})
                not_found = await ws_messages(ws, 2)
                assert sorted(m["job_id"] for m in not_found) == sorted(["bogus-id", bobs])
                assert {m["type"] for m in not_found} == {"not_found"}
                await ws_nothing_more(ws, 0.5)
                processes.worker(env)
                first = await ws_messages(ws, 60)
                await ws.send_json({"subscribe": job_ids[60:]})  # ended by now or soon: each arrives once
                rest = await ws_messages(ws, 40)
                await ws_nothing_more(ws)
            got = [m["job"] for m in first + rest if m["type"] == "job"]
            assert len(got) == 100 and {v["job_id"] for v in got} == set(job_ids)
            assert {m["job"]["job_id"] for m in first} == set(job_ids[:60])

            # a new connection (Authorization header) gets every finished job at once
            async with session.ws_connect(ws_url, headers=bearer("alice")) as ws:
                await ws.send_json({"subscribe": job_ids})
                again = await ws_messages(ws, 100, timeout_s=5)
                await ws_nothing_more(ws, 0.5)
            assert {m["job"]["job_id"] for m in again} == set(job_ids)
            return {v["job_id"]: v for v in got}

    views = asyncio.run(scenario())
    logs = "".join(path.read_text() for path in tmp_path.glob("*.log"))
    assert "WebSocket /ws?token=REDACTED" in logs
    assert not any(token in logs for token in TOKENS.values())  # ?token= never reaches a log
    with httpx.Client(base_url=url, timeout=30) as http:
        stored = http.post("/jobs/lookup", json={"ids": job_ids}, headers=bearer("alice")).json()["items"]
    for job_id, expected in zip(job_ids, items, strict=True):
        assert views[job_id] == stored[job_ids.index(job_id)]  # the view as GET would give it
        assert views[job_id]["status"] == "completed"
        assert views[job_id]["result"]["class_name"] == next(n for n, r in IRIS.items() if [r] == expected["data"])


def test_streams_end_when_the_api_drains(processes, redis_server, redis_client):
    """On SIGTERM the API ends its streams (SSE closes, the WebSocket closes with 1012) within a tick,
    so clients reconnect to a replica that stays instead of holding this one for the whole drain."""
    env = service_env(redis_server.url, SHUTDOWN_DELAY_SECONDS=10)
    api, url = processes.api(env)
    job_id = httpx.post(f"{url}/predict", json={"data": [ROW]}).json()["job_id"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, httpx.AsyncClient(base_url=url, timeout=20) as http:
            async with session.ws_connect(url.replace("http://", "ws://") + "/ws") as ws:
                await ws.send_json({"subscribe": [job_id, "bogus-id"]})
                assert await ws_messages(ws, 1) == [{"type": "not_found", "job_id": "bogus-id"}]  # subscribed
                async with http.stream("GET", f"/job/{job_id}/events") as stream:
                    lines = stream.aiter_lines()
                    while await anext(lines) != "event: status":
                        pass
                    api.send_signal(signal.SIGTERM)
                    started = time.monotonic()
                    rest = [line async for line in lines]
                    assert time.monotonic() - started < 5
                assert not any(line.startswith("event: end") for line in rest)
                closing = await asyncio.wait_for(ws.receive(), 5)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1012, closing
            assert (await http.get("/readyz")).status_code == 503  # still serving, unready, until the delay ends

    asyncio.run(scenario())
    assert httpx.get(f"{url}/job/{job_id}").json()["status"] == "pending"


def test_waits_answer_at_once_while_the_api_drains(processes, redis_server, redis_client):
    """A draining API holds no one: `Prefer: wait` and a long poll answer with the job as it is now
    (no worker runs, so it stays pending), not after a wait or a recheck."""
    api, url = processes.api(service_env(redis_server.url, SHUTDOWN_DELAY_SECONDS=10))
    with httpx.Client(base_url=url, timeout=20) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        api.send_signal(signal.SIGTERM)
        wait_until(lambda: http.get("/readyz").status_code == 503, 5, "the drain to start")
        started = time.monotonic()
        waited = http.post("/predict", json={"data": [ROW]}, headers={"Prefer": "wait=10"})
        polled = http.get(f"/job/{job_id}", params={"wait": 10})
        elapsed = time.monotonic() - started
    assert (waited.status_code, waited.json()["status"]) == (202, "pending")
    assert (polled.status_code, polled.json()["status"]) == (200, "pending")
    assert elapsed < 1.0, elapsed  # the recheck interval is 2 s: neither waited for it


def test_streams_have_their_own_cap_and_do_not_lock_requests_out(processes, redis_server, redis_client):
    """Open streams are not requests in flight: with MAX_CONCURRENT_REQUESTS=1 eight streams stay
    open (8 per request slot) while submits still pass; the ninth is refused until one closes."""
    env = service_env(redis_server.url, MAX_CONCURRENT_REQUESTS=1)
    _, url = processes.api(env)
    with httpx.Client(base_url=url, timeout=10) as http, contextlib.ExitStack() as open_streams:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]
        streams, readers = [], []  # a reader dropped by the garbage collector would close its stream
        for _ in range(8):
            stream = open_streams.enter_context(http.stream("GET", f"/job/{job_id}/events"))
            readers.append(data_events(stream))
            assert next(readers[-1])["id"] == "pending-0-0"  # started, so counted
            streams.append(stream)
        assert http.post("/predict", json={"data": [ROW]}).status_code == 202
        refused = http.get(f"/job/{job_id}/events")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"

        async def ws_refused() -> None:
            async with aiohttp.ClientSession() as session, session.ws_connect(url.replace("http://", "ws://") + "/ws") as ws:
                closing = await ws.receive()
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1013, closing

        asyncio.run(ws_refused())
        streams[0].close()  # the server notices the disconnect and frees the slot
        deadline = time.monotonic() + 5
        while True:
            with http.stream("GET", f"/job/{job_id}/events") as stream:
                if stream.status_code == 200:
                    break
            assert stream.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.1)


def complete_silently(client: redis.Redis, job_id: str) -> None:
    """End a job in its record without a Pub/Sub message: what a subscriber that was away misses."""
    client.hset(f"asyncinfer:job:{job_id}", mapping={"status": "completed", "result": '{"prediction": 0}', "finished_at": 1})


def test_streams_recheck_after_the_event_subscription_comes_back(processes, tmp_path):
    """Messages published while the API's Pub/Sub connection is away are lost; once it is back every
    stream re-reads its jobs at once (not at the next keep-alive, 15 s, or WebSocket re-check, 30 s):
    after redis-py's own quick reconnect (the connection killed) and after an outage (Redis restarted)."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        _, url = processes.api(service_env(server.url))
        job_ids = [httpx.post(f"{url}/predict", json={"data": [ROW]}).json()["job_id"] for _ in range(2)]

        async def next_event(lines: AsyncIterator[str], kind: str) -> None:
            while await anext(lines) != f"event: {kind}":
                pass

        async def scenario() -> None:
            async with (
                aiohttp.ClientSession() as session,
                httpx.AsyncClient(base_url=url, timeout=30) as http,
                session.ws_connect(url.replace("http://", "ws://") + "/ws") as ws,
            ):
                await ws.send_json({"subscribe": [job_ids[0], "bogus-id"]})
                assert (await ws_messages(ws, 1))[0]["type"] == "not_found"  # subscribed
                async with (
                    http.stream("GET", f"/job/{job_ids[0]}/events") as first,
                    http.stream("GET", f"/job/{job_ids[1]}/events") as second,
                ):
                    lines = [first.aiter_lines(), second.aiter_lines()]
                    for reader in lines:
                        await next_event(reader, "status")
                    await asyncio.sleep(0.5)  # the SSE generators are waiting

                    complete_silently(client, job_ids[0])
                    started = time.monotonic()
                    assert client.client_kill_filter(_type="pubsub") == 1  # the API's event listener
                    await asyncio.wait_for(next_event(lines[0], "end"), 5)
                    job = await ws_messages(ws, 1, timeout_s=5)
                    assert job[0]["job"]["job_id"] == job_ids[0] and job[0]["job"]["status"] == "completed"
                    assert time.monotonic() - started < 5

                    complete_silently(client, job_ids[1])  # while the listener still hears, unannounced
                    await asyncio.sleep(0.2)
                    await asyncio.to_thread(server.stop)
                    await asyncio.sleep(2)
                    await asyncio.to_thread(server.start)
                    started = time.monotonic()
                    await asyncio.wait_for(next_event(lines[1], "end"), 8)
                    assert time.monotonic() - started < 8  # the next keep-alive is ~13 s away

        asyncio.run(scenario())
    finally:
        client.close()
        server.stop()


# -- bulk submit and lookup -----------------------------------------------------------------------


def test_bulk_submit_mixes_accepted_and_refused_items_in_order(processes, redis_server, redis_client):
    env = service_env(redis_server.url, MAX_BULK_ITEMS=6)
    _, url = processes.api(env)
    items = [
        {"data": [IRIS["setosa"]]},
        {"data": [[1.0, 2.0]]},  # wrong feature count
        {"data": [IRIS["virginica"]], "priority": "high"},
        {"priority": "low"},  # no data
        {"data": "not rows"},
        {"data": [IRIS["versicolor"]], "priority": "low"},
    ]
    with httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/predict/batch", json={"items": items}, headers={"Idempotency-Key": "batch-1"})
        assert answer.status_code == 200, answer.text
        out = answer.json()["items"]
        assert len(out) == 6
        for i in (1, 3, 4):
            assert out[i]["error"]["status"] == 422
            assert out[i]["error"]["detail"][0]["loc"][:4] == ["body", "items", i, "data"], out[i]
        assert out[3]["error"]["detail"][0]["type"] == "missing"
        accepted = {i: out[i]["job_id"] for i in (0, 2, 5)}
        assert all(out[i]["status"] == "pending" for i in accepted)
        assert redis_client.lrange("asyncinfer:iris:pending:normal", 0, -1) == [accepted[0]]
        assert redis_client.lrange("asyncinfer:iris:pending:high", 0, -1) == [accepted[2]]
        assert redis_client.lrange("asyncinfer:iris:pending:low", 0, -1) == [accepted[5]]

        replay = http.post("/predict/batch", json={"items": items}, headers={"Idempotency-Key": "batch-1"}).json()["items"]
        assert [r.get("job_id") for r in replay] == [o.get("job_id") for o in out]  # item i used key batch-1:i

        too_many = http.post("/predict/batch", json={"items": items + [items[0]]})
        assert too_many.status_code == 422
        assert (
            too_many.json()["detail"][0]["loc"] == ["body", "items"] and "MAX_BULK_ITEMS" in too_many.json()["detail"][0]["msg"]
        )
        assert redis_client.hget("asyncinfer:iris:stats", "enqueued") == "3"  # the refusal enqueued nothing

        processes.worker(env)
        views = wait_all_done(http, list(accepted.values()))
        assert [v["result"]["class_name"] for v in views] == ["setosa", "virginica", "versicolor"]
        assert [v["priority"] for v in views] == ["normal", "high", "low"]
        assert all(v["status"] == "completed" and v["attempts"] == 1 for v in views)


def test_bulk_items_with_their_own_keys_replay_in_any_chunk(processes, redis_server, redis_client):
    # what `asyncinfer run` resumes by: an item's key does not depend on the request it travels in
    _, url = processes.api(service_env(redis_server.url))
    items = [{"data": [IRIS[name]], "idempotency_key": f"run-x-{name}"} for name in ("setosa", "virginica")]
    with httpx.Client(base_url=url, timeout=30) as http:
        first = http.post("/predict/batch", json={"items": items}).json()["items"]
        assert all("job_id" in item and "replayed" not in item for item in first), first
        again = http.post("/predict/batch", json={"items": [{"data": [IRIS["versicolor"]]}, items[1]]}).json()["items"]
        assert "replayed" not in again[0] and again[1] == {**first[1], "replayed": True}
        bad = http.post("/predict/batch", json={"items": [{"data": [ROW], "idempotency_key": 7}]}).json()["items"]
        assert bad[0]["error"]["detail"][0]["loc"] == ["body", "items", 0, "idempotency_key"], bad
    assert redis_client.hget("asyncinfer:iris:stats", "enqueued") == "3"


def test_lookup_keeps_order_and_hides_other_principals_jobs(processes, redis_server, redis_client, tmp_path):
    env = tokens_env(tmp_path, redis_server.url)
    _, url = processes.api(env)
    processes.worker(env)
    with httpx.Client(base_url=url, timeout=30) as http:
        alice = [http.post("/predict", json={"data": [IRIS[n]]}, headers={**bearer("alice"), "Prefer": "wait=20"}).json()
                 for n in ("virginica", "setosa")]  # fmt: skip
        bob = http.post("/predict", json={"data": [ROW]}, headers={**bearer("bob"), "Prefer": "wait=20"}).json()
        ids = [alice[0]["job_id"], "no-such-job", bob["job_id"], alice[1]["job_id"]]
        assert http.post("/jobs/lookup", json={"ids": ids}).status_code == 401

        seen_by_alice = http.post("/jobs/lookup", json={"ids": ids}, headers=bearer("alice")).json()["items"]
        assert seen_by_alice == [
            alice[0],
            {"job_id": "no-such-job", "found": False},
            {"job_id": bob["job_id"], "found": False},  # exists, but is not alice's
            alice[1],
        ]
        assert seen_by_alice[0]["result"]["class_name"] == "virginica" and seen_by_alice[3]["result"]["class_name"] == "setosa"
        seen_by_root = http.post("/jobs/lookup", json={"ids": ids}, headers=bearer("root")).json()["items"]
        assert seen_by_root == [alice[0], {"job_id": "no-such-job", "found": False}, bob, alice[1]]
        bad = http.post("/jobs/lookup", json={"ids": ["x" * 65]}, headers=bearer("alice"))
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "ids"]


# -- priorities -----------------------------------------------------------------------------------


def expected_running_totals(pending: dict[str, int], claim: int = 12) -> dict[int, Counter[str]]:
    """Jobs started per priority after each full claim of `claim` (a multiple of 12), as claim.lua
    deals them: per 12 slots 8 high, 3 normal, 1 low; an empty list's slots go to the highest
    non-empty list. Keyed by the number of jobs started so far."""
    share = {"high": 8, "normal": 3, "low": 1}
    left, totals, out = dict(pending), Counter(), {}
    while sum(left.values()) >= claim:
        taken = {p: min(share[p] * claim // 12, left[p]) for p in share}
        spare = claim - sum(taken.values())
        for p in share:  # highest first
            extra = min(spare, left[p] - taken[p])
            taken[p] += extra
            spare -= extra
        for p in share:
            left[p] -= taken[p]
        totals += Counter({p: n for p, n in taken.items() if n})
        out[sum(totals.values())] = Counter(totals)
    return out


@pytest.mark.timeout(300)
def test_priorities_fair_share_8_3_1_under_load(processes, redis_server, redis_client):
    per_priority = 600
    env = service_env(redis_server.url, MAX_BATCH_SIZE=12)
    _, url = processes.api(env)
    ids: dict[str, list[str]] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for priority in ("low", "normal", "high"):  # lowest first: FIFO alone would run low first
            answer = http.post("/predict/batch", json={"items": [{"data": [ROW], "priority": priority}] * per_priority})
            ids[priority] = [item["job_id"] for item in answer.json()["items"]]
            assert len(ids[priority]) == per_priority
        assert [redis_client.llen(f"asyncinfer:iris:pending:{p}") for p in ("high", "normal", "low")] == [per_priority] * 3
        processes.worker(env)
        all_ids = [job_id for group in ids.values() for job_id in group]
        views = wait_all_done(http, all_ids, timeout_s=240)
    assert all(v["status"] == "completed" and v["attempts"] == 1 for v in views)

    pipe = redis_client.pipeline(transaction=False)
    for job_id in all_ids:
        pipe.hmget(f"asyncinfer:job:{job_id}", "priority", "started_at", "finished_at")
    rows = [(p, int(s), int(f)) for p, s, f in pipe.execute()]

    # The exact fair share: a claim of 12 starts 8 high, 3 normal, 1 low while all lists hold jobs;
    # slots of an empty list go to the highest non-empty one. Jobs of one claim share a start time
    # (Redis TIME in the script); two quick claims may share a millisecond too, so running totals are
    # compared at each boundary between start times with those of the claims the script defines.
    expected = expected_running_totals({p: per_priority for p in ("high", "normal", "low")})
    by_start: dict[int, Counter[str]] = {}
    for priority, started, _ in rows:
        by_start.setdefault(started, Counter())[priority] += 1
    totals: Counter[str] = Counter()
    compared = 0
    for started in sorted(by_start):
        totals += by_start[started]
        n = sum(totals.values())
        if n in expected:
            assert totals == expected[n], (n, totals, expected[n])
            compared += 1
    # Claims sharing a millisecond merge into one boundary (a fast worker makes two a millisecond),
    # so not every claim is a boundary; a good share of them must still have been checked.
    assert compared >= len(expected) // 4, compared
    assert expected[900] == Counter(high=600, normal=225, low=75)  # the 75 claims that empty the high list

    finished = {p: [f for q, _, f in rows if q == p] for p in ("high", "normal", "low")}
    median = {p: statistics.median(times) for p, times in finished.items()}
    assert median["high"] < median["normal"] < median["low"], median
    last_high = max(finished["high"])
    low_before = sum(1 for f in finished["low"] if f <= last_high)
    assert low_before >= per_priority // 8 - 1, low_before  # low kept moving while high had jobs

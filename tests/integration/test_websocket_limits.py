"""WebSocket bounds on a real API process with a real client: a message over WS_MAX_MESSAGE_BYTES
closes its socket with 1009 before it is parsed; one principal's sockets and the ids it watches across
all of them are budgeted (1008 past either), and no other socket or principal is affected."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

from tests.integration.test_client_paths import ROW, bearer, tokens_env, ws_messages

WS_POLICY_VIOLATION, WS_MESSAGE_TOO_BIG = 1008, 1009


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    """The close code and reason the server sends next (any other message fails the test)."""
    message = await asyncio.wait_for(ws.receive(), 10)
    assert message.type == aiohttp.WSMsgType.CLOSE, message
    return message.data, message.extra


def test_a_message_over_the_size_limit_closes_only_its_socket_with_1009(processes, redis_server, redis_client, tmp_path):
    _, url = processes.api(tokens_env(tmp_path, redis_server.url, WS_MAX_MESSAGE_BYTES=4096))
    ws_url = url.replace("http://", "ws://") + "/ws"
    too_big = {"subscribe": [f"job-{i:05d}" for i in range(500)]}  # ~6 KB: well formed, only too large

    async def scenario() -> None:
        async with aiohttp.ClientSession(headers=bearer("alice")) as session:
            other, ws = await session.ws_connect(ws_url), await session.ws_connect(ws_url)
            await ws.send_json(too_big)
            code, _ = await closed_with(ws)
            assert code == WS_MESSAGE_TOO_BIG
            await other.send_json({"subscribe": ["nope"]})  # the same principal's other socket
            assert await ws_messages(other, 1) == [{"type": "not_found", "job_id": "nope"}]
            await other.close()

    asyncio.run(scenario())


def test_a_principals_budget_spans_its_sockets_and_spares_everyone_else(processes, redis_server, redis_client, tmp_path):
    env = tokens_env(tmp_path, redis_server.url, WS_MAX_WATCHED_PER_PRINCIPAL=5, WS_MAX_SOCKETS_PER_PRINCIPAL=2)
    _, url = processes.api(env)
    ws_url = url.replace("http://", "ws://") + "/ws"
    with httpx.Client(base_url=url, timeout=30) as http:  # no worker: the jobs stay pending, so stay watched
        answer = http.post("/predict/batch", json={"items": [{"data": [ROW]}] * 6}, headers=bearer("alice"))
        alices = [item["job_id"] for item in answer.json()["items"]]
        bobs = [http.post("/predict", json={"data": [ROW]}, headers=bearer("bob")).json()["job_id"] for _ in range(6)]

    async def canceled(session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, job_id: str, who: str) -> None:
        """Cancel a watched job: the socket still watching it gets its end."""
        async with session.delete(f"{url}/job/{job_id}", headers=bearer(who)) as response:
            assert response.status == 200
        (message,) = await ws_messages(ws, 1)
        assert (message["type"], message["job"]["job_id"], message["job"]["status"]) == ("job", job_id, "canceled")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            first = await session.ws_connect(ws_url, headers=bearer("alice"))
            await first.send_json({"subscribe": [*alices[:3], "nope"]})  # an unknown id is read and let go at once
            assert await ws_messages(first, 1) == [{"type": "not_found", "job_id": "nope"}]

            second = await session.ws_connect(ws_url, headers=bearer("alice"))
            await second.send_json({"subscribe": alices[3:]})  # 3 + 3 ids > 5 across alice's sockets
            code, reason = await closed_with(second)
            assert code == WS_POLICY_VIOLATION and "WS_MAX_WATCHED_PER_PRINCIPAL" in reason, reason

            # bob's budget is his own: all six of his jobs, on two sockets, while alice is at her limits
            bob_sockets = [await session.ws_connect(ws_url, headers=bearer("bob")) for _ in range(2)]
            await bob_sockets[0].send_json({"subscribe": bobs[:3]})
            await bob_sockets[1].send_json({"subscribe": bobs[3:5]})

            third = await session.ws_connect(ws_url, headers=bearer("alice"))  # alice's second open socket
            fourth = await session.ws_connect(ws_url, headers=bearer("alice"))
            code, reason = await closed_with(fourth)
            assert code == WS_POLICY_VIOLATION and "WS_MAX_SOCKETS_PER_PRINCIPAL" in reason, reason

            # nothing else was affected: every socket still watching gets its jobs' ends
            await canceled(session, first, alices[0], "alice")
            await canceled(session, bob_sockets[1], bobs[4], "bob")
            # and alice's budget came back (the closed socket's ids and the ended job): 2 + 3 watched
            await third.send_json({"subscribe": alices[3:]})
            await canceled(session, third, alices[5], "alice")
            for ws in (first, third, *bob_sockets):
                await ws.close()

    asyncio.run(scenario())

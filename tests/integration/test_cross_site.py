"""What a foreign web page can make a browser send, on a real API process with authentication off (the
local default): state changes from another Origin are refused (403), bodies that are not JSON too (415),
and nothing is stored; curl-like callers (no Origin) and same-origin pages keep working."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import orjson
import pytest
import redis

from tests.conftest import service_env
from tests.integration.test_client_paths import ws_messages
from tests.support.samples import ROW

FOREIGN = {"Origin": "https://evil.example"}
SUBMIT = orjson.dumps({"data": [ROW]})
OIP_INFER = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})


@pytest.fixture
def open_api(processes, redis_server, redis_client):
    """An API without authentication (anyone who reaches it is admin) and a clean database."""
    env = service_env(redis_server.url)
    _, url = processes.api(env)
    return url


def stored_jobs(redis_client: redis.Redis) -> list[str]:
    return redis_client.keys("asyncinfer:job:*")


def test_state_changes_from_a_foreign_origin_are_refused_and_store_nothing(open_api, redis_client):
    cross_site = {"Sec-Fetch-Site": "cross-site"}
    json_body = {"Content-Type": "application/json"}
    requests = [
        ("POST", "/predict", SUBMIT),  # the hot path
        ("POST", "/models/iris/predict", SUBMIT),  # a FastAPI route
        ("POST", "/predict/batch", orjson.dumps({"items": [{"data": [ROW]}]})),
        ("POST", "/v2/models/iris/infer", OIP_INFER),
        ("POST", "/admin/models/iris/pause", b""),
        ("POST", "/admin/dead-letters/retry", b""),
        ("DELETE", f"/job/{'0' * 36}", b""),
    ]
    with httpx.Client(base_url=open_api, timeout=30) as http:
        for method, path, body in requests:
            for headers in (FOREIGN, cross_site, {"Origin": "null"}):
                # text/plain: what a form or a no-preflight fetch sends; JSON: the type must not matter
                for content_type in ({"Content-Type": "text/plain"}, json_body):
                    response = http.request(method, path, content=body, headers={**headers, **content_type})
                    assert response.status_code == 403, (method, path, headers, response.text)
                    text = response.text
                    assert "Origin" in text or "Sec-Fetch-Site" in text, text
        assert stored_jobs(redis_client) == []
        assert not redis_client.exists("asyncinfer:iris:paused")
        # reads are not state changes: a foreign page still cannot read the answer (no CORS headers)
        assert http.get("/models", headers=FOREIGN).status_code == 200


def test_same_origin_pages_and_callers_without_origin_still_submit(open_api, redis_client):
    host = open_api.removeprefix("http://")
    with httpx.Client(base_url=open_api, timeout=30) as http:
        for headers in (
            {},  # curl, the SDK, another server
            {"Origin": open_api, "Sec-Fetch-Site": "same-origin"},  # the console, served by the API itself
            {"Origin": f"https://{host}", "Host": host},  # behind a TLS-terminating proxy: the scheme differs
        ):
            for path in ("/predict", "/models/iris/predict"):
                response = http.post(path, content=SUBMIT, headers={"Content-Type": "application/json", **headers})
                assert response.status_code == 202, (path, headers, response.text)
        assert http.post("/admin/models/iris/pause", headers={"Origin": open_api}).status_code == 200
        assert http.post("/admin/models/iris/resume").status_code == 200
    assert len(stored_jobs(redis_client)) == 6


def test_bodies_that_are_not_json_answer_415_naming_the_header(open_api, redis_client):
    lookup = orjson.dumps({"ids": ["x"]})
    with httpx.Client(base_url=open_api, timeout=30) as http:
        for path, body in (("/predict", SUBMIT), ("/models/iris/predict", SUBMIT), ("/jobs/lookup", lookup)):
            for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                response = http.post(path, content=body, headers={"Content-Type": content_type})
                assert response.status_code == 415, (path, content_type, response.text)
                assert "Content-Type" in response.json()["detail"] and "application/json" in response.json()["detail"]
        oip = http.post("/v2/models/iris/infer", content=OIP_INFER, headers={"Content-Type": "text/plain"})
        assert oip.status_code == 415 and "Content-Type" in oip.json()["error"], oip.text
        assert stored_jobs(redis_client) == []

        # what stays accepted: JSON with parameters, no Content-Type at all (parsed as JSON, as before),
        # and the OIP binary type
        accepted = [
            http.post("/predict", content=SUBMIT, headers={"Content-Type": "Application/JSON; charset=utf-8"}),
            http.post("/models/iris/predict", content=SUBMIT),
            http.post(
                "/v2/models/iris/infer",
                content=OIP_INFER,
                headers={"Content-Type": "application/octet-stream", "Prefer": "respond-async"},
            ),
        ]
        assert [r.status_code for r in accepted] == [202, 202, 202], [r.text for r in accepted]
    assert len(stored_jobs(redis_client)) == 3


def test_a_websocket_from_a_foreign_origin_is_refused(open_api):
    ws_url = open_api.replace("http://", "ws://") + "/ws"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with session.ws_connect(ws_url, origin="https://evil.example"):
                    pass
            assert refused.value.status == 403
            async with session.ws_connect(ws_url, origin=open_api) as same_origin:
                await same_origin.send_json({"subscribe": ["nope"]})
                assert await ws_messages(same_origin, 1) == [{"type": "not_found", "job_id": "nope"}]

    asyncio.run(scenario())

"""Admin routes for notifications (api/routes/notifications.py) against a real redis-server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis
import uvicorn
from stack import free_port

from api.app import create_app
from api.routes import notifications
from jobqueue.settings import Settings
from tests.conftest import MODEL_PATH
from tests.notifier.helpers import KEYS, seed_finished_job

ADMIN_TOKEN, CLIENT_TOKEN = "admin-secret-token", "client-secret-token"


@contextmanager
def admin_client(redis_client: redis.Redis, tokens_file: Path | None = None) -> Iterator[httpx.Client]:
    """The real API app (api.app.create_app) with the notifications router included as the lead's hook
    line does, served by uvicorn on a free loopback port for the duration of the block."""
    url = "redis://{host}:{port}/{db}".format(**redis_client.connection_pool.connection_kwargs)
    settings = Settings(redis_url=url, model_path=MODEL_PATH, auth_tokens_file=str(tokens_file or ""))
    app = create_app(settings)
    if not any(getattr(route, "path", "") == "/admin/notifications/failed" for route in app.routes):
        app.include_router(notifications.router)  # until the lead's create_app includes it
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="admin-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test API did not start"
        time.sleep(0.02)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if tokens_file else {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(10)


def given_up(redis_client: redis.Redis, job_id: str, error: str = "HTTP 500") -> None:
    """A job whose delivery was given up, as notify_failed_attempt leaves it."""
    seed_finished_job(redis_client, job_id, "https://hooks.example.com/x")
    redis_client.zrem(KEYS.notify, job_id)
    redis_client.hset(
        KEYS.job(job_id),
        mapping={"notify_state": "failed", "notify_attempts": 8, "notify_last_status": 500, "notify_last_error": error},
    )
    redis_client.lpush(KEYS.notify_failed, job_id)


def test_failed_lists_views_newest_first_and_skips_expired_or_resent(redis_client):
    older, newer, expired = (str(uuid.uuid4()) for _ in range(3))
    given_up(redis_client, older)
    given_up(redis_client, expired)
    given_up(redis_client, newer, "HTTP 500: down")
    redis_client.delete(KEYS.job(expired))
    with admin_client(redis_client) as http:
        items = http.get("/admin/notifications/failed").json()["items"]
        assert [i["job_id"] for i in items] == [newer, older]
        assert items[0]["notification"] == {"state": "failed", "attempts": 8, "last_status": 500, "last_error": "HTTP 500: down"}
        assert items[0]["status"] == "completed" and items[0]["result"][0]["label"] == "setosa"
        assert [i["job_id"] for i in http.get("/admin/notifications/failed?limit=1").json()["items"]] == [newer]
        assert http.get("/admin/notifications/failed?limit=0").status_code == 422

        assert http.post(f"/admin/notifications/{older}/resend").status_code == 202
        assert [i["job_id"] for i in http.get("/admin/notifications/failed").json()["items"]] == [newer]


def test_resend_resets_and_requeues_delivered_or_failed(redis_client):
    failed_id, delivered_id = str(uuid.uuid4()), str(uuid.uuid4())
    given_up(redis_client, failed_id)
    seed_finished_job(redis_client, delivered_id, "https://hooks.example.com/x")
    redis_client.zrem(KEYS.notify, delivered_id)
    redis_client.hset(
        KEYS.job(delivered_id), mapping={"notify_state": "delivered", "notify_attempts": 2, "notify_last_status": 200}
    )
    with admin_client(redis_client) as http:
        for job_id in (failed_id, delivered_id):
            response = http.post(f"/admin/notifications/{job_id}/resend")
            assert response.status_code == 202
            assert response.json() == {"job_id": job_id, "notification": {"state": "pending", "attempts": 0}}
            fields = redis_client.hgetall(KEYS.job(job_id))
            assert fields["notify_state"] == "pending" and fields["notify_attempts"] == "0"
            assert "notify_last_status" not in fields and "notify_last_error" not in fields
            assert redis_client.zscore(KEYS.notify, job_id) is not None
        assert redis_client.lrange(KEYS.notify_failed, 0, -1) == []
        # twice is harmless: still one outbox entry, still pending
        assert http.post(f"/admin/notifications/{failed_id}/resend").status_code == 202
        assert redis_client.zcard(KEYS.notify) == 2


def test_resend_refusals(redis_client):
    unfinished, no_callback = str(uuid.uuid4()), str(uuid.uuid4())
    seed_finished_job(redis_client, unfinished, "https://hooks.example.com/x")
    redis_client.hset(KEYS.job(unfinished), "status", "processing")
    redis_client.hset(KEYS.job(no_callback), mapping={"status": "completed"})
    with admin_client(redis_client) as http:
        missing = http.post(f"/admin/notifications/{uuid.uuid4()}/resend")
        assert missing.status_code == 404
        conflict = http.post(f"/admin/notifications/{unfinished}/resend")
        assert conflict.status_code == 409 and conflict.json()["status"] == "processing"
        without = http.post(f"/admin/notifications/{no_callback}/resend")
        assert without.status_code == 409 and "no callback_url" in without.json()["detail"]
        assert http.post(f"/admin/notifications/{'x' * 65}/resend").status_code == 422


def test_admin_routes_need_an_admin_token(redis_client, tmp_path: Path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops admin {ADMIN_TOKEN}\nalice client {CLIENT_TOKEN}\n")
    job_id = str(uuid.uuid4())
    given_up(redis_client, job_id)
    with admin_client(redis_client, tokens) as http:
        as_client = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        assert http.get("/admin/notifications/failed", headers=as_client).status_code == 403
        assert http.post(f"/admin/notifications/{job_id}/resend", headers=as_client).status_code == 403
        assert http.get("/admin/notifications/failed", headers={"Authorization": ""}).status_code == 401
        assert redis_client.hget(KEYS.job(job_id), "notify_state") == "failed", "refused callers changed nothing"
        assert [i["job_id"] for i in http.get("/admin/notifications/failed").json()["items"]] == [job_id]

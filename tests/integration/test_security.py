"""Authentication, isolation and limits on a real API process against a real redis-server."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import service_env
from tests.support.samples import ROW
from tests.support.waiting import wait_until

ALICE, BOB, ROOT = "alice-token-0123456789", "bob-token-0123456789ab", "root-token-0123456789ab"


def tokens_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "tokens"
    path.write_text("\n".join(["# name role token", "", *lines]) + "\n")
    return path


def principals(tmp_path: Path) -> Path:
    root_hash = hashlib.sha256(ROOT.encode()).hexdigest()
    return tokens_file(tmp_path, [f"alice client {ALICE}", f"bob client {BOB}", f"root admin sha256:{root_hash}"])


def client(url: str, token: str | None) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)


@pytest.fixture
def secured(processes, redis_server, redis_client, tmp_path):
    env = service_env(redis_server.url, AUTH_TOKENS_FILE=principals(tmp_path))
    _, url = processes.api(env)
    return url, env


def test_tokens_are_required_except_for_probes_and_docs(secured):
    url, _ = secured
    with client(url, None) as anonymous, client(url, "wrong-token-0123456789") as wrong:
        for response in (anonymous.post("/predict", json={"data": [ROW]}), wrong.get("/models")):
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "token" in response.json()["detail"]
        assert anonymous.get(f"/job/{'x' * 10}").status_code == 401
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/openapi.json").status_code == 200
        assert anonymous.get("/metrics").status_code == 401


def test_each_client_sees_only_its_own_jobs_and_admin_sees_all(secured, redis_client):
    url, _ = secured
    with client(url, ALICE) as alice, client(url, BOB) as bob, client(url, ROOT) as root:
        accepted = alice.post("/predict", json={"data": [ROW]})
        assert accepted.status_code == 202
        job_id, location = accepted.json()["job_id"], accepted.headers["location"]
        assert alice.get(location).json()["status"] == "pending"
        unknown = bob.get(f"/job/{'0' * 36}")
        for response in (bob.get(location), bob.delete(location), bob.post(f"{location}/retry")):
            assert response.status_code == 404 and response.json() == {
                "detail": unknown.json()["detail"].replace("0" * 36, job_id)
            }
        assert bob.post("/jobs/lookup", json={"ids": [job_id]}).json()["items"] == [{"job_id": job_id, "found": False}]
        assert root.get(location).status_code == 200
        assert root.post("/jobs/lookup", json={"ids": [job_id]}).json()["items"][0]["status"] == "pending"
        assert redis_client.hget(f"asyncinfer:job:{job_id}", "owner") == "alice"
        assert bob.get("/admin/notifications/failed").status_code == 403
        assert root.get("/admin/notifications/failed").status_code == 200
        assert alice.delete(location).json()["status"] == "canceled"


def test_idempotency_keys_are_scoped_per_principal(secured):
    url, _ = secured
    with client(url, ALICE) as alice, client(url, BOB) as bob:
        key = {"Idempotency-Key": "order-1"}
        first = alice.post("/predict", json={"data": [ROW]}, headers=key)
        replay = alice.post("/predict", json={"data": [ROW]}, headers=key)
        theirs = bob.post("/predict", json={"data": [ROW]}, headers=key)
        assert replay.json()["job_id"] == first.json()["job_id"] and replay.headers["idempotent-replayed"] == "true"
        assert theirs.json()["job_id"] != first.json()["job_id"]  # a predictable key finds nothing of alice's
        conflict = alice.post("/predict", json={"data": [[6.7, 3.0, 5.2, 2.3]]}, headers=key)
        assert conflict.status_code == 422 and conflict.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        assert conflict.json()["job_id"] == first.json()["job_id"]


def test_rotating_the_tokens_file_takes_effect_without_restart(processes, redis_server, redis_client, tmp_path):
    path = principals(tmp_path)
    _, url = processes.api(service_env(redis_server.url, AUTH_TOKENS_FILE=path))
    carol = "carol-token-0123456789ab"
    with client(url, BOB) as bob, client(url, carol) as new:
        assert bob.get("/models").status_code == 200 and new.get("/models").status_code == 401
        tokens_file(tmp_path, [f"alice client {ALICE}", f"carol client {carol}"])
        wait_until(lambda: new.get("/models").status_code == 200, 5, "the new token to work")
        assert bob.get("/models").status_code == 401
        path.write_text("this line is not a principal\n")  # a broken file keeps the last good tokens
        time.sleep(1.5)
        assert new.get("/models").status_code == 200


def test_rate_limit_answers_429_and_writes_nothing(processes, redis_server, redis_client, tmp_path):
    env = service_env(redis_server.url, AUTH_TOKENS_FILE=principals(tmp_path), RATE_LIMIT_PER_SECOND=0.5, RATE_LIMIT_BURST=2)
    _, url = processes.api(env)
    with client(url, ALICE) as alice, client(url, BOB) as bob:
        codes = [alice.post("/predict", json={"data": [ROW]}).status_code for _ in range(2)]
        refused = alice.post("/predict", json={"data": [ROW]}, headers={"Idempotency-Key": "k"})
        assert codes == [202, 202] and refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 2 and "RATE_LIMIT_PER_SECOND" in refused.json()["detail"]
        assert bob.post("/predict", json={"data": [ROW]}).status_code == 202  # bob has his own bucket
    assert len(redis_client.keys("asyncinfer:job:*")) == 3
    assert not redis_client.exists("asyncinfer:idem:alice:k")


def test_unfinished_jobs_limit(processes, redis_server, redis_client, tmp_path):
    env = service_env(redis_server.url, AUTH_TOKENS_FILE=principals(tmp_path), MAX_PENDING_PER_PRINCIPAL=2)
    _, url = processes.api(env)
    with client(url, ALICE) as alice:
        ids = [alice.post("/predict", json={"data": [ROW]}).json()["job_id"] for _ in range(2)]
        refused = alice.post("/predict", json={"data": [ROW]})
        assert refused.status_code == 429 and "MAX_PENDING_PER_PRINCIPAL" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        alice.delete(f"/job/{ids[0]}")
        assert alice.post("/predict", json={"data": [ROW]}).status_code == 202


def _open_long_poll(port: int, job_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /job/{job_id}?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_a_disconnected_long_poll_frees_its_slot(processes, redis_server, redis_client):
    env = service_env(redis_server.url, MAX_CONCURRENT_REQUESTS=2)
    _, url = processes.api(env)
    with client(url, None) as http:
        job_id = http.post("/predict", json={"data": [ROW]}).json()["job_id"]  # no worker: it stays pending
        polls = []
        for _ in range(2):
            time.sleep(0.2)  # the previous request's slot is released just after its answer
            polls.append(_open_long_poll(int(env["PORT"]), job_id))
        time.sleep(0.2)
        busy = http.get(f"/job/{job_id}")
        assert "MAX_CONCURRENT_REQUESTS" in busy.json()["detail"] and busy.headers["retry-after"] == "1"
        assert http.get("/readyz").status_code == 200  # probes are never refused
        for sock in polls:
            sock.close()
        freed_in = wait_until(lambda: http.get(f"/job/{job_id}").status_code == 200, 5, "the slots to free")
        assert freed_in < 2  # long before the 30 s wait would have ended


def test_docs_can_be_turned_off_and_metrics_get_their_own_port(processes, redis_server, redis_client):
    from stack import free_port

    metrics_port = free_port()
    _, url = processes.api(service_env(redis_server.url, DOCS_ENABLED="false", METRICS_PORT=metrics_port))
    with client(url, None) as http:
        assert http.get("/docs").status_code == 404 and http.get("/openapi.json").status_code == 404
        assert http.get("/metrics").status_code == 404  # the Ingress routes this port; metrics are elsewhere
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200 and 'asyncinfer_queue_pending_jobs{model="iris",priority="normal"}' in scraped.text

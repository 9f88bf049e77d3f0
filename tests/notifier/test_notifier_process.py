"""The real `asyncinfer-notifier` process against a real redis-server and a real webhook receiver."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest
import redis

from tests.notifier.conftest import Notifiers
from tests.notifier.helpers import KEYS, Reply, seed_finished_job
from tests.support.waiting import wait_until


def record(client: redis.Redis, job_id: str) -> dict[str, str]:
    return client.hgetall(KEYS.job(job_id))


def wait_for_notify_state(client: redis.Redis, job_id: str, state: str, timeout_s: float, what: str) -> dict[str, str]:
    """Wait until the job's notify_state is `state`; its record then."""
    wait_until(lambda: record(client, job_id).get("notify_state") == state, timeout_s, what)
    return record(client, job_id)


def test_retries_503_then_429_with_retry_after_then_delivers_once(redis_client, notifiers: Notifiers, make_receiver):
    receiver = make_receiver([Reply(503), Reply(429, {"Retry-After": "1"}), Reply(200)])
    notifiers.start()
    job_id = str(uuid.uuid4())
    seed_finished_job(redis_client, job_id, receiver.url)

    done = wait_for_notify_state(redis_client, job_id, "delivered", 20, "delivery")
    assert done["notify_attempts"] == "3" and done["notify_last_status"] == "200"
    assert "notify_last_error" not in done
    assert redis_client.zscore(KEYS.notify, job_id) is None  # out of the outbox

    assert [r.status for r in receiver.requests] == [503, 429, 200]
    assert all(r.verified for r in receiver.requests), "every attempt carries a valid Standard Webhooks signature"
    ids = {r.webhook_id for r in receiver.requests}
    assert len(ids) == 1 and ids.pop().startswith(f"msg_{job_id}"), "webhook-id is stable across retries"
    assert receiver.requests[2].at - receiver.requests[1].at >= 0.9, "Retry-After: 1 was honoured"

    assert len(receiver.accepted) == 1
    view = next(iter(receiver.accepted.values()))
    assert view["job_id"] == job_id and view["status"] == "completed" and view["model"] == "iris"
    assert view["priority"] == "high" and view["model_version"] == "1" and view["attempts"] == 1
    assert view["result"] == [{"label": "setosa", "probabilities": {"setosa": 0.97}}]  # parsed JSON, not a string
    assert view["finished_at"].endswith("Z") and view["error"] is None
    assert view["notification"]["state"] == "pending"  # as it stood when sent
    assert receiver.requests[0].headers["content-type"] == "application/json"


def test_410_gone_gives_up_at_once(redis_client, notifiers: Notifiers, make_receiver):
    receiver = make_receiver([Reply(410)])
    notifiers.start()
    job_id = str(uuid.uuid4())
    seed_finished_job(redis_client, job_id, receiver.url, status="failed")

    done = wait_for_notify_state(redis_client, job_id, "failed", 15, "give-up")
    assert done["notify_attempts"] == "1" and done["notify_last_status"] == "410"
    assert "HTTP 410" in done["notify_last_error"]
    assert redis_client.lrange(KEYS.notify_failed, 0, -1) == [job_id]
    assert redis_client.zscore(KEYS.notify, job_id) is None
    time.sleep(1.5)
    assert len(receiver.requests) == 1, "no retry after 410 Gone"


def test_other_4xx_and_redirects_are_permanent_but_409_is_retried(redis_client, notifiers: Notifiers, make_receiver):
    receiver = make_receiver([Reply(400)])
    retried = make_receiver([Reply(409), Reply(200)])
    elsewhere = make_receiver()
    redirecting = make_receiver([Reply(307, {"Location": elsewhere.url})])
    notifiers.start()
    bad, conflict, redirected = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    seed_finished_job(redis_client, bad, receiver.url)
    seed_finished_job(redis_client, conflict, retried.url)
    seed_finished_job(redis_client, redirected, redirecting.url)
    assert wait_for_notify_state(redis_client, bad, "failed", 15, "the 400 give-up")["notify_attempts"] == "1"
    assert wait_for_notify_state(redis_client, conflict, "delivered", 15, "the 409 retry")["notify_attempts"] == "2"
    done = wait_for_notify_state(redis_client, redirected, "failed", 15, "the 307 give-up")
    assert "redirects are not followed" in done["notify_last_error"] and done["notify_last_status"] == "307"
    assert elsewhere.requests == [], "the redirect was not followed"


def test_gives_up_after_max_attempts_then_admin_resend_redelivers(redis_client, notifiers: Notifiers, make_receiver):
    from tests.notifier.test_admin_routes import admin_client

    receiver = make_receiver([Reply(500), Reply(502), Reply(504)])
    notifiers.start(WEBHOOK_MAX_ATTEMPTS=3)
    job_id = str(uuid.uuid4())
    seed_finished_job(redis_client, job_id, receiver.url)

    done = wait_for_notify_state(redis_client, job_id, "failed", 20, "give-up")
    assert done["notify_attempts"] == "3" and done["notify_last_status"] == "504"
    assert redis_client.lrange(KEYS.notify_failed, 0, -1) == [job_id]
    assert len(receiver.requests) == 3

    with admin_client(redis_client) as http:
        listed = http.get("/admin/notifications/failed").json()["items"]
        assert [item["job_id"] for item in listed] == [job_id]
        assert listed[0]["notification"] == {"state": "failed", "attempts": 3, "last_status": 504, "last_error": "HTTP 504: ok"}
        assert http.post(f"/admin/notifications/{job_id}/resend").status_code == 202

        done = wait_for_notify_state(redis_client, job_id, "delivered", 15, "re-delivery")
        assert done["notify_attempts"] == "1" and done["notify_last_status"] == "200"
        assert http.get("/admin/notifications/failed").json()["items"] == []
    assert len(receiver.requests) == 4 and len(receiver.accepted) == 1
    assert len({r.webhook_id for r in receiver.requests}) == 1, "a resend is the same message: same webhook-id"


def test_loopback_callback_is_refused_without_allow_private(redis_client, notifiers: Notifiers, make_receiver):
    receiver = make_receiver()
    notifiers.start(WEBHOOK_ALLOW_PRIVATE="false")
    job_id = str(uuid.uuid4())
    seed_finished_job(redis_client, job_id, receiver.url)

    done = wait_for_notify_state(redis_client, job_id, "failed", 15, "refusal")
    assert "127.0.0.1" in done["notify_last_error"] and "loopback" in done["notify_last_error"]
    assert "WEBHOOK_ALLOW_PRIVATE" in done["notify_last_error"]
    assert done["notify_attempts"] == "1" and "notify_last_status" not in done
    assert receiver.requests == [], "nothing was sent to the refused address"


def test_sigkill_mid_delivery_loses_nothing(redis_client, notifiers: Notifiers, make_receiver):
    # The first request is held open; the notifier holding its lease is killed; a new notifier takes
    # the id when the lease (2 x 1 s + 5 s) runs out and delivers it.
    receiver = make_receiver([Reply(200, hold_s=4)])
    first = notifiers.start(WEBHOOK_TIMEOUT_SECONDS=1)
    job_id = str(uuid.uuid4())
    seed_finished_job(redis_client, job_id, receiver.url)
    wait_until(lambda: receiver.requests, 10, "the first request")
    first.send_signal(signal.SIGKILL)
    first.wait()

    notifiers.start(WEBHOOK_TIMEOUT_SECONDS=1)
    done = wait_for_notify_state(redis_client, job_id, "delivered", 20, "delivery after lease expiry")
    assert done["notify_last_status"] == "200"
    assert len(receiver.requests) == 2, "at-least-once: the killed attempt and one more"
    assert receiver.requests[1].at - receiver.requests[0].at >= 5, "the id came back only when the lease ran out"
    assert list(receiver.accepted) == [receiver.requests[0].webhook_id], "exactly one accepted view (deduped by webhook-id)"


def test_sigterm_finishes_in_flight_delivery_and_exits_0(redis_client, notifiers: Notifiers, make_receiver):
    receiver = make_receiver([Reply(200, hold_s=1)])
    proc = notifiers.start(WEBHOOK_TIMEOUT_SECONDS=3)
    job_id = str(uuid.uuid4())
    seed_finished_job(redis_client, job_id, receiver.url)
    wait_until(lambda: receiver.requests, 10, "the request")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert record(redis_client, job_id)["notify_state"] == "delivered", "the in-flight delivery was finished, not dropped"


def test_several_notifiers_deliver_each_job_once(redis_client, notifiers: Notifiers, make_receiver):
    receiver = make_receiver()
    for _ in range(2):
        notifiers.start()
    job_ids = [str(uuid.uuid4()) for _ in range(40)]
    for job_id in job_ids:
        seed_finished_job(redis_client, job_id, receiver.url)
    wait_until(lambda: all(record(redis_client, j).get("notify_state") == "delivered" for j in job_ids), 30, "all deliveries")
    assert len(receiver.requests) == 40, "leases kept two replicas from sending any job twice"
    assert {v["job_id"] for v in receiver.accepted.values()} == set(job_ids)


def test_probes_and_metrics(redis_client, notifiers: Notifiers, make_receiver):
    receiver = make_receiver()
    proc = notifiers.start()
    seed_finished_job(redis_client, str(uuid.uuid4()), receiver.url)
    wait_until(lambda: receiver.accepted, 10, "a delivery")
    base = f"http://127.0.0.1:{proc.health_port}"
    with urllib.request.urlopen(base + "/healthz") as response:
        assert response.status == 200

    def metrics() -> str:
        with urllib.request.urlopen(base + "/metrics") as response:
            return response.read().decode()

    wait_until(lambda: 'asyncinfer_notifier_deliveries_total{outcome="delivered"} 1' in metrics(), 5, "metrics")
    text = metrics()
    assert "asyncinfer_notifier_outbox" in text
    if shutil.which("promtool"):  # Debian's prometheus package; the exposition must lint clean
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("secret", ["", "not base64 !!", "whsec_c2hvcnQ="])
def test_refuses_to_start_without_a_usable_secret(notifiers: Notifiers, secret: str):
    from stack import BIN, spawn

    env = notifiers.env(WEBHOOK_SECRET=secret)
    log_path = notifiers.tmp_path / "bad-secret.log"
    proc = spawn([str(BIN / "asyncinfer-notifier")], env, log_path)
    assert proc.wait(20) != 0
    assert "WEBHOOK_SECRET" in log_path.read_text()

"""Webhooks end to end through real processes: API submit with callback_url -> worker (or cancel) ->
the core's scripts put the job in the outbox -> notifier -> signed POST to the receiver."""

from __future__ import annotations

import threading
import time
import urllib.request

import httpx
from stack import stop

from tests.conftest import Processes, service_env
from tests.notifier.conftest import Notifiers
from tests.notifier.helpers import Reply
from tests.support.samples import ROW
from tests.support.waiting import wait_until


def without_notification(view: dict) -> dict:
    return {k: v for k, v in view.items() if k != "notification"}


def test_completed_and_canceled_jobs_reach_the_callback(
    redis_server, redis_client, processes: Processes, notifiers: Notifiers, make_receiver
):
    receiver = make_receiver()
    # the API's callback_url check (jobqueue.ssrf) must let the loopback http receiver through too
    env = service_env(redis_server.url, WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE="true")
    _, base = processes.api(env)
    notifiers.start()
    with httpx.Client(base_url=base, timeout=10) as api:
        # no worker yet: this one stays pending and is canceled
        canceled = api.post("/predict", json={"data": [ROW], "callback_url": receiver.url}).json()["job_id"]
        assert api.delete(f"/job/{canceled}").status_code == 200
        processes.worker(env)
        completed = api.post("/predict", json={"data": [ROW], "priority": "high", "callback_url": receiver.url}).json()["job_id"]
        silent = api.post("/predict", json={"data": [ROW]}).json()["job_id"]  # no callback_url: no webhook

        wait_until(lambda: len(receiver.accepted) == 2, 60, "both webhooks")
        views = {view["job_id"]: view for view in receiver.accepted.values()}
        assert set(views) == {canceled, completed}
        assert views[canceled]["status"] == "canceled"
        assert views[completed]["status"] == "completed" and views[completed]["priority"] == "high"
        assert views[completed]["result"] is not None
        assert all(r.verified for r in receiver.requests) and len(receiver.requests) == 2

        wait_until(lambda: api.get(f"/job/{completed}").json()["notification"]["state"] == "delivered", 10, "delivered state")
        final = api.get(f"/job/{completed}").json()
        assert final["notification"] == {"state": "delivered", "attempts": 1, "last_status": 200, "last_error": None}
        assert without_notification(final) == without_notification(views[completed]), "the webhook body is the API's job view"
        assert api.get(f"/job/{silent}?wait=10").json()["notification"] is None


def test_a_retried_job_gets_a_webhook_for_each_end(
    redis_server, redis_client, processes: Processes, notifiers: Notifiers, make_receiver
):
    # End 1's webhook is held at the receiver until the job was retried and ended again, so that
    # delivery completes only after end 2: it must not count as end 2's, and end 2 gets its own.
    release = threading.Event()
    receiver = make_receiver([Reply(200, release=release)])  # every webhook-id's first request waits
    env = service_env(redis_server.url, WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE="true")
    _, base = processes.api(env)
    notifier = notifiers.start(WEBHOOK_TIMEOUT_SECONDS=60)  # the held attempt must not time out
    with httpx.Client(base_url=base, timeout=10) as api:
        job_id = api.post("/predict", json={"data": [ROW], "callback_url": receiver.url}).json()["job_id"]
        time.sleep(1.3)  # older than the first worker's REQUEST_TTL_SECONDS: it ends expired (end 1)
        expiring = processes.worker(dict(env, REQUEST_TTL_SECONDS="1"))
        wait_until(lambda: api.get(f"/job/{job_id}").json()["status"] == "expired", 60, "end 1 (expired)")
        wait_until(lambda: receiver.requests, 20, "end 1's webhook to reach the receiver")
        stop(expiring)  # the next worker runs the retried job instead of expiring it again
        assert api.post(f"/job/{job_id}/retry").status_code == 202
        processes.worker(env)
        wait_until(lambda: api.get(f"/job/{job_id}").json()["status"] == "completed", 60, "end 2 (completed)")
        release.set()

        wait_until(lambda: len(receiver.accepted) == 2, 30, "a webhook for each end")
        ends = {view["status"]: view for view in receiver.accepted.values()}  # two webhook-ids, one per end
        assert set(ends) == {"expired", "completed"}
        assert ends["expired"]["finished_at"] != ends["completed"]["finished_at"]
        assert all(r.verified for r in receiver.requests) and len(receiver.requests) == 2

        wait_until(lambda: api.get(f"/job/{job_id}").json()["notification"]["state"] == "delivered", 10, "end 2 delivered")
        final = api.get(f"/job/{job_id}").json()
        assert final["notification"] == {"state": "delivered", "attempts": 1, "last_status": 200, "last_error": None}
        assert without_notification(final) == without_notification(ends["completed"]), "the view describes the latest end"

    def superseded_counted() -> bool:  # end 1's attempt, recorded nowhere
        with urllib.request.urlopen(f"http://127.0.0.1:{notifier.health_port}/metrics") as response:
            return 'asyncinfer_notifier_deliveries_total{outcome="superseded"} 1' in response.read().decode()

    wait_until(superseded_counted, 10, "end 1's attempt to count as superseded")

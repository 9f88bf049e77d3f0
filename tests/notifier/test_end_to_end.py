"""Webhooks end to end through real processes: API submit with callback_url -> worker (or cancel) ->
the core's scripts put the job in the outbox -> notifier -> signed POST to the receiver."""

from __future__ import annotations

import httpx

from tests.conftest import Processes, service_env
from tests.notifier.conftest import Notifiers
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

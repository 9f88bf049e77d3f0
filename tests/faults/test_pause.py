"""Defect 6 of issue 20: a pause stops every worker of the model, an idle one blocked in its wait included."""

from __future__ import annotations

import httpx

from tests.conftest import service_env
from tests.faults.helpers import STORE, Jobs, assert_queue_consistent, wait_until
from tests.support.samples import IRIS


def blocked_in_wait(jobs: Jobs) -> bool:
    """A worker is blocked in its BLMOVE on a pending list (idle, between two claims)."""
    return any(c["cmd"] == "blmove" and "b" in c["flags"] for c in jobs.client.client_list())


def test_a_pause_landing_while_a_worker_waits_starts_nothing_and_keeps_the_order(processes, redis_server, jobs: Jobs):
    env = service_env(redis_server.url)
    _, url = processes.api(env)
    processes.worker(env)
    wait_until(lambda: blocked_in_wait(jobs), 30, "the idle worker to block in its wait")
    # The blocked BLMOVE is served right after this transaction: it moves the oldest id to the worker.
    ids = jobs.pause_and_enqueue("iris", [[row] for row in IRIS.values()])
    wait_until(lambda: not any(jobs.processing_lists("iris").values()), 30, "the worker to let go of the id")
    assert jobs.statuses(ids) == ["pending"] * len(ids)
    assert jobs.client.lrange(STORE.model("iris").pending("normal"), 0, -1) == ids[::-1]  # oldest at the tail
    assert_queue_consistent(jobs, "iris")
    with httpx.Client(base_url=url) as http:
        assert http.post("/admin/models/iris/resume").status_code == 200
        ended = [http.get(f"/job/{job_id}", params={"wait": 20}).json() for job_id in ids]
    assert [view["status"] for view in ended] == ["completed"] * len(ids)
    assert_queue_consistent(jobs, "iris")

"""`asyncinfer admin dead-letters` against the real service: an admin lists and requeues dead letters."""

from __future__ import annotations

import json

from jobqueue.settings import Settings
from jobqueue.states import Outcome
from tests.client.helpers import TOKENS, run_cli
from tests.support.queue import SyncJobs


def test_admin_lists_and_retries_dead_letters(auth_stack, redis_client, redis_server):
    queue = SyncJobs(redis_client, Settings(redis_url=redis_server.url))
    auth_stack.processes.stop_all()  # no worker: the failed job stays failed until the retry
    _, url = auth_stack.processes.api(auth_stack.env)
    [job_id] = queue.enqueue_n(1, owner="alice")
    queue.claim("w", 1)
    queue.finish("w", [(job_id, Outcome.FAILED, "model said no")])

    listed = run_cli(["admin", "dead-letters"], url, ASYNCINFER_TOKEN=TOKENS["ops"])
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)["items"]
    assert (item["job_id"], item["status"], item["error"]) == (job_id, "failed", "model said no")

    refused = run_cli(["admin", "dead-letters"], url, ASYNCINFER_TOKEN=TOKENS["alice"])
    assert refused.returncode != 0 and "403" in refused.stderr + refused.stdout

    retried = run_cli(["admin", "dead-letters", "--retry"], url, ASYNCINFER_TOKEN=TOKENS["ops"])
    assert retried.returncode == 0 and json.loads(retried.stdout) == {"retried": 1}
    assert queue.get(job_id).status == "pending" and redis_client.llen(queue.keys.dead) == 0

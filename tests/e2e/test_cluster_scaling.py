"""KEDA scaling on a real cluster (`make e2e-cluster`), read through the Kubernetes API with the official
`kubernetes` client: flood the queue through the ingress, watch the worker Deployment scale up, let the
backlog drain, watch it scale back down to minReplicaCount, and check that the pods removed on the way
down were the idle ones (pod-deletion-cost, issue #28), never a pod holding jobs while an idle one stayed.

Needs E2E_CLUSTER=1 plus a kubeconfig for the release (deploy/cluster.mk sets both); skipped otherwise.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("E2E_CLUSTER") != "1",
    reason="KEDA scaling needs a Kubernetes cluster: run `make e2e-cluster` (sets E2E_CLUSTER=1)",
)

NAMESPACE = os.environ.get("E2E_NAMESPACE", "asyncinfer")
RELEASE = os.environ.get("E2E_RELEASE", "asyncinfer")
KUBE_CONTEXT = os.environ.get("E2E_KUBE_CONTEXT", "")
MODEL = os.environ.get("E2E_MODEL", "iris")
# deploy/kind/values.yaml throttles each worker (batch 1, 200m CPU) so this many jobs are minutes of
# work for one worker: enough backlog for KEDA to see and scale out on.
FLOOD_JOBS = int(os.environ.get("E2E_FLOOD_JOBS", "4000"))
# While replicas come down, a few jobs a second keep some workers busy, so the ReplicaSet has busy and
# idle pods to choose from.
TRICKLE_PER_S = float(os.environ.get("E2E_TRICKLE_PER_S", "4"))
# A pod that held jobs this long before its removal had its busy cost written (debounce 5 s + latency).
HELD_WINDOW_S = 15
SCALE_UP_TIMEOUT_S = 240
DRAIN_TIMEOUT_S = 600
SCALE_DOWN_TIMEOUT_S = 300
SAMPLE_INTERVAL_S = 1.0
BODY = {"data": [[5.1, 3.5, 1.4, 0.2]]}


def worker_name() -> str:
    # Same rule as asyncinfer.fullname: the release name alone when it already contains the chart name.
    base = RELEASE if "asyncinfer" in RELEASE else f"{RELEASE}-asyncinfer"
    return f"{base}-worker-{MODEL}"  # one worker Deployment per model


@pytest.fixture(scope="module")
def kube():
    from tests.e2e.cluster import Kube  # the kubernetes client: only when a cluster is there

    return Kube.connect(NAMESPACE, KUBE_CONTEXT)


def wait_for(replicas: Callable[[], int], predicate: Callable[[int], bool], timeout_s: float, what: str) -> list[int]:
    """Poll until predicate(replicas) holds; return the replica counts seen, for the failure message."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(replicas())
        if predicate(seen[-1]):
            return seen
        time.sleep(2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}; replicas seen: {seen}")


def flood(http: httpx.Client, n: int) -> list[str]:
    """Submit n jobs concurrently through the ingress; return their ids."""

    def submit(_: int) -> str:
        resp = http.post("/predict", json=BODY)
        assert resp.status_code == 202, resp.text
        return resp.json()["job_id"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(submit, range(n)))


@contextmanager
def in_background(step: Callable[[], None], every_s: float) -> Iterator[None]:
    """Run `step` every `every_s` seconds on a thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            step()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


def test_workers_scale_out_under_a_flood_and_back_in_idle_first(kube, http: httpx.Client) -> None:
    from tests.e2e.cluster import PodCosts, busy_pods_removed, holding_sample, ranked_wrongly

    name = worker_name()
    scaled = kube.scaled_object(name)
    min_replicas, max_replicas = scaled.get("minReplicaCount", 0), scaled["maxReplicaCount"]
    assert max_replicas >= 2, "the scaling test needs keda.maxReplicaCount >= 2"
    replicas = lambda: kube.replicas(name)  # noqa: E731 - read again at each poll
    # Start from rest so the rise is caused by this flood.
    wait_for(replicas, lambda r: r <= max(min_replicas, 1), SCALE_DOWN_TIMEOUT_S, "the workers to be at rest")

    costs, samples, stop_watch = PodCosts(), [], threading.Event()

    def sample() -> None:
        overview = http.get("/admin/overview")
        if overview.status_code == 200:
            samples.append(holding_sample(overview.json(), MODEL, time.monotonic()))

    watcher = threading.Thread(target=kube.follow_pods, args=(kube.pod_selector(name), costs, stop_watch), daemon=True)
    watcher.start()
    try:
        with in_background(sample, SAMPLE_INTERVAL_S):
            ids = flood(http, FLOOD_JOBS)
            seen_up = wait_for(replicas, lambda r: r >= 2, SCALE_UP_TIMEOUT_S, "KEDA to scale the workers out")
            assert max(seen_up) <= max_replicas

            # Every job ends completed: nothing lost while replicas came and went (scale-in drains workers).
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            for job_id in ids[:: max(1, len(ids) // 50)] + [ids[-1]]:
                while True:
                    job = http.get(f"/job/{job_id}", params={"wait": 20}).json()
                    if job["status"] == "completed":
                        break
                    assert job["status"] in ("pending", "processing"), job
                    assert time.monotonic() < deadline, f"backlog not drained in {DRAIN_TIMEOUT_S}s"

            with in_background(lambda: http.post("/predict", json=BODY), 1 / TRICKLE_PER_S):
                wait_for(replicas, lambda r: r <= max(min_replicas, 1), SCALE_DOWN_TIMEOUT_S, "KEDA to scale in")
        wait_for(replicas, lambda r: r <= min_replicas, SCALE_DOWN_TIMEOUT_S, f"KEDA to scale back to {min_replicas}")
    finally:
        stop_watch.set()
        watcher.join(60)

    assert costs.removals, "the watch saw no worker pod removed on the way down"
    assert ranked_wrongly(costs.removals) == [], "a pod was removed while a cheaper one stayed"
    assert busy_pods_removed(costs.removals, samples, HELD_WINDOW_S) == [], "a pod holding jobs went while an idle one stayed"

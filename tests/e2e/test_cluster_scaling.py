"""KEDA scaling on a real cluster (`make e2e-cluster`): flood the queue through the ingress, watch the
worker Deployment scale up, let the backlog drain, watch it scale back down to minReplicaCount.

Needs E2E_CLUSTER=1 plus kubectl access to the release (set by deploy/cluster.mk); skipped otherwise.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time

import httpx
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("E2E_CLUSTER") != "1",
    reason="KEDA scaling needs a Kubernetes cluster: run `make e2e-cluster` (sets E2E_CLUSTER=1)",
)

NAMESPACE = os.environ.get("E2E_NAMESPACE", "asyncinfer")
RELEASE = os.environ.get("E2E_RELEASE", "asyncinfer")
KUBECTL = os.environ.get("E2E_KUBECTL", "kubectl")
KUBE_CONTEXT = os.environ.get("E2E_KUBE_CONTEXT", "")
# deploy/kind/values.yaml throttles each worker (batch 1, 200m CPU) so this many jobs are minutes of
# work for one worker: enough backlog for KEDA to see and scale out on.
FLOOD_JOBS = int(os.environ.get("E2E_FLOOD_JOBS", "4000"))
SCALE_UP_TIMEOUT_S = 240
DRAIN_TIMEOUT_S = 600
SCALE_DOWN_TIMEOUT_S = 300


def kubectl_json(*args: str) -> dict:
    context = ["--context", KUBE_CONTEXT] if KUBE_CONTEXT else []
    out = subprocess.run(
        [KUBECTL, *context, "-n", NAMESPACE, *args, "-o", "json"], check=True, capture_output=True, text=True, timeout=30
    )
    return json.loads(out.stdout)


def worker_name() -> str:
    # Same rule as asyncinfer.fullname: the release name alone when it already contains the chart name.
    base = RELEASE if "asyncinfer" in RELEASE else f"{RELEASE}-asyncinfer"
    return f"{base}-worker-{os.environ.get('E2E_MODEL', 'iris')}"  # one worker Deployment per model


def worker_replicas() -> int:
    """Replicas the worker Deployment asks for right now (what KEDA/HPA set)."""
    return kubectl_json("get", "deployment", worker_name())["spec"].get("replicas", 0)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 2.0) -> list[int]:
    """Poll until predicate(replicas) holds; return the replica counts seen, for the failure message."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(worker_replicas())
        if predicate(seen[-1]):
            return seen
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}; replicas seen: {seen}")


def flood(base_url: str, n: int) -> list[str]:
    """Submit n jobs concurrently through the ingress; return their ids."""
    body = {"data": [[5.1, 3.5, 1.4, 0.2]]}
    with httpx.Client(base_url=base_url, timeout=30) as client:

        def submit(_: int) -> str:
            resp = client.post("/predict", json=body)
            assert resp.status_code == 202, resp.text
            return resp.json()["job_id"]

        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
            return list(pool.map(submit, range(n)))


def test_workers_scale_out_under_a_flood_and_back_in_when_drained() -> None:
    base_url = os.environ["E2E_BASE_URL"].rstrip("/")
    scaled = kubectl_json("get", "scaledobject", worker_name())["spec"]
    min_replicas, max_replicas = scaled.get("minReplicaCount", 0), scaled["maxReplicaCount"]
    assert max_replicas >= 2, "the scaling test needs keda.maxReplicaCount >= 2"
    # Start from rest so the rise is caused by this flood.
    wait_for(lambda r: r <= max(min_replicas, 1), SCALE_DOWN_TIMEOUT_S, "the workers to be at rest before the flood")

    ids = flood(base_url, FLOOD_JOBS)
    seen_up = wait_for(lambda r: r >= 2, SCALE_UP_TIMEOUT_S, "KEDA to scale the workers out")
    assert max(seen_up) <= max_replicas

    # Every job ends completed: nothing lost while replicas came and went (scale-in drains workers).
    with httpx.Client(base_url=base_url, timeout=40) as client:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for job_id in ids[:: max(1, len(ids) // 50)] + [ids[-1]]:
            while True:
                job = client.get(f"/job/{job_id}", params={"wait": 20}).json()
                if job["status"] == "completed":
                    break
                assert job["status"] in ("pending", "processing"), job
                assert time.monotonic() < deadline, f"backlog not drained in {DRAIN_TIMEOUT_S}s"

    wait_for(lambda r: r <= min_replicas, SCALE_DOWN_TIMEOUT_S, f"KEDA to scale back to {min_replicas}")

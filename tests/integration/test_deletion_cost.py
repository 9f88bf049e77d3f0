"""Idle-first scale-in (issue #28): a real worker process keeps its pod's pod-deletion-cost current
through the real `kubernetes` client, here against a local server speaking the pod GET/PATCH subset of
the Kubernetes API (tests/support/kube_api.py), reached through a kubeconfig."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import free_port

from tests.conftest import service_env
from tests.faults.helpers import Jobs
from tests.faults.test_poison import loop_env
from tests.support.kube_api import FakeKubeApi, write_kubeconfig
from tests.support.models import loop_iterations_per_second, loop_model
from tests.support.samples import ROW
from tests.support.waiting import wait_until
from worker.deletion_cost import ANNOTATION, BUSY_COST, IDLE_COST

NAMESPACE = "asyncinfer"
POD = "asyncinfer-worker-iris-0"
IDLE, BUSY = str(IDLE_COST), str(BUSY_COST)
FAILURE_LINE = "pod-deletion-cost: cannot"


@pytest.fixture(scope="module")
def loop_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """(a directory holding loop.onnx, Loop iterations per second): jobs that take as long as we ask."""
    path = loop_model(tmp_path_factory.mktemp("models") / "loop.onnx")
    return path.parent, loop_iterations_per_second(path)


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi(NAMESPACE, {POD: {}})
    yield api
    api.stop()


@pytest.fixture
def jobs(redis_client) -> Jobs:
    return Jobs(redis_client)


def pod_env(env: dict[str, str], kubeconfig: Path, debounce_s: float = 1) -> dict[str, str]:
    """A worker that believes it runs in pod POD, reaching the API server through `kubeconfig`."""
    env.pop("KUBERNETES_SERVICE_HOST", None)  # in-cluster config would win over the kubeconfig
    env.update(POD_NAME=POD, POD_NAMESPACE=NAMESPACE, KUBECONFIG=str(kubeconfig))
    env["DELETION_COST_DEBOUNCE_SECONDS"] = str(debounce_s)
    return env


def iris_env(redis_url: str, kubeconfig: Path, debounce_s: float = 1) -> dict[str, str]:
    return pod_env(service_env(redis_url), kubeconfig, debounce_s)


def cost(api: FakeKubeApi) -> str | None:
    return api.annotations(POD).get(ANNOTATION)


def patched_values(api: FakeKubeApi) -> list[str]:
    return [patch.body["metadata"]["annotations"][ANNOTATION] for patch in api.patches]


def worker_log(processes) -> str:
    return "\n".join(path.read_text() for path in processes.tmp_path.glob("worker-*.log"))


def test_an_idle_worker_sets_its_pod_cost_low_with_one_strategic_merge_patch(processes, redis_server, kube_api, tmp_path):
    kube_api.pods[POD]["annotations"] = {ANNOTATION: BUSY, "other": "kept"}  # left by the container's previous run
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    processes.worker(iris_env(redis_server.url, kubeconfig))

    wait_until(lambda: cost(kube_api) == IDLE, 60, "the idle cost")
    wait_until(lambda: "pod-deletion-cost on" in worker_log(processes), 10, "the start-up line")
    assert kube_api.annotations(POD) == {ANNOTATION: IDLE, "other": "kept"}
    assert [p.content_type for p in kube_api.patches] == ["application/strategic-merge-patch+json"]
    assert kube_api.patches[0].body == {"metadata": {"annotations": {ANNOTATION: IDLE}}}


def test_busy_longer_than_the_debounce_sets_the_cost_high_then_low_again(
    processes, redis_server, kube_api, jobs, tmp_path, loop_models
):
    model_dir, loop_speed = loop_models
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    processes.worker(pod_env(loop_env(redis_server.url, model_dir, tmp_path), kubeconfig))
    wait_until(lambda: cost(kube_api) == IDLE, 60, "the idle cost")

    job = jobs.enqueue("loop", [[int(loop_speed * 6)]])  # held about 6 s, the debounce is 1 s
    wait_until(lambda: cost(kube_api) == BUSY, 30, "the busy cost")
    assert jobs.statuses([job]) == ["processing"], "the cost went up only after the job had ended"
    wait_until(lambda: jobs.all_ended([job]), 60, "the job to end")
    wait_until(lambda: cost(kube_api) == IDLE, 30, "the idle cost again")

    assert jobs.statuses([job]) == ["completed"]
    assert patched_values(kube_api) == [IDLE, BUSY, IDLE]


def test_busy_and_idle_flipping_faster_than_the_debounce_patch_rarely(
    processes, redis_server, kube_api, jobs, tmp_path, loop_models
):
    model_dir, loop_speed = loop_models
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    processes.worker(pod_env(loop_env(redis_server.url, model_dir, tmp_path), kubeconfig, debounce_s=3))
    wait_until(lambda: cost(kube_api) == IDLE, 60, "the idle cost")

    ids = []
    for _ in range(4):  # busy about 1 s, idle 1.5 s (longer than a sample, shorter than the debounce)
        ids.append(jobs.enqueue("loop", [[int(loop_speed)]]))
        wait_until(lambda: jobs.all_ended(ids), 60, "the job to end", poll_s=0.01)
        time.sleep(1.5)

    assert jobs.statuses(ids) == ["completed"] * len(ids)
    # Eight flips; patched: the first idle, and busy at most once (a job slowed down past the debounce).
    assert len(kube_api.patches) <= 2, patched_values(kube_api)


def submit_and_finish(jobs: Jobs, n: int) -> None:
    ids = [jobs.enqueue("iris", [ROW]) for _ in range(n)]
    wait_until(lambda: jobs.all_ended(ids), 60, "the jobs to end")
    assert jobs.statuses(ids) == ["completed"] * n


def test_an_api_server_that_is_down_is_logged_once_and_jobs_keep_flowing(processes, redis_server, jobs, tmp_path):
    port = free_port()  # nothing listens here yet
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    processes.worker(iris_env(redis_server.url, kubeconfig))
    wait_until(lambda: FAILURE_LINE in worker_log(processes), 60, "the failure line")
    submit_and_finish(jobs, 500)

    api = FakeKubeApi(NAMESPACE, {POD: {}}, port)  # the API server comes back on the same address
    try:
        wait_until(lambda: api.patches, 90, "a patch once the API server is back (retried with a backoff)")
        # the fake server records the patch before the worker has read its answer and logged it
        wait_until(lambda: "the Kubernetes API accepts patches again" in worker_log(processes), 30, "the recovery line")
    finally:
        api.stop()
    log = worker_log(processes)
    assert log.count(FAILURE_LINE) == 1, log
    assert "Retrying" not in log, "urllib3 logged its own retries"


def test_a_forbidden_patch_is_logged_once_and_jobs_keep_flowing(processes, redis_server, kube_api, jobs, tmp_path):
    kube_api.forbidden = True  # the chart's Role is missing
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    processes.worker(iris_env(redis_server.url, kubeconfig))
    # Idle for the debounce: the read at start, then the idle patch retried with a backoff (1 s, 2 s, ...).
    wait_until(lambda: kube_api.requests >= 4, 60, "the read and three patch attempts")
    submit_and_finish(jobs, 500)

    log = worker_log(processes)
    assert log.count(FAILURE_LINE) == 1, log
    assert "403 Forbidden: the pod's ServiceAccount needs get and patch on pods" in log
    assert cost(kube_api) is None


def test_sigterm_waits_for_a_patch_in_flight_and_writes_nothing_after(processes, redis_server, kube_api, tmp_path):
    kube_api.holding.set()  # PATCH replies wait for the test
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    worker = processes.worker(iris_env(redis_server.url, kubeconfig))
    wait_until(lambda: kube_api.requests >= 2, 60, "the read, then the idle patch in flight")

    signaled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: draining" in worker_log(processes), 30, "the drain to start")
    with pytest.raises(subprocess.TimeoutExpired):
        worker.wait(1)  # still there: its patch has no reply yet
    kube_api.release.set()
    assert worker.wait(30) == 0

    assert [(p.client_waited, p.at < signaled) for p in kube_api.patches] == [(True, True)]
    assert cost(kube_api) == IDLE
    assert FAILURE_LINE not in worker_log(processes)

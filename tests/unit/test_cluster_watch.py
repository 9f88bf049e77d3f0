"""The cluster test's bookkeeping (tests/e2e/cluster.py), on Kubernetes client objects built here: the
cluster test itself only runs against a cluster, so its helpers are checked without one."""

from __future__ import annotations

import datetime
import os

import pytest
from kubernetes import client

from tests.e2e.cluster import (
    Holding,
    PodCosts,
    Removal,
    busy_pods_removed,
    deletion_cost,
    holding_sample,
    pod_of,
    ranked_wrongly,
)
from worker.deletion_cost import ANNOTATION, BUSY_COST, IDLE_COST

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def pod(name: str, cost: int | str | None, terminating: bool = False) -> client.V1Pod:
    annotations = None if cost is None else {ANNOTATION: str(cost)}
    meta = client.V1ObjectMeta(name=name, annotations=annotations, deletion_timestamp=NOW if terminating else None)
    return client.V1Pod(metadata=meta)


@pytest.mark.parametrize(("cost", "want"), [(None, 0), ("100", 100), ("-5", -5), ("not-a-number", IDLE_COST)])
def test_deletion_cost_reads_the_annotation_as_kubernetes_does(cost, want) -> None:
    assert deletion_cost(pod("a", cost)) == want


def test_pod_of_strips_the_pid_and_suffix_of_a_worker_id() -> None:
    assert pod_of("asyncinfer-worker-iris-5d9c7b-x2k4p-7-1a2b3c") == "asyncinfer-worker-iris-5d9c7b-x2k4p"


def test_a_removal_records_the_removed_cost_and_those_that_stayed_once() -> None:
    costs = PodCosts()
    for name, cost in (("a", IDLE_COST), ("b", BUSY_COST), ("c", None)):
        costs.observe("ADDED", pod(name, cost), 1.0)
    costs.observe("MODIFIED", pod("a", IDLE_COST, terminating=True), 2.0)
    costs.observe("DELETED", pod("a", IDLE_COST, terminating=True), 3.0)  # already counted
    costs.observe("DELETED", pod("b", BUSY_COST), 4.0)  # gone without a terminating event seen first

    assert costs.removals == [
        Removal("a", 2.0, IDLE_COST, {"b": BUSY_COST, "c": 0}),
        Removal("b", 4.0, BUSY_COST, {"c": 0}),
    ]
    assert costs.live == {"c": 0}
    assert ranked_wrongly(costs.removals) == [costs.removals[1]]


def test_the_last_pod_or_a_tie_is_not_ranked_wrongly() -> None:
    assert ranked_wrongly([Removal("a", 1.0, BUSY_COST, {}), Removal("b", 1.0, BUSY_COST, {"c": BUSY_COST})]) == []


def test_holding_sample_sums_the_workers_of_each_pod_for_one_model() -> None:
    overview = {
        "models": [
            {"name": "other", "workers": [{"id": "o-1-aaaaaa", "holding": 9, "alive": True}]},
            {
                "name": "iris",
                "workers": [
                    {"id": "p1-10-aaaaaa", "holding": 2, "alive": True},
                    {"id": "p1-11-bbbbbb", "holding": 1, "alive": True},  # the container restarted
                    {"id": "p2-10-cccccc", "holding": 0, "alive": True},
                ],
            },
        ]
    }
    assert holding_sample(overview, "iris", 5.0) == Holding(5.0, {"p1": 3, "p2": 0})


def test_a_pod_busy_for_the_whole_window_removed_while_an_idle_one_stayed_is_reported() -> None:
    samples = [Holding(t, {"busy": 1, "idle": 0, "brief": 1 if t >= 9 else 0}) for t in range(0, 11)]
    busy = Removal("busy", 10.0, IDLE_COST, {"idle": 0})
    brief = Removal("brief", 10.0, IDLE_COST, {"idle": 0})  # held jobs for less than the window: its cost was low
    idle = Removal("idle", 10.0, IDLE_COST, {"busy": BUSY_COST})
    all_busy = Removal("busy", 10.0, BUSY_COST, {"brief": BUSY_COST})  # no idle pod to take instead
    unsampled = Removal("busy", 50.0, IDLE_COST, {"idle": 0})

    assert busy_pods_removed([busy, brief, idle, all_busy, unsampled], samples, window_s=5) == [busy]


def test_the_cluster_test_imports_and_skips_without_a_cluster() -> None:
    from tests.e2e import test_cluster_scaling

    assert os.environ.get("E2E_CLUSTER") == "1" or test_cluster_scaling.pytestmark.args == (True,)
    assert test_cluster_scaling.worker_name().endswith("-worker-" + test_cluster_scaling.MODEL)

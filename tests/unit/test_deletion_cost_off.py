"""Outside a cluster the pod-deletion-cost does nothing but say so once, at debug level; a failed call
is described in one short line (the worker's behaviour against an API server: tests/integration)."""

from __future__ import annotations

import logging

import pytest
from kubernetes.client.exceptions import ApiException

from jobqueue.settings import Settings
from worker.deletion_cost import DeletionCost, describe


@pytest.mark.parametrize(
    ("pod_name", "env", "line"),
    [
        ("", {"KUBECONFIG": "/nonexistent"}, "POD_NAME is not set (not in a cluster)"),
        ("worker-0", {}, "no in-cluster config (KUBERNETES_SERVICE_HOST) and no KUBECONFIG"),
    ],
)
def test_off_outside_a_cluster_with_one_debug_line(pod_name, env, line, monkeypatch, caplog) -> None:
    for name in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG, logger="asyncinfer.worker.deletion_cost")

    cost = DeletionCost(Settings(pod_name=pod_name))
    cost.start()
    cost.holding(True)
    cost.close()

    assert cost._thread is None
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.DEBUG, f"pod-deletion-cost off: {line}")]


def test_a_failed_call_is_one_short_line() -> None:
    assert describe(ApiException(status=403, reason="Forbidden")).startswith("403 Forbidden: the pod's ServiceAccount needs")
    assert describe(ApiException(status=404, reason="Not Found")) == "404 Not Found"
    assert describe(ConnectionRefusedError(111, "refused" * 100)).startswith("ConnectionRefusedError: [Errno 111]")
    assert len(describe(ConnectionRefusedError(111, "refused" * 100))) < 240

"""The worker's own pod `controller.kubernetes.io/pod-deletion-cost`: low while idle, high while it holds
jobs, so a scale-in (KEDA lowering the Deployment's replicas) removes idle workers first.

Only the pod knows whether it is busy, and KEDA cannot choose which pod goes (kedacore/keda#6124); the
ReplicaSet controller deletes the lowest-cost pods first. The annotation is written from a thread of
its own through the Kubernetes API (the official client, in-cluster config): the claim/infer loop only
sets two fields. A state must hold for DELETION_COST_DEBOUNCE_SECONDS before it is written, so a
worker whose batches come and go patches rarely, never per batch.

Off unless POD_NAME is set (the chart passes it through the downward API) and the process finds an
in-cluster config (or KUBECONFIG, for a worker run by hand against a cluster).

Drain: once draining, nothing new is written and a patch in flight is waited for (up to its timeout),
so the process never exits in the middle of one; the annotation keeps its last value, since a
terminating pod is no longer ranked for deletion. (A hard exit may cut a request short: the API server
applies a request whole or not at all.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from jobqueue.settings import Settings

log = logging.getLogger("asyncinfer.worker.deletion_cost")

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
IDLE_COST = 0  # Kubernetes' default: a pod never annotated (just started, or patching refused) ranks with the idle
BUSY_COST = 100  # any value above IDLE_COST; both are strings in the annotation
STRATEGIC_MERGE = "application/strategic-merge-patch+json"  # said outright: older clients chose by the body
REQUEST_TIMEOUT_S = (3.0, 5.0)  # connect, read: a slow API server delays only this thread (and a drain's end)
MAX_RETRY_S = 60.0  # longest pause between attempts while the API server fails or refuses
FAILURE_REMINDER_S = 600.0  # a failure that persists is logged again this often, not per attempt
MAX_TICK_S = 1.0  # how often the state is sampled, at most (a quarter of the debounce when shorter)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class DeletionCost:
    """Publishes "busy" or "idle" as the pod's deletion cost, debounced, from a background thread.

    The loop calls `holding(True)` when it claims jobs and `holding(False)` when they are recorded: two
    attribute writes, nothing that waits. A sample (every quarter debounce, at most MAX_TICK_S) counts as
    busy if jobs were held at any moment since the last one, so the short idle gaps of a worker under
    steady load do not count as idle; a state that flips faster than the debounce is not written.
    """

    def __init__(self, settings: Settings) -> None:
        self.pod_name = settings.pod_name
        self.namespace = settings.pod_namespace
        self.debounce_s = settings.deletion_cost_debounce_seconds
        self.published: int | None = None  # the cost the pod carries, as far as this process knows
        self._holding = False
        self._claims = 0  # batches claimed, written only by the loop
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._next_failure_log = 0.0

    # -- called by the loop (never blocks) ---------------------------------------------------------

    def holding(self, busy: bool) -> None:
        """The loop holds jobs now (True) or has recorded them all (False)."""
        self._holding = busy
        if busy:
            self._claims += 1

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread when running in a cluster; otherwise one debug line."""
        if not self.pod_name:
            log.debug("pod-deletion-cost off: POD_NAME is not set (not in a cluster)")
            return
        if not os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            log.debug("pod-deletion-cost off: no in-cluster config (KUBERNETES_SERVICE_HOST) and no KUBECONFIG")
            return
        self._thread = threading.Thread(target=self._run, name="deletion-cost", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write nothing new (drain); a patch in flight finishes."""
        self._stopping.set()

    def close(self) -> None:
        """Stop, and wait for a patch in flight so the process does not exit in its middle."""
        self.stop()
        if self._thread is not None:
            self._thread.join(sum(REQUEST_TIMEOUT_S) + 1)

    # -- background thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            pods = self._connect()
        except Exception as exc:  # a broken config must not take the worker down: off, said once
            log.warning("pod-deletion-cost off: cannot configure the Kubernetes client: %s", exc)
            return
        if pods is None:
            return
        self._read_current(pods)
        tick = min(MAX_TICK_S, max(self.debounce_s / 4, 0.05))
        seen_claims = self._claims
        candidate, since = self._holding, time.monotonic()
        retry_at, backoff = 0.0, 1.0
        while not self._stopping.wait(tick):
            claims = self._claims
            busy = self._holding or claims != seen_claims
            seen_claims = claims
            now = time.monotonic()
            if busy != candidate:
                candidate, since = busy, now
            want = BUSY_COST if candidate else IDLE_COST
            if want == self.published or now - since < self.debounce_s or now < retry_at:
                continue
            if self._patch(pods, want):
                backoff = 1.0
            else:
                retry_at, backoff = now + backoff, min(backoff * 2, MAX_RETRY_S)

    def _connect(self) -> Any | None:
        """A CoreV1Api for this pod's API server, or None (logged) when there is none to use."""
        try:  # imported here: a second of start-up that a worker outside a cluster never pays
            from kubernetes import client, config
        except ImportError:
            log.warning("pod-deletion-cost off: the `kubernetes` package is not installed")
            return None
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            if not self.namespace and SERVICE_ACCOUNT_NAMESPACE.exists():
                self.namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        else:
            config.load_kube_config(client_configuration=configuration)
        # Our loop retries with a backoff; urllib3's own retries would log a warning per attempt.
        configuration.retries = 0
        self.namespace = self.namespace or "default"
        log.info("pod-deletion-cost on: pod %s/%s, debounce %.1fs", self.namespace, self.pod_name, self.debounce_s)
        return client.CoreV1Api(client.ApiClient(configuration))

    def _read_current(self, pods: Any) -> None:
        """What the pod carries now (a restarted container finds its predecessor's value), so an
        unchanged state is not written again."""
        try:
            pod = pods.read_namespaced_pod(self.pod_name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # anything: the loop patches what it wants without knowing
            self._failed("read", exc)
            return
        value = (pod.metadata.annotations or {}).get(ANNOTATION)
        self.published = int(value) if value is not None and value.lstrip("-").isdigit() else None

    def _patch(self, pods: Any, cost: int) -> bool:
        body = {"metadata": {"annotations": {ANNOTATION: str(cost)}}}
        try:
            pods.patch_namespaced_pod(
                self.pod_name, self.namespace, body, _content_type=STRATEGIC_MERGE, _request_timeout=REQUEST_TIMEOUT_S
            )
        except Exception as exc:  # API server down, 403, timeout: retried later, never raised into the worker
            self._failed("patch", exc)
            return False
        self.published = cost
        if self._failing:
            self._failing = False
            log.info("pod-deletion-cost: the Kubernetes API accepts patches again")
        log.debug("pod-deletion-cost set to %d", cost)
        return True

    def _failed(self, what: str, exc: Exception) -> None:
        """Logged once, then at most every FAILURE_REMINDER_S while it lasts."""
        now = time.monotonic()
        if self._failing and now < self._next_failure_log:
            return
        self._failing = True
        self._next_failure_log = now + FAILURE_REMINDER_S
        log.warning(
            "pod-deletion-cost: cannot %s pod %s/%s (%s); jobs are unaffected, retrying quietly",
            what, self.namespace, self.pod_name, describe(exc),
        )  # fmt: skip


def describe(exc: Exception) -> str:
    """One short line for a failed API call."""
    status = getattr(exc, "status", None)
    if status == 403:
        return "403 Forbidden: the pod's ServiceAccount needs get and patch on pods in its namespace"
    if status is not None:
        return f"{status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {str(exc)[:200]}"

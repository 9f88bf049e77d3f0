"""What the cluster test reads through the Kubernetes API (the official `kubernetes` client): the worker
Deployment's replicas, its ScaledObject, and a watch of its pods that records every removal with the
pod-deletion-cost of the removed pod and of the pods that stayed. The bookkeeping is plain functions
over recorded data, unit-tested without a cluster (tests/unit/test_cluster_watch.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from worker.deletion_cost import ANNOTATION, IDLE_COST

WATCH_WINDOW_S = 10  # one watch request's length; the next resumes from the last resourceVersion
GONE = 410  # the resourceVersion to resume from is too old: list again


def deletion_cost(pod: client.V1Pod) -> int:
    """The pod's pod-deletion-cost; Kubernetes counts a missing or unreadable one as 0."""
    value = (pod.metadata.annotations or {}).get(ANNOTATION, "")
    try:
        return int(value)
    except ValueError:
        return IDLE_COST


def pod_of(worker_id: str) -> str:
    """The pod a worker id belongs to: ids are `<host name>-<pid>-<6 hex>` and a pod's host name is its name."""
    return worker_id.rsplit("-", 2)[0]


@dataclass(frozen=True)
class Removal:
    """A pod the ReplicaSet chose to delete: when the watch saw it, its cost, and the costs of the others."""

    pod: str
    at: float
    cost: int
    survivors: dict[str, int]


@dataclass
class PodCosts:
    """The Deployment's live pods and their costs, kept from watch events; each removal recorded once.

    A draining worker writes no new cost, so the cost a terminating pod carries is the one it had
    when the ReplicaSet ranked it."""

    live: dict[str, int] = field(default_factory=dict)
    removals: list[Removal] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, kind: str, pod: client.V1Pod, at: float) -> None:
        name = pod.metadata.name
        with self._lock:
            if kind == "DELETED" or pod.metadata.deletion_timestamp is not None:
                if name in self.live:
                    del self.live[name]
                    self.removals.append(Removal(name, at, deletion_cost(pod), dict(self.live)))
            else:
                self.live[name] = deletion_cost(pod)


def ranked_wrongly(removals: list[Removal]) -> list[Removal]:
    """Removals of a pod that cost more than one that stayed (the ReplicaSet ignored the ranking)."""
    return [r for r in removals if r.survivors and r.cost > min(r.survivors.values())]


@dataclass(frozen=True)
class Holding:
    """One look at the admin overview: how many jobs each pod's worker held."""

    at: float
    by_pod: dict[str, int]


def holding_sample(overview: dict[str, Any], model: str, at: float) -> Holding:
    """The `workers` of `model` in a GET /admin/overview answer, by pod."""
    workers = next(m["workers"] for m in overview["models"] if m["name"] == model)
    by_pod: dict[str, int] = {}
    for worker in workers:
        by_pod[pod_of(worker["id"])] = by_pod.get(pod_of(worker["id"]), 0) + worker["holding"]
    return Holding(at, by_pod)


def busy_pods_removed(removals: list[Removal], samples: list[Holding], window_s: float) -> list[Removal]:
    """Removals of a pod that held jobs in every sample of the `window_s` before it (longer than the
    debounce: its cost was high) while a pod that stayed held none in the last of them."""
    wrong = []
    for removal in removals:
        before = [s for s in samples if removal.at - window_s <= s.at <= removal.at]
        if not before or not all(s.by_pod.get(removal.pod, 0) > 0 for s in before):
            continue
        if any(before[-1].by_pod.get(pod, 0) == 0 for pod in removal.survivors):
            wrong.append(removal)
    return wrong


@dataclass
class Kube:
    """The API objects the test reads, for one namespace."""

    core: client.CoreV1Api
    apps: client.AppsV1Api
    custom: client.CustomObjectsApi
    namespace: str

    @classmethod
    def connect(cls, namespace: str, context: str | None = None) -> Kube:
        """From the kubeconfig (KUBECONFIG or ~/.kube/config), `context` or its current one."""
        configuration = client.Configuration()
        config.load_kube_config(context=context or None, client_configuration=configuration)
        api = client.ApiClient(configuration)
        return cls(client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api), namespace)

    def replicas(self, deployment: str) -> int:
        """Replicas the Deployment asks for right now (what KEDA's HPA set)."""
        return self.apps.read_namespaced_deployment(deployment, self.namespace).spec.replicas or 0

    def pod_selector(self, deployment: str) -> str:
        labels = self.apps.read_namespaced_deployment(deployment, self.namespace).spec.selector.match_labels
        return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))

    def scaled_object(self, name: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "keda.sh", "v1alpha1", self.namespace, "scaledobjects", name
        )["spec"]
        return spec

    def follow_pods(self, selector: str, costs: PodCosts, stop: threading.Event) -> None:
        """Feed `costs` from a watch of the pods matching `selector` until `stop` is set."""
        pods = watch.Watch()
        resource_version = None
        while not stop.is_set():
            resume = {"resource_version": resource_version} if resource_version else {}
            try:
                for event in pods.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    timeout_seconds=WATCH_WINDOW_S,
                    **resume,
                ):
                    costs.observe(event["type"], event["object"], time.monotonic())
                    resource_version = event["object"].metadata.resource_version
                    if stop.is_set():
                        break
            except ApiException as exc:
                if exc.status != GONE:
                    raise
                resource_version = None

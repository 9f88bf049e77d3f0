"""Prometheus metrics of asyncinfer: every metric name, label and bucket, shared by the API, the worker
and the notifier (prometheus-client).

Who reports what (so sums across pods are right):

- Queue-wide state read from Redis (pending, in flight, dead letters, oldest pending age, workers,
  paused, the per-model stats counters, Redis memory) is reported by the API only, by
  `QueueCollector` over one `admin.StoreOverview` read per scrape. Every API replica reports the same
  values, so dashboards and alerts aggregate them with `max without (instance, pod)`, never `sum`.
- Workers and notifiers report only their own observations (histograms, counters); those sum across
  pods.
- Exemplars (OpenMetrics, `Accept: application/openmetrics-text`): with tracing on, the worker's
  end-to-end and model-call histograms carry a sampled job's `trace_id` per bucket, so a spike on a
  dashboard links to a trace (jobqueue/tracing.py).
- Several processes in one pod each serve their own port (API: PORT or METRICS_PORT, worker and
  notifier: WORKER_HEALTH_PORT), so prometheus-client's multiprocess mode is not needed.

Labels are bounded: model (a configured model name), priority (3), outcome, route (a route template),
method, status (a class such as "2xx"). Never job ids or principals.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Exemplar, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:  # annotations only: the worker imports this module without the API's modules
    from jobqueue.admin import StoreOverview
    from jobqueue.protocol import EndedTiming

# Job latencies span a sub-millisecond model call (the example iris model runs in ~0.1 ms) to a job that
# waited an hour in a backlog (REQUEST_TTL_SECONDS defaults to 30 min): 0.25 ms .. 1 h, about three
# buckets per decade. Below 10 ms too, or a fast model's quantiles are guesses inside the lowest bucket.
JOB_SECONDS_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600,
)  # fmt: skip
# Batches are 1 .. MAX_BATCH_SIZE (<= 4096) jobs: powers of two.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# HTTP: sub-millisecond submits up to 30 s long polls (GET /job?wait=30, Prefer: wait=30).
HTTP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Stats HASH fields that end a job, exported as asyncinfer_jobs_finished_total{outcome=...}; the sum over
# outcomes is every job that ended.
FINISHED_OUTCOMES = ("completed", "failed", "expired", "canceled")
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed", "lease_lost", "superseded", "errors")
# A job's timestamps, as the worker reads them after `finish`; only ended jobs are observed.


class BatchedHistogram(Collector):
    """A histogram observed a batch of values at a time: the worker's per-job latencies.

    prometheus-client's `Histogram.observe` scans the buckets in Python and takes two locked
    increments per value; three per job were a quarter of a worker's CPU in a drain (py-spy). Here a
    batch costs one numpy bucketing and one lock. Exposed as a standard histogram (`_bucket`,
    `_count`, `_sum`), so queries and dashboards do not change.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[Any, list[float]]] = {}  # labels -> (per-bucket counts, [sum])
        self._exemplars: dict[tuple[str, ...], dict[int, Exemplar]] = {}  # labels -> bucket index -> the latest
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Any, exemplars: Sequence[tuple[float, str]] = ()) -> None:
        """Observe every value of a 1-D numpy array under `labels` (in `labelnames` order); `exemplars`:
        (value, trace id) of observations among them whose trace is sampled."""
        import numpy as np  # the notifier imports this module and never observes: no numpy there

        if len(values) == 0:
            return
        per_bucket = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds) + 1)
        with self._lock:
            counts, total = self._series.setdefault(labels, (np.zeros(len(self.bounds) + 1, dtype=np.int64), [0.0]))
            counts += per_bucket
            total[0] += float(values.sum())
            if exemplars:
                kept = self._exemplars.setdefault(labels, {})
                for value, trace_id in exemplars:
                    bucket = int(np.searchsorted(self.bounds, value, side="left"))
                    kept[bucket] = Exemplar({"trace_id": trace_id}, float(value), time.time())

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [
                (labels, counts.cumsum(), total[0], dict(self._exemplars.get(labels, {})))
                for labels, (counts, total) in self._series.items()
            ]
        for labels, cumulative, total, exemplars in snapshot:
            bounds = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
            buckets: list[Any] = [
                (bound, int(count), exemplars[i]) if i in exemplars else (bound, int(count))
                for i, (bound, count) in enumerate(zip(bounds, cumulative, strict=True))
            ]
            family.add_metric(list(labels), buckets, total)
        yield family


# -- worker observations (summed across worker pods) -------------------------------------------------
JOB_QUEUE_WAIT_SECONDS = BatchedHistogram(
    "asyncinfer_job_queue_wait_seconds",
    "Time a job waited on its pending list: queued_at to started_at (Redis clock), observed when it ends.",
    ["model", "priority"],
    JOB_SECONDS_BUCKETS,
)
JOB_RUN_SECONDS = BatchedHistogram(
    "asyncinfer_job_run_seconds",
    "Time from a job's start to its result (started_at to finished_at), observed by the worker that finished it.",
    ["model"],
    JOB_SECONDS_BUCKETS,
)
JOB_E2E_SECONDS = BatchedHistogram(
    "asyncinfer_job_e2e_seconds",
    "End-to-end time of a job: created_at to finished_at, retries included, observed when it ends.",
    ["model", "priority"],
    JOB_SECONDS_BUCKETS,
)
BATCH_SIZE = Histogram(
    "asyncinfer_worker_batch_size",
    "Jobs in one model call.",
    ["model"],
    buckets=BATCH_SIZE_BUCKETS,
)
MODEL_CALL_SECONDS = Histogram(
    "asyncinfer_model_call_seconds",
    "Duration of one batched model call (ONNX Runtime run).",
    ["model"],
    buckets=JOB_SECONDS_BUCKETS,
)

# -- notifier observations ----------------------------------------------------------------------------
WEBHOOK_DELIVERIES = Counter(
    "asyncinfer_notifier_deliveries",
    "Webhook delivery attempts by outcome: delivered (2xx), retried (failed, tried again later), failed (the "
    "last attempt failed: given up), lease_lost (another notifier took it over), superseded (the job was retried "
    "while it ran: recorded nowhere), errors (unexpected).",
    ["outcome"],
)

# -- API requests (per API process) ------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "asyncinfer_http_requests",
    "HTTP requests by method, route template and status class.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "asyncinfer_http_request_duration_seconds",
    "HTTP request latency by method and route template (long polls included).",
    ["method", "route"],
    buckets=HTTP_SECONDS_BUCKETS,
)


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: the lookup (label checks, a lock, a dict) costs more than
    the observation, and the hot paths make one per request or per job. Labels are bounded (above)."""
    return metric.labels(*labels)


def observe_batch(model: str, batch_size: int, call_seconds: float, trace_id: str | None = None) -> None:
    """Worker: one model call over `batch_size` jobs took `call_seconds` (`trace_id`: a job's trace, the exemplar)."""
    child(BATCH_SIZE, model).observe(batch_size)
    child(MODEL_CALL_SECONDS, model).observe(call_seconds, {"trace_id": trace_id} if trace_id else None)


def observe_ended(model: str, ended: Sequence[EndedTiming], finished_at_ms: int, trace_ids: dict[str, str] | None = None) -> None:
    """Worker: jobs it ran ended (completed, or failed for good) at `finished_at_ms`; their priority and
    created, queued and started times (Redis-clock epoch ms) come from their records. `trace_ids`: job id
    -> trace id of the sampled ones (their end-to-end times become exemplars)."""
    import numpy as np

    if not ended:
        return
    times = np.array([(t.created_at, t.queued_at, t.started_at) for t in ended], dtype=np.int64)
    created, queued, started = times[:, 0], times[:, 1], times[:, 2]
    JOB_RUN_SECONDS.observe_many((model,), np.maximum(0, finished_at_ms - started) / 1000)
    priorities = [t.priority for t in ended]
    kinds = set(priorities)
    for priority in kinds:
        mine = slice(None) if len(kinds) == 1 else np.array(priorities) == priority  # the usual batch has one
        JOB_QUEUE_WAIT_SECONDS.observe_many((model, priority), np.maximum(0, started[mine] - queued[mine]) / 1000)
        exemplars = [
            (max(0, finished_at_ms - t.created_at) / 1000, trace_ids[t.job_id])
            for t in ended
            if trace_ids and t.priority == priority and t.job_id in trace_ids
        ]
        JOB_E2E_SECONDS.observe_many((model, priority), np.maximum(0, finished_at_ms - created[mine]) / 1000, exemplars)


def observe_webhook(outcome: str) -> None:
    """Notifier: one delivery attempt ended with `outcome` (one of WEBHOOK_OUTCOMES)."""
    child(WEBHOOK_DELIVERIES, outcome).inc()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def status_class(status: int) -> str:
    """'2xx', '4xx', ...: the bounded status label."""
    return f"{status // 100}xx"


class QueueCollector(Collector):
    """Queue-wide gauges and the stats counters from one `StoreOverview`, or only `asyncinfer_redis_up 0`
    when Redis could not be read (the scrape still succeeds and the alert on missing data can fire)."""

    def __init__(self, overview: StoreOverview | None) -> None:
        self.overview = overview

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("asyncinfer_redis_up", "1 when the API could read the queue state from Redis for this scrape.")
        up.add_metric([], 0 if self.overview is None else 1)
        yield up
        if self.overview is None:
            return
        o = self.overview
        pending = GaugeMetricFamily(
            "asyncinfer_queue_pending_jobs",
            "Jobs waiting to start, per model and priority (the lists KEDA reads).",
            labels=["model", "priority"],
        )
        oldest = GaugeMetricFamily(
            "asyncinfer_queue_oldest_pending_age_seconds",
            "Age of the oldest pending job (now - its queued_at); 0 when the list is empty.",
            labels=["model", "priority"],
        )
        inflight = GaugeMetricFamily("asyncinfer_queue_inflight_jobs", "Jobs workers hold right now.", labels=["model"])
        dead = GaugeMetricFamily("asyncinfer_queue_dead_letter_jobs", "Jobs in the model's dead-letter list.", labels=["model"])
        paused = GaugeMetricFamily("asyncinfer_queue_paused", "1 while the model's queue is paused.", labels=["model"])
        workers = GaugeMetricFamily("asyncinfer_workers", "Workers with a live heartbeat.", labels=["model"])
        enqueued = CounterMetricFamily("asyncinfer_jobs_enqueued", "Jobs submitted (from the stats hash).", labels=["model"])
        finished = CounterMetricFamily(
            "asyncinfer_jobs_finished", "Jobs that ended, by outcome (from the stats hash).", labels=["model", "outcome"]
        )
        retried = CounterMetricFamily(
            "asyncinfer_jobs_retried", "Jobs put back to pending by a retry (from the stats hash).", labels=["model"]
        )
        recovered = CounterMetricFamily(
            "asyncinfer_jobs_recovered", "Jobs requeued from a dead worker (from the stats hash).", labels=["model"]
        )
        for m in o.models:
            for priority, count in m.pending.items():
                pending.add_metric([m.name, priority], count)
                oldest.add_metric([m.name, priority], m.oldest_pending_age_s.get(priority, 0.0))
            inflight.add_metric([m.name], m.inflight)
            dead.add_metric([m.name], m.dead)
            paused.add_metric([m.name], 1 if m.paused else 0)
            workers.add_metric([m.name], sum(1 for w in m.workers if w.alive))
            enqueued.add_metric([m.name], m.stats.get("enqueued", 0))
            for outcome in FINISHED_OUTCOMES:
                finished.add_metric([m.name, outcome], m.stats.get(outcome, 0))
            retried.add_metric([m.name], m.stats.get("retried", 0))
            recovered.add_metric([m.name], m.stats.get("recovered", 0))
        yield from (pending, oldest, inflight, dead, paused, workers, enqueued, finished, retried, recovered)

        memory_used = GaugeMetricFamily("asyncinfer_redis_memory_used_bytes", "Redis used_memory (INFO memory).")
        memory_used.add_metric([], o.redis_memory_used_bytes)
        memory_max = GaugeMetricFamily("asyncinfer_redis_memory_max_bytes", "Redis maxmemory; 0 = no limit set.")
        memory_max.add_metric([], o.redis_memory_max_bytes)
        notify_due = GaugeMetricFamily(
            "asyncinfer_webhook_pending_notifications", "Webhook notifications waiting to be delivered."
        )
        notify_due.add_metric([], o.notify_pending)
        notify_failed = GaugeMetricFamily(
            "asyncinfer_webhook_failed_notifications", "Webhook notifications given up (kept for resend)."
        )
        notify_failed.add_metric([], o.notify_failed)
        yield from (memory_used, memory_max, notify_due, notify_failed)


def exposition() -> bytes:
    """This process's own metrics in the Prometheus text format (a worker's or the notifier's /metrics)."""
    return generate_latest(REGISTRY)


def _openmetrics(source: Collector) -> bytes:
    body: bytes = openmetrics.generate_latest(source)  # type: ignore[no-untyped-call]
    return body


def openmetrics_exposition() -> bytes:
    """The same in the OpenMetrics format, which carries the histograms' exemplars."""
    return _openmetrics(REGISTRY)


def wants_openmetrics(accept: str | None) -> bool:
    """True when a scrape's Accept header asks for OpenMetrics (Prometheus does when exemplars are on)."""
    return bool(accept) and "application/openmetrics-text" in (accept or "")


class _Combined(Collector):
    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def render(overview: StoreOverview | None = None, *, with_queue: bool = False, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition and its content type (OpenMetrics when `accept` asks for it): this process's own
    metrics, plus (API only, `with_queue`) the queue-wide state from `overview`."""
    source: Collector = _Combined(REGISTRY, QueueCollector(overview)) if with_queue else REGISTRY
    if wants_openmetrics(accept):
        return _openmetrics(source), openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(source), CONTENT_TYPE_LATEST

"""jobqueue.metrics.BatchedHistogram exposes what prometheus-client's own Histogram would for the same
observations (values on a bucket bound, past the last bound, zero; several label sets, several
batches), and observe_ended splits a finish's jobs by priority."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from jobqueue.metrics import JOB_SECONDS_BUCKETS, BatchedHistogram, observe_ended
from jobqueue.protocol import EndedTiming

BATCHES = {
    ("iris", "high"): [[0.0, 0.01, 0.0100001, 0.7], [3600.0, 3600.5, 5e-4]],
    ("iris", "low"): [[1.0, 2.5, 2.5, 59.99]],
    ("ranker", "high"): [[0.025]],
}


def _samples(registry: CollectorRegistry) -> list[str]:
    """Exposition lines without `_created` (a Histogram has it, a collector need not) and comments."""
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if line and not line.startswith("#") and "_created" not in line)


def test_the_exposition_is_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchedHistogram("t_seconds", "doc", ["model", "priority"], JOB_SECONDS_BUCKETS, registry=ours)
    reference = Histogram("t_seconds", "doc", ["model", "priority"], buckets=JOB_SECONDS_BUCKETS, registry=theirs)
    for labels, batches in BATCHES.items():
        for batch in batches:
            batched.observe_many(labels, np.array(batch))
            for value in batch:
                reference.labels(*labels).observe(value)
    batched.observe_many(("iris", "normal"), np.array([]))  # an empty batch adds no series
    assert _samples(ours) == _samples(theirs)
    # 0.0, 5e-4 and 0.01 itself are <= 0.01 (0.0100001 is not)
    assert 't_seconds_bucket{le="0.01",model="iris",priority="high"} 3.0' in _samples(ours)


def test_observe_ended_splits_by_priority() -> None:
    from jobqueue import metrics

    def count(metric: BatchedHistogram, labels: tuple[str, ...]) -> int:
        series = metric._series.get(labels)
        return 0 if series is None else int(series[0].sum())

    before = {p: count(metrics.JOB_E2E_SECONDS, ("split-test", p)) for p in ("high", "low")}
    ended = [
        EndedTiming("high", 1_000, 1_000, 1_500),
        EndedTiming("low", 0, 100, 2_000),
        EndedTiming("high", 1_900, 1_900, 1_950),
    ]
    observe_ended("split-test", ended, 2_000)
    assert count(metrics.JOB_E2E_SECONDS, ("split-test", "high")) - before["high"] == 2
    assert count(metrics.JOB_E2E_SECONDS, ("split-test", "low")) - before["low"] == 1
    assert count(metrics.JOB_RUN_SECONDS, ("split-test",)) == 3
    _, total = metrics.JOB_QUEUE_WAIT_SECONDS._series[("split-test", "low")]
    assert total[0] == 1.9  # started 2,000 - queued 100 ms

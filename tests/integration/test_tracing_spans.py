"""Tracing in-process (jobqueue/tracing.py), with an in-memory span exporter: the API's store on a real
Redis and a real worker loop. One trace per job: PRODUCER at submit, the run under it (queue wait,
model call, result write), retries in the same trace; one CONSUMER span per batch with a link per job;
exemplars carry the traces. Off, nothing is stored and opentelemetry is never imported."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
import redis.asyncio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from jobqueue import logs, metrics, tracing
from jobqueue.protocol import JobStore, NewJob
from jobqueue.settings import Settings
from jobqueue.states import JobStatus
from tests.conftest import ROOT
from tests.support.queue import SyncJobs
from tests.support.samples import ROW
from worker.loop import Worker


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()


def submit(settings: Settings, single: NewJob, bulk: list[NewJob], traceparent: str | None = None) -> str:
    """Submit `single` and the `bulk` jobs inside one request span (a child of the client's `traceparent`),
    as the API does; the request's trace id."""

    async def go() -> str:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        store = JobStore(client, settings)
        assert tracing.TRACER is not None
        parent = tracing.parent_context(traceparent)
        try:
            with tracing.TRACER.start_as_current_span("POST /predict", context=parent, kind=SpanKind.SERVER) as request:
                await store.enqueue(single)
                await store.enqueue_many(bulk)
            return f"{request.get_span_context().trace_id:032x}"
        finally:
            await store.aclose()
            await client.aclose()

    return asyncio.run(go())


def new_job(data: object = None) -> NewJob:
    import uuid

    return NewJob(job_id=str(uuid.uuid4()), model="iris", payload=orjson.dumps({"data": data or [ROW]}).decode())


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind, name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind and s.name == name]


def message_id(span: ReadableSpan) -> str:
    return str((span.attributes or {})["messaging.message.id"])


def test_each_job_is_one_trace_from_submit_to_result_and_a_batch_links_them(exporter, settings, redis_client):
    single, bulk = new_job(), [new_job() for _ in range(3)]
    trace_id = submit(settings, single, bulk)
    Worker(settings).run(burst=True)
    spans = exporter.get_finished_spans()

    [request] = [s for s in spans if s.name == "POST /predict"]
    producers = {message_id(s): s for s in by_kind(spans, SpanKind.PRODUCER, "send iris")}
    assert set(producers) == {job.job_id for job in [single, *bulk]}, "one PRODUCER span per job, bulk too"
    for job_id, producer in producers.items():
        assert producer.parent is not None and producer.parent.span_id == request.context.span_id
        assert f"{producer.context.trace_id:032x}" == trace_id
        assert producer.attributes["messaging.system"] == "asyncinfer"
        assert producer.attributes["messaging.operation.type"] == "send"
        assert producer.attributes["messaging.destination.name"] == "iris"
        stored = redis_client.hget(f"asyncinfer:job:{job_id}", "traceparent")
        assert stored == tracing.traceparent_of(producer.context), "the record holds the PRODUCER span's context"

    consumers = by_kind(spans, SpanKind.CONSUMER, "process iris")
    runs = {message_id(s): s for s in consumers if s.parent is not None}
    assert set(runs) == set(producers)
    for job_id, run in runs.items():
        assert run.parent.span_id == producers[job_id].context.span_id, "the run is a child of its submit"
        assert run.context.trace_id == producers[job_id].context.trace_id
        assert run.attributes["messaging.operation.type"] == "process"
        assert run.attributes["asyncinfer.job.outcome"] == "completed"
        children = sorted(s.name for s in spans if s.parent is not None and s.parent.span_id == run.context.span_id)
        assert children == ["model call", "queue wait", "result write"]

    batches = [s for s in consumers if s.parent is None]
    assert batches, "a CONSUMER span per batch"
    linked = {}
    for batch in batches:
        assert batch.attributes["messaging.batch.message_count"] == len(batch.links)
        for link in batch.links:
            linked[link.attributes["messaging.message.id"]] = link.context.span_id
    assert linked == {job_id: producer.context.span_id for job_id, producer in producers.items()}, "one link per job"

    # Exemplars: the worker's end-to-end and model-call histograms point at these traces.
    text = metrics.openmetrics_exposition().decode()
    exemplar_lines = [line for line in text.splitlines() if f'trace_id="{trace_id}"' in line]
    assert any(line.startswith("asyncinfer_job_e2e_seconds_bucket") for line in exemplar_lines), text[-2000:]
    assert any(line.startswith("asyncinfer_model_call_seconds_bucket") for line in exemplar_lines)
    assert f'trace_id="{trace_id}"' not in metrics.exposition().decode(), "the Prometheus text format has no exemplars"


def test_a_retried_job_runs_again_in_its_own_trace(exporter, settings, redis_client):
    job = new_job(data=[[1.0, 2.0]])  # the wrong feature count: the run fails
    submit(settings, job, [])
    Worker(settings).run(burst=True)
    queue = SyncJobs(redis_client, settings)
    assert queue.get(job.job_id).status is JobStatus.FAILED
    queue.retry(job.job_id, "token-1")
    Worker(settings).run(burst=True)

    spans = exporter.get_finished_spans()
    [producer] = by_kind(spans, SpanKind.PRODUCER, "send iris")
    runs = [s for s in by_kind(spans, SpanKind.CONSUMER, "process iris") if s.parent is not None]
    assert len(runs) == 2
    assert all(run.parent.span_id == producer.context.span_id for run in runs), "both runs join the submit's trace"
    assert all(run.attributes["asyncinfer.job.outcome"] == "failed" and not run.status.is_ok for run in runs)


def test_a_job_whose_client_did_not_sample_records_no_span_anywhere(exporter, settings, redis_client):
    unsampled = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-00"  # the client decided: not sampled
    job = new_job()
    submit(settings, job, [], traceparent=unsampled)
    Worker(settings).run(burst=True)
    assert redis_client.hget(f"asyncinfer:job:{job.job_id}", "traceparent").endswith("-00"), "the decision travels"
    spans = exporter.get_finished_spans()
    assert not [s for s in spans if s.parent is not None], "no submit, run, wait, call or write span is recorded"
    assert "ab" * 16 not in metrics.openmetrics_exposition().decode(), "nor an exemplar"


def test_json_logs_carry_the_ids_of_the_job_and_the_current_span(exporter, capsys):
    record = logging.LogRecord("asyncinfer.worker", logging.WARNING, __file__, 1, "job %s: %s", ("j1", "boom"), None)
    record.job_id, record.model = "j1", "iris"
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "job j1: boom" and line["level"] == "WARNING"
    assert line["job_id"] == "j1" and line["model"] == "iris" and line["time"].endswith("Z")
    assert "trace_id" not in line, "no span, no trace id"

    assert tracing.TRACER is not None
    with tracing.TRACER.start_as_current_span("request") as span:
        inside = json.loads(logs.JsonFormatter().format(record))
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert inside["span_id"] == f"{span.get_span_context().span_id:016x}"


# What tracing imports only when it is on. (FastAPI and redis-py import opentelemetry's API, and
# redis-py its metrics SDK when installed, for their own telemetry: not ours to keep out.)
TRACING_ONLY_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter",
    "opentelemetry.instrumentation",
    "opentelemetry.proto",
)


def test_off_nothing_is_stored_and_the_tracing_sdk_is_never_imported(settings, redis_client):
    assert tracing.TRACER is None
    job = new_job()

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        store = JobStore(client, settings)
        try:
            await store.enqueue(job)
        finally:
            await store.aclose()
            await client.aclose()

    asyncio.run(go())
    Worker(settings).run(burst=True)
    assert redis_client.hget(f"asyncinfer:job:{job.job_id}", "traceparent") is None
    assert redis_client.hget(f"asyncinfer:job:{job.job_id}", "status") == "completed"

    # A fresh process of each kind, started as its console script starts it, with no OTEL_* set.
    probe = (
        "import sys\n"
        "from jobqueue.settings import Settings\n"
        "from api.app import create_app\n"
        f"create_app(Settings(model_path={str(ROOT / 'models' / 'iris.onnx')!r}))\n"
        "import worker.main, worker.loop, notifier.main, jobqueue.logs\n"
        f"print(sorted(m for m in sys.modules if m.startswith({TRACING_ONLY_MODULES!r})))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    with_tracing = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        cwd=ROOT,
        check=True,
    )
    assert "opentelemetry.sdk.trace" in with_tracing.stdout, "the probe sees the SDK when tracing is on"


def test_a_worker_process_loads_the_sdk_only_when_tracing_is_on(settings):
    # redis-py imports the SDK's metrics whenever it is installed; the worker keeps it out (cold start).
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('sdk' if 'opentelemetry.sdk.metrics' in sys.modules else 'none', flush=True))\n"
        "sys.argv = ['asyncinfer-worker', '--burst']\n"
        "from worker.main import run\n"
        "run()\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    env.update(REDIS_URL=settings.redis_url, MODEL_PATH=settings.model_path)
    off = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    on = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        cwd=ROOT,
        timeout=120,
    )
    assert (off.stdout.split()[-1:], on.stdout.split()[-1:]) == (["none"], ["sdk"]), off.stderr[-2000:] + on.stderr[-2000:]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # no exporter named: off
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_only_the_standard_variables_turn_it_on(environ, on):
    assert tracing.wanted(environ) is on

"""OpenTelemetry tracing across the queue: API -> Redis -> worker -> webhook, off unless OTEL_* asks.

Configured only by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
OTEL_TRACES_SAMPLER, ...). Unset, `TRACER` stays None and nothing here imports opentelemetry: the hot
paths test `TRACER is None` and go on (a worker's cold start and a submit's cost are unchanged).

One job, one trace: the API stores the W3C `traceparent` of its PRODUCER span (a child of the client's
`traceparent`) in the job's record; every run of the job (retries and crash re-runs included) is a
CONSUMER span under it, with the queue wait, the model call and the result write as its children; a
batch is a CONSUMER span of its own with one link per job (the messaging conventions' way for batches);
the notifier's delivery is a CLIENT span under it, and the webhook carries its `traceparent`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

    from jobqueue.protocol import ClaimedJob, NewJob

TRACER: Tracer | None = None  # None: tracing is off (the default)
PROVIDER: TracerProvider | None = None
MESSAGING_SYSTEM = "asyncinfer"  # a Redis-list queue of our own: not one of the conventions' named systems
TRACEPARENT_LENGTH = 55  # version 00: "00-<32 hex>-<16 hex>-<2 hex>"
ENABLING_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")


def wanted(environ: Any = os.environ) -> bool:
    """True when the standard variables turn tracing on: an OTLP endpoint or an exporter named (not
    "none"), and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENABLING_VARIABLES)


def keep_sdk_out_unless_wanted() -> None:
    """With tracing off, keep the OpenTelemetry SDK unimported in this process (call before anything
    imports redis). redis-py imports the SDK's metrics at import time whenever it is installed (the tracing
    extra puts it in both images), for telemetry of its own that asyncinfer never turns on: 170M of the
    756M instructions `import redis` took (callgrind), on every worker's cold start. redis-py takes the
    ImportError as "no SDK"; FastAPI's import of the opentelemetry API is not affected."""
    if not wanted():
        sys.modules.setdefault("opentelemetry.sdk", None)  # type: ignore[arg-type]


def setup(service_name: str, headers_file: str = "") -> bool:
    """Turn tracing on from the environment when it asks for it (once per process); True when on.
    OTEL_SERVICE_NAME wins over `service_name`; the sampler is the SDK's (OTEL_TRACES_SAMPLER/_ARG);
    `headers_file` (TRACING_HEADERS_FILE, a mounted Secret) holds the exporter's headers."""
    if TRACER is not None:
        return True
    if not wanted():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = None
        if headers_file:
            from opentelemetry.util.re import parse_env_headers

            headers = parse_env_headers(Path(headers_file).read_text().strip(), liberal=True)
        exporter = OTLPSpanExporter(headers=headers)  # endpoint, headers, timeout otherwise from OTEL_EXPORTER_OTLP_*
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return True


def install(provider: TracerProvider) -> None:
    """Trace through `provider` in this process (setup, or a test's in-memory exporter)."""
    global TRACER, PROVIDER
    from opentelemetry import trace

    trace.set_tracer_provider(provider)  # the FastAPI instrumentation takes the global one
    PROVIDER = provider
    TRACER = provider.get_tracer("asyncinfer")


def uninstall() -> None:
    """Tracing off again (tests)."""
    global TRACER, PROVIDER
    TRACER, PROVIDER = None, None


def flush() -> None:
    """Export what is buffered now (before a process exits on its own terms)."""
    if PROVIDER is not None:
        PROVIDER.force_flush()


# -- W3C trace context ------------------------------------------------------------------------------


def traceparent_of(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def span_context_of(traceparent: str | None) -> SpanContext | None:
    """A stored `traceparent` as a remote span context; None when there is none or it is malformed."""
    if not traceparent:
        return None
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = get_current_span(TraceContextTextMapPropagator().extract({"traceparent": traceparent})).get_span_context()
    return context if context.is_valid else None


def parent_context(traceparent: str | None) -> Context | None:
    """A stored `traceparent` as the parent of a new span; None: the span starts a trace of its own."""
    span_context = span_context_of(traceparent)
    if span_context is None:
        return None
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    return set_span_in_context(NonRecordingSpan(span_context))


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the span this code runs in, as hex; None when tracing is off or there is none."""
    if TRACER is None:
        return None
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    return (f"{context.trace_id:032x}", f"{context.span_id:016x}") if context.is_valid else None


def messaging_attributes(model: str, operation: str, **extra: Any) -> dict[str, Any]:
    """The OpenTelemetry messaging conventions' attributes for a queue operation on `model`'s queue."""
    kind = {"send": "send", "process": "process", "receive": "receive"}[operation]
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.destination.name": model,
        **{key: value for key, value in extra.items() if value is not None},
    }


# -- API: the hot path's SERVER span, one PRODUCER span per submitted job ------------------------


@contextmanager
def server_span(method: str, route: str, traceparent: str | None) -> Iterator[Span]:
    """The SERVER span of a request the API's hot path answers (FastAPI's instrumentation makes the same
    for every other route): a child of the client's `traceparent`, current while the request runs."""
    assert TRACER is not None
    from opentelemetry.trace import SpanKind, use_span

    attributes = {"http.request.method": method, "http.route": route}
    span = TRACER.start_span(
        f"{method} {route}", context=parent_context(traceparent), kind=SpanKind.SERVER, attributes=attributes
    )
    with use_span(span, end_on_exit=True):
        yield span


def end_server_span(span: Span, status: int) -> None:
    from opentelemetry.trace import StatusCode

    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


# -- API: one PRODUCER span per submitted job -------------------------------------------------------


class ProducerSpans:
    """The PRODUCER spans of one submit (one job) or bulk submit (one per job), children of the
    request's span; `jobs` are the jobs with their span's `traceparent` to store."""

    def __init__(self, tracer: Tracer, jobs: Sequence[NewJob]) -> None:
        from opentelemetry.trace import SpanKind

        self.spans: list[Span] = []
        self.jobs: list[NewJob] = []
        for job in jobs:
            attributes = messaging_attributes(
                job.model, "send", **{"messaging.message.id": job.job_id, "asyncinfer.job.priority": job.priority}
            )
            span = tracer.start_span(f"send {job.model}", kind=SpanKind.PRODUCER, attributes=attributes)
            self.spans.append(span)
            self.jobs.append(replace(job, traceparent=traceparent_of(span.get_span_context())))

    def end(self, outcomes: Sequence[Any]) -> None:
        """End each span with its job's outcome: an `Enqueued`, or the refusal (an exception object)."""
        from opentelemetry.trace import StatusCode

        for span, outcome in zip(self.spans, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                span.set_status(StatusCode.ERROR, f"{type(outcome).__name__}: {outcome}")
            elif not getattr(outcome, "created", True):
                span.set_attribute("asyncinfer.job.replayed", True)  # an idempotent replay: the earlier job's trace
            span.end()

    def fail(self, exc: BaseException) -> None:
        self.end([exc] * len(self.spans))


# -- worker: a batch span with a link per job, a span per job in its own trace ----------------------


@dataclass
class JobTiming:
    """What the worker saw of one job in a batch (ns, this process's clock)."""

    job: ClaimedJob
    claimed_ns: int
    calls: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, batch size) of its model calls
    outcome: str = ""
    error: str = ""


class BatchTrace:
    """Collects one batch's timings while it runs and emits its spans once its results are written."""

    def __init__(self, model: str, worker_id: str, jobs: Sequence[ClaimedJob]) -> None:
        self.model, self.worker_id = model, worker_id
        now = time.time_ns()
        self.started_ns = now
        self.jobs = {job.job_id: JobTiming(job, now) for job in jobs}
        self.contexts = {job.job_id: span_context_of(job.traceparent) for job in jobs}  # parsed once

    def model_call(self, job_ids: Sequence[str], start_ns: int, end_ns: int) -> None:
        for job_id in job_ids:
            timing = self.jobs.get(job_id)
            if timing is not None:
                timing.calls.append((start_ns, end_ns, len(job_ids)))

    def trace_ids(self) -> dict[str, str]:
        """Job id -> trace id (hex) of the batch's jobs whose trace is sampled: the exemplars' traces."""
        return {
            job_id: f"{context.trace_id:032x}"
            for job_id, context in self.contexts.items()
            if context is not None and context.trace_flags.sampled
        }

    def exemplar_trace_id(self, job_ids: Sequence[str]) -> str | None:
        """The trace of one of `job_ids` that is sampled (a model call's exemplar), or None."""
        traces = self.trace_ids()
        return next((traces[job_id] for job_id in job_ids if job_id in traces), None)

    def emit(self, outcomes: Sequence[tuple[str, Any, str, str]], write_start_ns: int, write_end_ns: int) -> None:
        """The result write (`finish`) ran from `write_start_ns` to `write_end_ns`: emit every span."""
        tracer = TRACER
        if tracer is None:
            return
        from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, StatusCode, set_span_in_context

        for job_id, outcome, payload, *_ in outcomes:
            timing = self.jobs.get(job_id)
            if timing is not None:
                timing.outcome = str(outcome)
                timing.error = payload if str(outcome) not in ("completed", "release") else ""
        links = [
            Link(context, {"messaging.message.id": job_id}) for job_id, context in self.contexts.items() if context is not None
        ]
        batch = tracer.start_span(
            f"process {self.model}",
            context=None,
            kind=SpanKind.CONSUMER,
            links=links,
            start_time=self.started_ns,
            attributes=messaging_attributes(
                self.model, "process", **{"messaging.batch.message_count": len(self.jobs), "messaging.client.id": self.worker_id}
            ),
        )
        batch_link = Link(batch.get_span_context(), {"asyncinfer.link": "batch"})
        follows_parent = _parent_based()
        for timing in self.jobs.values():
            job = timing.job
            if follows_parent and (context := self.contexts[job.job_id]) is not None and not context.trace_flags.sampled:
                continue  # its submit was not sampled: none of its spans would be recorded (most jobs at 10%)
            attributes = messaging_attributes(
                self.model,
                "process",
                **{
                    "messaging.message.id": job.job_id,
                    "messaging.client.id": self.worker_id,
                    "asyncinfer.job.attempt": job.attempts,
                    "asyncinfer.job.outcome": timing.outcome or None,
                },
            )
            context = self.contexts[job.job_id]
            span = tracer.start_span(
                f"process {self.model}",
                context=None if context is None else set_span_in_context(NonRecordingSpan(context)),
                kind=SpanKind.CONSUMER,
                links=[batch_link],
                start_time=timing.claimed_ns,
                attributes=attributes,
            )
            if timing.outcome in ("failed", "retry"):
                span.set_status(StatusCode.ERROR, timing.error[:200])
            inside = set_span_in_context(span)
            if job.queued_at_ms:  # queued_at is Redis's clock: the wait ends at this worker's claim
                wait_start = min(job.queued_at_ms * 1_000_000, timing.claimed_ns)
                tracer.start_span("queue wait", context=inside, start_time=wait_start).end(end_time=timing.claimed_ns)
            for start, end, size in timing.calls:
                call = tracer.start_span(
                    "model call", context=inside, start_time=start, attributes={"asyncinfer.batch.size": size}
                )
                call.end(end_time=end)
            tracer.start_span("result write", context=inside, start_time=write_start_ns).end(end_time=write_end_ns)
            span.end(end_time=write_end_ns)
        batch.end(end_time=write_end_ns)


def _parent_based() -> bool:
    """True when the sampler follows the parent's decision (the SDK's default, and parentbased_*)."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    return isinstance(getattr(PROVIDER, "sampler", None), ParentBased)


# -- notifier: the delivery span and the webhook's traceparent ---------------------------------------


def delivery_span(traceparent: str | None, model: str | None, job_id: str, url: str) -> tuple[Span | None, str | None]:
    """The notifier's CLIENT span for one webhook POST (None when tracing is off) and the `traceparent`
    the webhook carries: the span's, or (tracing off here) the job's stored one as it is."""
    tracer = TRACER
    if tracer is None:
        return None, traceparent or None
    from opentelemetry.trace import SpanKind

    attributes = messaging_attributes(
        model or "", "send", **{"messaging.message.id": job_id, "http.request.method": "POST", "url.full": url}
    )
    span = tracer.start_span("webhook POST", context=parent_context(traceparent), kind=SpanKind.CLIENT, attributes=attributes)
    return span, traceparent_of(span.get_span_context())


def end_delivery_span(span: Span | None, status: int | None, error: str) -> None:
    if span is None:
        return
    from opentelemetry.trace import StatusCode

    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error:
        span.set_status(StatusCode.ERROR, error[:200])
    span.end()

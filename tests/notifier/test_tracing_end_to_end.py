"""Tracing through real processes: the API, a worker and the notifier export OTLP/HTTP to a real receiver
(tests/support/otlp.py decodes the protobuf they POST). One trace runs from the client's `traceparent`
through the submit, the queue wait, the model call and the result write to the signed webhook, which
carries it on; a batch span links each job; JSON logs parse and carry the ids; the worker's /metrics in
OpenMetrics has exemplars pointing at the traces."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from stack import free_port

from tests.conftest import Processes, service_env
from tests.notifier.conftest import Notifiers
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.samples import ROW
from tests.support.waiting import wait_until


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


API_KEY = "k-" + secrets.token_hex(8)


def tracing_env(collector: OtlpReceiver, headers_file: Path) -> dict[str, str]:
    """Every process exports to `collector` within 0.1 s of a span's end (the batch processor's default
    waits 5 s), with the headers in `headers_file` (TRACING_HEADERS_FILE, as a mounted Secret), JSON logs."""
    headers_file.write_text(f"x-api-key={API_KEY}\n")
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "TRACING_HEADERS_FILE": str(headers_file),
        "LOG_FORMAT": "json",
    }


def json_lines(path: Path) -> list[dict]:
    """Every line of a process's log, each of which must be one JSON object."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path.name} is empty"
    return [json.loads(line) for line in lines]


def test_one_trace_from_the_clients_traceparent_to_the_signed_webhook(
    redis_server, redis_client, processes: Processes, notifiers: Notifiers, make_receiver, collector, tmp_path
):
    receiver = make_receiver()
    health_port = free_port()
    traced = tracing_env(collector, tmp_path / "otlp-headers")
    env = service_env(redis_server.url, WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE="true", **traced)
    _, base = processes.api(env)
    notifiers.start(**traced)
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    with httpx.Client(base_url=base, timeout=10) as api:
        bulk = api.post("/predict/batch", json={"items": [{"data": [ROW]} for _ in range(3)]}).json()["items"]
        bulk_ids = [item["job_id"] for item in bulk]
        answer = api.post(
            "/predict",
            json={"data": [ROW], "callback_url": receiver.url},
            headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
        )
        job_id = answer.json()["job_id"]
        processes.worker(dict(env, WORKER_HEALTH_PORT=str(health_port)))  # started after the submits: one batch
        wait_until(lambda: receiver.accepted, 60, "the webhook")
        assert api.get(f"/job/{bulk_ids[-1]}?wait=10").json()["status"] == "completed"

    [request] = receiver.requests
    assert request.verified
    webhook_traceparent = request.headers["traceparent"]
    assert webhook_traceparent.split("-")[1] == trace_id, "the webhook carries the job's trace on"

    needed = {"send iris", "process iris", "queue wait", "model call", "result write", "webhook POST"}
    wait_until(lambda: needed <= {s.name for s in collector.snapshot() if s.trace_id == trace_id}, 30, "the trace's spans")
    spans = [s for s in collector.snapshot() if s.trace_id == trace_id]

    def one(name: str, kind: str) -> ReceivedSpan:
        [span] = [s for s in spans if s.name == name and s.kind == kind]
        return span

    server = one("POST /predict", "server")
    producer = one("send iris", "producer")
    run = one("process iris", "consumer")
    webhook = one("webhook POST", "client")
    assert server.service == producer.service == "asyncinfer-api"
    assert server.parent_id == client_span, "the API's span continues the client's traceparent"
    assert producer.parent_id == server.span_id
    assert producer.attributes["messaging.message.id"] == job_id
    assert producer.attributes["messaging.system"] == "asyncinfer"
    assert run.service == "asyncinfer-worker" and run.parent_id == producer.span_id
    assert run.attributes["messaging.operation.type"] == "process" and run.attributes["asyncinfer.job.attempt"] == 1
    for child in ("queue wait", "model call", "result write"):
        assert one(child, "internal").parent_id == run.span_id, child
    assert webhook.service == "asyncinfer-notifier" and webhook.parent_id == producer.span_id
    assert webhook.attributes["http.response.status_code"] == 200
    assert webhook_traceparent.split("-")[2] == webhook.span_id, "the receiver's handling is a child of the delivery"
    assert collector.headers and all(h.get("x-api-key") == API_KEY for h in collector.headers), "headers from the file"

    # The batch: a CONSUMER span of its own, with one link per job it ran, each to that job's submit.
    producers = {s.attributes["messaging.message.id"]: s for s in collector.snapshot() if s.kind == "producer"}
    assert set(bulk_ids) <= set(producers), "a PRODUCER span for each bulk item"
    batches = [s for s in collector.snapshot() if s.kind == "consumer" and not s.parent_id]
    links = {attrs["messaging.message.id"]: (t, sid) for batch in batches for t, sid, attrs in batch.links}
    for linked_id in [*bulk_ids, job_id]:
        expected = producers[linked_id]
        assert links[linked_id] == (expected.trace_id, expected.span_id), linked_id
    assert all(batch.attributes["messaging.batch.message_count"] == len(batch.links) for batch in batches)

    # Exemplars: the worker's histograms in OpenMetrics name traces the collector holds.
    scrape = urllib.request.Request(
        f"http://127.0.0.1:{health_port}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(scrape, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = response.read().decode()
    traces = {s.trace_id for s in collector.snapshot()}
    for histogram in ("asyncinfer_job_e2e_seconds_bucket", "asyncinfer_model_call_seconds_bucket"):
        exemplars = [
            line.split('trace_id="')[1][:32] for line in text.splitlines() if line.startswith(histogram) and "# {" in line
        ]
        assert exemplars and set(exemplars) <= traces, (histogram, exemplars)

    # JSON logs: every line of every process parses; the notifier's delivery line names the job and trace.
    logs = {path.name: json_lines(path) for path in tmp_path.glob("*.log")}
    assert {"time", "level", "message"} <= set(logs["api-0.log"][0])
    delivered = [line for line in logs["notifier-0.log"] if line.get("job_id") == job_id]
    assert delivered and delivered[0]["trace_id"] == trace_id and delivered[0]["model"] == "iris"

"""The job view: the one JSON shape a job has everywhere (HTTP answers, streams, webhooks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from jobqueue.protocol import JobRecord, epoch_ms_to_iso

# s3://bucket/key of a result object -> a presigned GET; set once per process that has an object store
# (the API, the notifier), so every place that renders a view (HTTP, streams, webhooks) signs alike.
_result_url_signer: Callable[[str], str] | None = None


def sign_result_urls_with(signer: Callable[[str], str] | None) -> None:
    global _result_url_signer
    _result_url_signer = signer


def job_view(record: JobRecord) -> dict[str, Any]:
    """What clients see of a job: never its owner, input or callback URL."""
    notification = None
    if record.notify_state is not None:
        notification = {
            "state": record.notify_state,
            "attempts": record.notify_attempts,
            "last_status": record.notify_last_status,
            "last_error": record.notify_last_error,
        }
    view = {
        "job_id": record.job_id,
        "status": record.status,
        "model": record.model,
        "model_version": record.model_version,
        "priority": record.priority,
        # the stored JSON goes out as it is: parsing it only to serialise it again costs every read
        "result": orjson.Fragment(record.result) if record.result is not None else None,
        "error": record.error,
        "attempts": record.attempts,
        "created_at": epoch_ms_to_iso(record.created_at),
        "started_at": epoch_ms_to_iso(record.started_at),
        "finished_at": epoch_ms_to_iso(record.finished_at),
        "notification": notification,
    }
    if record.result_object is not None:  # a result in the object store: `result` is null, fetch it from here
        view["result_url"] = _result_url_signer(record.result_object) if _result_url_signer else None
    return view

"""The job view: the one JSON shape a job has everywhere (HTTP answers, streams, webhooks)."""

from __future__ import annotations

from typing import Any

import orjson

from jobqueue.protocol import JobRecord, epoch_ms_to_iso


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
    return {
        "job_id": record.job_id,
        "status": record.status,
        "model": record.model,
        "model_version": record.model_version,
        "priority": record.priority,
        "result": orjson.loads(record.result) if record.result is not None else None,
        "error": record.error,
        "attempts": record.attempts,
        "created_at": epoch_ms_to_iso(record.created_at),
        "started_at": epoch_ms_to_iso(record.started_at),
        "finished_at": epoch_ms_to_iso(record.finished_at),
        "notification": notification,
    }

"""Log set-up shared by every process: LOG_LEVEL, and LOG_FORMAT text (the default) or json.

JSON lines carry time, level, logger, message and, where known, job_id, model, trace_id and span_id: a
log call names a job's ids with `extra={"job_id": ..., "model": ...}`; the trace ids come from `extra`
or, with tracing on, from the span the code runs in (jobqueue/tracing.py).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

import orjson

from jobqueue import tracing

if TYPE_CHECKING:  # the settings (pydantic) load when they are read, not with the log set-up
    from jobqueue.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ID_FIELDS = ("job_id", "model", "trace_id", "span_id")


def job_ids(job_id: str, model: str | None, traceparent: str = "") -> dict[str, str]:
    """`extra` for a log line about one job: its id, model and, from its stored traceparent, its trace."""
    ids = {"job_id": job_id, "model": model or ""}
    parts = traceparent.split("-")
    if len(parts) == 4:
        ids["trace_id"], ids["span_id"] = parts[1], parts[2]
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        seconds, millis = divmod(int(record.created * 1000), 1000)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if "trace_id" not in entry:
            ids = tracing.current_ids()
            if ids is not None:
                entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(settings: Settings) -> None:
    """Root logging to stderr at LOG_LEVEL, in LOG_FORMAT."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])

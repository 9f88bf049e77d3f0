"""What the service returns, as typed values: a job's view and one input's outcome in `map`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asyncinfer_client.errors import AsyncInferError, JobCanceled, JobError, JobExpired, JobFailed

TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled", "expired"})


@dataclass(frozen=True)
class JobView:
    """One job as the service shows it (`GET /job/{id}`). `raw` keeps every field, also ones added later."""

    job_id: str
    status: str
    model: str | None = None
    model_version: str | None = None
    priority: str | None = None
    result: Any = None
    error: str | None = None
    attempts: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    notification: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobView:
        """Parse a job view; fields an older service does not send stay None."""
        return cls(
            job_id=str(body["job_id"]),
            status=str(body["status"]),
            model=body.get("model"),
            model_version=body.get("model_version"),
            priority=body.get("priority"),
            result=body.get("result"),
            error=body.get("error"),
            attempts=int(body.get("attempts") or 0),
            created_at=body.get("created_at"),
            started_at=body.get("started_at"),
            finished_at=body.get("finished_at"),
            notification=body.get("notification"),
            raw=dict(body),
        )

    @property
    def terminal(self) -> bool:
        """True once the job has ended (completed, failed, canceled or expired): it changes no more."""
        return self.status in TERMINAL_STATUSES

    def error_for_outcome(self) -> JobError | None:
        """The typed error for a job that ended without a result; None when completed or not ended."""
        if self.status == "failed":
            return JobFailed(self)
        if self.status == "canceled":
            return JobCanceled(self)
        if self.status == "expired":
            return JobExpired(self)
        return None


@dataclass(frozen=True)
class Outcome:
    """What became of one input of `map` / `submit_many`: `index` is its position in the inputs.

    `status` is the job's final status, or `rejected` (the service refused the item; `job_id` is None)
    or `timeout` (it did not end in time). `error` is set whenever `status` is not `completed`.
    """

    index: int
    job_id: str | None
    status: str
    result: Any = None
    error: AsyncInferError | None = None
    view: JobView | None = field(default=None, repr=False, compare=False)
    replayed: bool = False  # its idempotency key found a job an earlier call had made (`map(idempotency_keys=...)`)

    @property
    def ok(self) -> bool:
        """True when the job completed and `result` holds its result."""
        return self.status == "completed"

    def unwrap(self) -> Any:
        """The result, or raise the typed error (JobFailed, JobCanceled, JobExpired, Timeout, APIError)."""
        if self.error is not None:
            raise self.error
        return self.result

    @classmethod
    def from_view(cls, index: int, view: JobView, replayed: bool = False) -> Outcome:
        """The outcome of an ended job."""
        return cls(index, view.job_id, view.status, view.result, view.error_for_outcome(), view, replayed)

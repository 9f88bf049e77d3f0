"""Exceptions the protocol raises for the scripts' negative or refusing replies."""


class JobQueueError(Exception):
    """Base of every protocol error."""


class QueueFull(JobQueueError):
    """The model's pending list at that priority is at MAX_QUEUE_LENGTH."""


class RateLimited(JobQueueError):
    """The principal's submit rate is above RATE_LIMIT_PER_SECOND."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"submit rate above RATE_LIMIT_PER_SECOND; retry in {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class TooManyUnfinished(JobQueueError):
    """The principal has MAX_PENDING_PER_PRINCIPAL unfinished jobs."""


class IdempotencyConflict(JobQueueError):
    """The idempotency key was used before with another request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Idempotency-Key was used for job {job_id} with a different request")
        self.job_id = job_id


class JobNotFound(JobQueueError):
    """No record for that id (never existed, its TTL ran out, or it is another principal's)."""


class WrongState(JobQueueError):
    """The job exists but its state does not allow the operation."""

    def __init__(self, status: str, operation: str) -> None:
        super().__init__(f"job is {status}; {operation} needs another state")
        self.status = status
        self.operation = operation


class ShardBusy(JobQueueError):
    """A Cluster slot is half-way through a move (TRYAGAIN, ASK) or the Cluster is down for it
    (CLUSTERDOWN): Redis ran nothing; the job may go to another shard, or be submitted again shortly."""

"""Exceptions the protocol raises for the scripts' negative or refusing replies."""


class JobQueueError(Exception):
    """Base of every protocol error."""


class QueueFull(JobQueueError):
    """The pending list is at MAX_QUEUE_LENGTH."""


class JobNotFound(JobQueueError):
    """No record for that id (never existed, or its TTL ran out)."""


class WrongState(JobQueueError):
    """The job exists but its state does not allow the operation."""

    def __init__(self, status: str, operation: str) -> None:
        super().__init__(f"job is {status}; {operation} needs another state")
        self.status = status
        self.operation = operation

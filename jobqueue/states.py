"""Job states and the codes the Lua scripts return; only scripts change a job's state."""

from enum import IntEnum, StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.PENDING, JobStatus.PROCESSING)


class ScriptCode(IntEnum):
    """First element of the enqueue, cancel and retry scripts' replies."""

    QUEUE_FULL = -2
    NOT_FOUND = -1
    WRONG_STATE = 0
    OK = 1
    REPLAYED = 2


class Outcome(StrEnum):
    """What a worker tells `finish` about one job it held."""

    COMPLETED = "completed"
    FAILED = "failed"  # permanent: retrying cannot help (input does not fit the model)
    RETRY = "retry"  # the model raised: try again until MAX_ATTEMPTS
    RELEASE = "release"  # never ran (drain timed out): give it back, attempt not counted

"""Job states, priorities and the codes the Lua scripts return; only scripts change a job's state."""

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


class Priority(StrEnum):
    """Each priority is its own pending list; workers take `high` first without starving the others."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class ScriptCode(IntEnum):
    """The codes scripts answer with (first element of the reply where a script has one)."""

    IDEMPOTENCY_CONFLICT = -5
    TOO_MANY_UNFINISHED = -4
    RATE_LIMITED = -3
    QUEUE_FULL = -2
    NOT_FOUND = -1
    WRONG_STATE = 0
    OK = 1
    REPLAYED = 2
    RECOVERY_LOCK_HELD = -10
    RECOVERY_GRACE = -11


class ClaimFlag(IntEnum):
    """Bits of the first element of claim's reply."""

    PAUSED = 1
    SUSPECTS = 2  # a suspect group started: the batch takes nothing else


class Outcome(StrEnum):
    """What a worker tells `finish` about one job it held."""

    COMPLETED = "completed"
    FAILED = "failed"  # permanent: retrying cannot help (input does not fit the model, it hung alone)
    RETRY = "retry"  # the model raised: try again until MAX_ATTEMPTS
    RELEASE = "release"  # never ran (drain, second signal): give it back, attempt not counted
    ISOLATE = "isolate"  # its batch hung or crashed: requeue as a suspect that runs alone, attempt not counted

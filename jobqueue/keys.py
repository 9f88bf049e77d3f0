"""Every Redis key of a queue, built in one place."""

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueKeys:
    """Key names for one queue. The pending list is the queue name itself: KEDA reads its length.

    To run on Redis Cluster, give the queue a hash tag (``{asyncinfer}:queue``) so all keys share a slot.
    """

    queue: str

    @property
    def pending(self) -> str:
        """LIST of ids waiting to start; nothing else ever goes in it."""
        return self.queue

    @property
    def prefix(self) -> str:
        return self.queue + ":"

    @property
    def inflight(self) -> str:
        """ZSET job id -> timeout deadline (ms); ZCARD is the in-flight count KEDA adds to the backlog."""
        return self.prefix + "inflight"

    @property
    def workers(self) -> str:
        """ZSET worker id -> heartbeat deadline (ms)."""
        return self.prefix + "workers"

    @property
    def dead(self) -> str:
        """LIST of ids that failed for good (dead letters)."""
        return self.prefix + "dead"

    @property
    def events(self) -> str:
        """Pub/Sub channel: space-separated ids that reached a terminal state (wakes long polls)."""
        return self.prefix + "events"

    @property
    def recovery_lock(self) -> str:
        return self.prefix + "recovery-lock"

    @property
    def stats(self) -> str:
        """HASH of counters (enqueued, completed, failed, recovered, ...)."""
        return self.prefix + "stats"

    def job(self, job_id: str) -> str:
        return self.prefix + "job:" + job_id

    def processing(self, worker_id: str) -> str:
        """LIST of ids one worker holds: claimed but not yet acknowledged."""
        return self.prefix + "processing:" + worker_id

    def idempotency(self, key: str) -> str:
        return self.prefix + "idem:" + key

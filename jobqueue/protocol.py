"""The job protocol: one typed wrapper per Lua script, usable with a sync or an asyncio Redis client.

Each method returns its parsed value for a sync client, or an awaitable of it for `redis.asyncio`,
so the API (async) and the worker (sync) share one implementation of every transition.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from jobqueue.errors import JobNotFound, QueueFull, WrongState
from jobqueue.keys import QueueKeys
from jobqueue.settings import Settings
from jobqueue.states import JobStatus, Outcome, ScriptCode

T = TypeVar("T")
SCRIPT_NAMES = ("enqueue", "claim", "finish", "recover", "cancel", "retry", "heartbeat")
RECORD_FIELDS = ("status", "result", "error", "attempts", "created_at", "started_at", "finished_at")


def _then(reply: Any, parse: Callable[[Any], T]) -> T | Any:
    """Apply `parse` now (sync client) or once the reply arrives (async client)."""
    if inspect.isawaitable(reply):

        async def _await() -> T:
            return parse(await reply)

        return _await()
    return parse(reply)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _code(reply: Sequence[Any]) -> tuple[ScriptCode, str]:
    return ScriptCode(int(reply[0])), _text(reply[1])


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    attempts: int
    payload: str


@dataclass(frozen=True)
class FinishCounts:
    completed: int
    failed: int
    requeued: int
    ignored: int
    still_held: int


@dataclass(frozen=True)
class RecoverCounts:
    requeued: int
    failed: int
    timed_out: int
    dead_workers: int


@dataclass(frozen=True)
class JobRecord:
    """A job as stored; timestamps are epoch milliseconds from the Redis server clock."""

    job_id: str
    status: JobStatus
    input: str | None
    result: str | None
    error: str | None
    attempts: int
    created_at: int | None
    started_at: int | None
    finished_at: int | None


def _opt_int(value: Any) -> int | None:
    return int(value) if value not in (None, b"", "") else None


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _lua(name: str) -> str:
    return resources.files("jobqueue").joinpath("scripts", f"{name}.lua").read_text()


class JobQueue:
    """All state changes of one queue's jobs. Scripts are registered once per client."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = QueueKeys(settings.queue_name)
        self._scripts = {name: client.register_script(_lua(name)) for name in SCRIPT_NAMES}

    # -- API side -------------------------------------------------------------------------------

    def _enqueue(self, job_id: str, payload: str, idempotency_key: str | None = None, client: Any = None) -> Any:
        """Run the enqueue script (on `client`, e.g. a pipeline, when given); the raw reply."""
        k, s = self.keys, self.settings
        return self._scripts["enqueue"](
            keys=[k.pending, k.job(job_id), k.idempotency(idempotency_key or ""), k.stats],
            args=[job_id, payload, s.job_ttl_seconds, s.max_queue_length, "1" if idempotency_key else "0"],
            client=client,
        )

    def enqueue(self, job_id: str, payload: str, idempotency_key: str | None = None):
        """Create the job and queue it in one round trip. Returns (job id, created?)."""

        def parse(reply: Sequence[Any]) -> tuple[str, bool]:
            code, value = _code(reply)
            if code is ScriptCode.QUEUE_FULL:
                raise QueueFull(f"queue holds {self.settings.max_queue_length} jobs (MAX_QUEUE_LENGTH)")
            return value, code is ScriptCode.OK

        return _then(self._enqueue(job_id, payload, idempotency_key), parse)

    def enqueue_many(self, items: Sequence[tuple[str, str]]):
        """Enqueue (job id, payload) pairs in one pipelined round trip; each is still atomic on its own.
        Returns the ids that were created (a full queue refuses the rest)."""
        pipe = self.client.pipeline(transaction=False)
        for job_id, payload in items:
            self._enqueue(job_id, payload, client=pipe)
        return _then(pipe.execute(), lambda replies: [_text(r[1]) for r in replies if int(r[0]) == ScriptCode.OK])

    def get(self, job_id: str, with_input: bool = False):
        """The job's record, or JobNotFound. The input is left in Redis unless asked for: a poll
        should not carry a large input (an image, say) back every time."""
        fields = RECORD_FIELDS + ("input",) if with_input else RECORD_FIELDS

        def parse(values: list) -> JobRecord:
            f = dict(zip(fields, values))
            if f["status"] is None:
                raise JobNotFound(job_id)
            return JobRecord(
                job_id=job_id,
                status=JobStatus(_text(f["status"])),
                input=_opt_text(f.get("input")),
                result=_opt_text(f["result"]),
                error=_opt_text(f["error"]),
                attempts=int(f["attempts"] or 0),
                created_at=_opt_int(f["created_at"]),
                started_at=_opt_int(f["started_at"]),
                finished_at=_opt_int(f["finished_at"]),
            )

        return _then(self.client.hmget(self.keys.job(job_id), fields), parse)

    def cancel(self, job_id: str):
        k = self.keys
        reply = self._scripts["cancel"](
            keys=[k.job(job_id), k.pending], args=[job_id, self.settings.job_ttl_seconds, k.events]
        )
        return _then(reply, lambda r: self._check(r, job_id, "cancel"))

    def retry(self, job_id: str):
        k, s = self.keys, self.settings
        reply = self._scripts["retry"](
            keys=[k.job(job_id), k.pending, k.dead], args=[job_id, s.job_ttl_seconds, s.max_queue_length]
        )
        return _then(reply, lambda r: self._check(r, job_id, "retry"))

    def _check(self, reply: Sequence[Any], job_id: str, operation: str) -> JobStatus:
        code, value = _code(reply)
        if code is ScriptCode.NOT_FOUND:
            raise JobNotFound(job_id)
        if code is ScriptCode.QUEUE_FULL:
            raise QueueFull(f"queue holds {self.settings.max_queue_length} jobs (MAX_QUEUE_LENGTH)")
        if code is ScriptCode.WRONG_STATE:
            raise WrongState(value, operation)
        return JobStatus(value)

    def depths(self):
        """Pending, in-flight and dead-letter counts, plus the stats counters, in one round trip."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.pending).zcard(k.inflight).llen(k.dead).zcard(k.workers).hgetall(k.stats)

        def parse(r: list) -> dict[str, int]:
            counts = {"pending": r[0], "inflight": r[1], "dead": r[2], "workers": r[3]}
            counts.update({_text(key): int(value) for key, value in r[4].items()})
            return counts

        return _then(pipe.execute(), parse)

    # -- worker side ----------------------------------------------------------------------------

    def claim(self, worker_id: str, count: int, moved: Sequence[str] = ()) -> list[ClaimedJob]:
        """Start up to `count` pending jobs plus ids already `moved` into this worker's list."""
        k, s = self.keys, self.settings
        reply = self._scripts["claim"](
            keys=[k.pending, k.processing(worker_id), k.inflight, k.workers, k.stats],
            args=[
                worker_id,
                count,
                k.prefix,
                s.request_ttl_seconds * 1000,
                int(s.job_timeout_seconds * 1000),
                int(s.worker_ttl_seconds * 1000),
                k.events,
                *moved,
            ],
        )

        def parse(r: list) -> list[ClaimedJob]:
            return [ClaimedJob(_text(r[i]), int(r[i + 1]), _text(r[i + 2])) for i in range(0, len(r), 3)]

        return _then(reply, parse)

    def wait_for_job(self, worker_id: str, timeout_s: float):
        """Block until an id is pending and move it into this worker's list (reliable-queue BLMOVE)."""
        k = self.keys
        return _then(
            self.client.blmove(k.pending, k.processing(worker_id), timeout_s, "RIGHT", "LEFT"),
            lambda r: None if r is None else _text(r),
        )

    def finish(self, worker_id: str, outcomes: Iterable[tuple[str, Outcome, str]]):
        """Record each held job's outcome (id, outcome, result JSON or error) and release them."""
        k, s = self.keys, self.settings
        args: list[Any] = [worker_id, k.prefix, s.job_ttl_seconds, s.max_attempts, k.events]
        for job_id, outcome, payload in outcomes:
            args += [job_id, str(outcome), payload]
        reply = self._scripts["finish"](keys=[k.processing(worker_id), k.inflight, k.pending, k.dead, k.stats], args=args)
        return _then(reply, lambda r: FinishCounts(*map(int, r)))

    def heartbeat(self, worker_id: str):
        k = self.keys
        reply = self._scripts["heartbeat"](keys=[k.workers], args=[worker_id, int(self.settings.worker_ttl_seconds * 1000)])
        return _then(reply, int)

    def recover(self, worker_id: str):
        """Requeue dead workers' jobs and fail timed-out ones; None when another worker just did it."""
        k, s = self.keys, self.settings
        reply = self._scripts["recover"](
            keys=[k.workers, k.pending, k.inflight, k.dead, k.recovery_lock, k.stats],
            args=[
                worker_id,
                int(s.recovery_interval_seconds * 1000),
                k.prefix,
                s.max_attempts,
                s.job_ttl_seconds,
                k.events,
            ],
        )
        return _then(reply, lambda r: None if int(r[0]) < 0 else RecoverCounts(*map(int, r)))

    def held(self, worker_id: str):
        """Ids in this worker's processing list, oldest first."""
        return _then(self.client.lrange(self.keys.processing(worker_id), 0, -1), lambda r: [_text(x) for x in reversed(r)])

    def deregister(self, worker_id: str):
        """Clean exit: forget the worker; its processing list is empty by now."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.keys.workers, worker_id).delete(self.keys.processing(worker_id))
        return pipe.execute()


def epoch_ms_to_iso(ms: int | None) -> str | None:
    """Redis-clock milliseconds as an ISO-8601 UTC timestamp."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"

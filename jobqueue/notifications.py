"""The Redis side of webhook delivery: the notify outbox (ZSET), leases on it, and every notification
state change, each one Lua script (`jobqueue/scripts/notify_*.lua`) behind one typed async method.

The lead's job scripts put a finished job with a `callback_url` into the outbox
(`ZADD <prefix>:notify <now> <id>` + `notify_state pending` + `notify_end` one higher: the end's
number); from there this module owns it:

    due in outbox --claim--> leased (score = lease deadline = fencing token; the lease names the end)
        leased --delivered--> notify_state delivered, out of the outbox
        leased --failed_attempt--> due again at now + backoff, or given up:
                                   notify_state failed, out of the outbox, on notify-failed
        leased --release--> due now (a stopping notifier hands it back)
        leased --(notifier dies)--> due again when the lease deadline passes, by itself
        leased --(job retried, runs or ends again)--> superseded: the attempt's outcome is recorded
                                   nowhere; the new end, once it happens, is due at once on its own
    delivered | failed --resend--> due now, attempts reset
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import redis.asyncio

from jobqueue.errors import JobNotFound, JobQueueError, WrongState
from jobqueue.keys import StoreKeys
from jobqueue.protocol import RECORD_FIELDS, JobRecord, lua_source, parse_record
from jobqueue.replicas import execute_confirmed
from jobqueue.settings import Settings
from jobqueue.shards import ModelTags
from jobqueue.views import job_view

# Most ids kept on the notify-failed list; older ones drop off (their records still say `failed`).
MAX_FAILED_NOTIFICATIONS = 10_000
SCRIPT_NAMES = ("notify_claim", "notify_delivered", "notify_failed_attempt", "notify_release", "notify_resend")


class NotifyState(StrEnum):
    """`notify_state` of a job record; only the notify scripts (and the lead's finish hook) set it."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class NoCallbackUrl(WrongState):
    """The job was submitted without a callback_url: there is no webhook to resend."""

    def __init__(self, status: str) -> None:
        JobQueueError.__init__(self, "job has no callback_url: there is no webhook to resend")
        self.status = status
        self.operation = "resend"


class TransitionCode(IntEnum):
    """First element (or whole) reply of notify_delivered / notify_failed_attempt / notify_release."""

    NO_SUCH_JOB = -1
    LEASE_LOST = 0  # the lease ran out and another notifier owns the id now, or a retried call: no change
    DONE = 1  # delivered / rescheduled / released
    GIVEN_UP = 2  # notify_failed_attempt only: notify_state failed
    SUPERSEDED = 3  # the job was retried since the claim (runs or ended again): no change


@dataclass(frozen=True)
class Lease:
    """One claimed delivery. `token` is the outbox score the claim set; transitions must present it.
    `end` is which end of the job it delivers (1, then 2 after a retry ends again ...; 0 for a record
    that ended before ends were numbered)."""

    job_id: str
    token: int
    end: int = 0


@dataclass(frozen=True)
class AttemptResult:
    code: TransitionCode
    attempts: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeliveryRecord:
    """What one delivery attempt needs from a job record; `end` as in `Lease`."""

    job_id: str
    callback_url: str | None
    finished_at: int | None
    view: dict[str, Any]
    end: int = 0
    traceparent: str = ""  # the job's trace (jobqueue/tracing.py): the delivery joins it

    @classmethod
    def of(cls, record: JobRecord, end: int = 0, traceparent: str = "") -> DeliveryRecord:
        return cls(record.job_id, record.callback_url, record.finished_at, job_view(record), end, traceparent)

    def describes(self, lease: Lease) -> bool:
        """True when this record is still the end `lease` was claimed for: not retried since (a retried
        job runs without finished_at until it ends again, as end + 1)."""
        return self.finished_at is not None and self.end == lease.end

    @property
    def message_id(self) -> str:
        """Standard Webhooks `webhook-id`: the same on every retry and resend of one outcome (receivers
        dedupe on it), different when a job is retried and ends again (a new outcome)."""
        return f"msg_{self.job_id}" if self.finished_at is None else f"msg_{self.job_id}_{self.finished_at}"


class NotificationStore:
    """Every Redis operation of webhook delivery, on asyncio clients (notifier and API alike).

    Standalone, one outbox holds every job's deliveries. On a Cluster each model's tag has its own
    outbox beside its jobs (jobqueue/shards.py): a lease, a resend or a record is routed by the job id's
    tag; a claim goes round the known tags (`tags`), so no outbox waits behind another."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        settings: Settings,
        clients: Callable[[str], redis.asyncio.Redis] | None = None,
        tags: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """`client`: standalone, the server; on a Cluster, the tag registry's node. `clients(tag)`: the
        client serving a tag's slot; `tags()`: the tags whose outboxes to claim from."""
        self.client = client
        self.settings = settings
        self.keys = StoreKeys(settings.key_prefix)  # untagged: standalone, every job's
        self._clients = clients or (lambda _tag: client)
        self._tags = tags or (lambda: ("",))
        self._scripts = {name: client.register_script(lua_source(name)) for name in SCRIPT_NAMES}
        self._job_keys = ModelTags(settings).job_keys  # a job's keys from its id (no model's tags needed)
        self._turn = 0  # where the next claim starts going round the tags

    def _route(self, job_id: str) -> tuple[StoreKeys, redis.asyncio.Redis]:
        keys = self._job_keys(job_id)
        if keys is None:
            raise JobNotFound(job_id)
        return keys, self._clients(keys.tag) if keys.tag else self.client

    def _outboxes(self) -> list[tuple[StoreKeys, redis.asyncio.Redis]]:
        if not self.settings.redis_cluster:
            return [(self.keys, self.client)]
        return [(StoreKeys(self.keys.root, tag), self._clients(tag)) for tag in self._tags()]

    async def claim(self, max_ids: int, lease_ms: int) -> list[Lease]:
        """Lease up to `max_ids` due deliveries for `lease_ms` (see notify_claim.lua), going round the
        outboxes from a different one each time."""
        outboxes = self._outboxes()
        self._turn += 1
        leases: list[Lease] = []
        for i in range(len(outboxes)):
            if len(leases) >= max_ids:
                break
            keys, client = outboxes[(self._turn + i) % len(outboxes)]
            reply = await self._scripts["notify_claim"](
                keys=[keys.notify, keys.migration_guard], args=[keys.job_prefix, max_ids - len(leases), lease_ms], client=client
            )
            leases += [Lease(_text(reply[j]), int(reply[j + 1]), int(reply[j + 2])) for j in range(0, len(reply), 3)]
        return leases

    async def read(self, job_id: str) -> DeliveryRecord | None:
        """What a delivery sends (the API's job view, jobqueue.views) and where, or None when the record is gone."""
        keys, client = self._route(job_id)
        # a webhook tells the outside world: only once the replicas asked for hold the job's end
        pipe = client.pipeline(transaction=False)
        pipe.hmget(keys.job(job_id), [*RECORD_FIELDS, "notify_end", "traceparent"])
        (fetched,) = await execute_confirmed(pipe, self.settings, keys)
        *values, end, traceparent = fetched
        record = parse_record(job_id, RECORD_FIELDS, values)
        return None if record is None else DeliveryRecord.of(record, int(end or 0), _text(traceparent or ""))

    async def delivered(self, lease: Lease, http_status: int) -> TransitionCode:
        """Record a 2xx: notify_state delivered, out of the outbox (SUPERSEDED: the job was retried since)."""
        keys, client = self._route(lease.job_id)
        reply = await self._scripts["notify_delivered"](
            keys=[keys.notify, keys.job(lease.job_id), keys.migration_guard],
            args=[lease.job_id, lease.token, http_status, lease.end],
            client=client,
        )
        return TransitionCode(int(reply))

    async def failed_attempt(
        self, lease: Lease, http_status: int | None, error: str, permanent: bool, delay_ms: int
    ) -> AttemptResult:
        """Record a failed attempt: due again after `delay_ms`, or given up (permanent or the last attempt);
        SUPERSEDED when the job was retried since the claim."""
        keys, client = self._route(lease.job_id)
        reply = await self._scripts["notify_failed_attempt"](
            keys=[keys.notify, keys.job(lease.job_id), keys.notify_failed, keys.migration_guard],
            args=[
                lease.job_id,
                lease.token,
                "" if http_status is None else http_status,
                error,
                "1" if permanent else "0",
                max(0, delay_ms),
                self.settings.webhook_max_attempts,
                MAX_FAILED_NOTIFICATIONS,
                lease.end,
            ],
            client=client,
        )
        return AttemptResult(TransitionCode(int(reply[0])), int(reply[1]))

    async def release(self, lease: Lease) -> TransitionCode:
        """Hand a leased id back, due now, attempt not counted (a stopping notifier)."""
        keys, client = self._route(lease.job_id)
        reply = await self._scripts["notify_release"](
            keys=[keys.notify, keys.migration_guard], args=[lease.job_id, lease.token], client=client
        )
        return TransitionCode(int(reply))

    async def resend(self, job_id: str) -> NotifyState:
        """Deliver a finished job's webhook again from attempt 1. JobNotFound / WrongState otherwise."""
        keys, client = self._route(job_id)
        reply = await self._scripts["notify_resend"](
            keys=[keys.notify, keys.job(job_id), keys.notify_failed, keys.migration_guard], args=[job_id], client=client
        )
        code, detail = int(reply[0]), _text(reply[1])
        if code == -1:
            raise JobNotFound(job_id)
        if code == -2:
            raise NoCallbackUrl(detail)
        if code == 0:
            raise WrongState(detail, "resending its webhook")
        return NotifyState.PENDING

    async def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        """Views of the jobs whose webhook was given up, newest first. Ids whose record expired, or that
        were resent meanwhile, are skipped."""
        views: list[dict[str, Any]] = []
        for keys, client in self._outboxes():
            ids = [_text(i) for i in await client.lrange(keys.notify_failed, 0, max(0, limit - 1))]
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), RECORD_FIELDS)
            records = [
                parse_record(job_id, RECORD_FIELDS, values)
                for job_id, values in zip(ids, await pipe.execute() if ids else [], strict=True)
            ]
            views += [job_view(r) for r in records if r is not None and r.notify_state == NotifyState.FAILED]
        return views[:limit]

    async def due_count(self) -> int:
        """Deliveries waiting or leased (ZCARD of the outbox), for /metrics."""
        return sum([int(await client.zcard(keys.notify)) for keys, client in self._outboxes()])

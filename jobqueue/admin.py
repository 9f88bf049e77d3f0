"""Admin-side reads and actions on the queue: the overview (also the source of the queue metrics),
dead letters, one job in detail, pause/resume and retry-all. Every key comes from `jobqueue.keys`.

Reads are pipelined (two round trips for the whole overview, whatever the number of models); the one
multi-key change, moving dead letters back to pending, is a Lua script (`scripts/admin_retry_dead.lua`).
Async only: the API is the one caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio

from jobqueue.keys import ModelKeys, StoreKeys
from jobqueue.settings import PRIORITIES

# Fields of a job record the admin views read; `input` is left in Redis (only its size is read).
JOB_FIELDS = (
    "status", "model", "model_version", "priority", "owner", "result", "error", "attempts", "created_at", "queued_at",
    "started_at", "finished_at", "worker", "callback_url", "notify_state", "notify_attempts", "notify_last_status",
    "notify_last_error",
)
# Dead letters moved per script call: each call is atomic and blocks Redis while it runs, so a large
# dead-letter list is retried in slices that each take well under a millisecond per hundred jobs.
RETRY_SLICE = 500


@dataclass(frozen=True)
class WorkerView:
    """One registered worker of a model."""

    id: str
    holding: int  # ids in its processing list
    alive: bool  # heartbeat deadline not yet passed
    heartbeat_deadline_ms: int


@dataclass(frozen=True)
class ModelOverview:
    """One model's queue at one instant."""

    name: str
    paused: bool
    pending: dict[str, int]  # priority -> length, every priority present
    oldest_pending_age_s: dict[str, float]  # priority -> age of the tail job; 0 when empty or unknown
    inflight: int
    dead: int
    workers: list[WorkerView]
    stats: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `GET /admin/overview`'s items."""
        return {
            "name": self.name,
            "paused": self.paused,
            "pending": self.pending,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "inflight": self.inflight,
            "dead": self.dead,
            "workers": [{"id": w.id, "holding": w.holding, "alive": w.alive} for w in self.workers],
            "stats": self.stats,
        }


@dataclass(frozen=True)
class StoreOverview:
    """Every model's queue plus store-wide figures (Redis memory, webhook backlog), read at `now_ms`."""

    now_ms: int
    models: list[ModelOverview]
    redis_memory_used_bytes: int = 0
    redis_memory_max_bytes: int = 0
    notify_pending: int = 0
    notify_failed: int = 0


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


async def overview(client: redis.asyncio.Redis, keys: StoreKeys, models: Sequence[str]) -> StoreOverview:
    """Read every model's queue in two pipelined round trips (server clock for ages and liveness)."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.info("memory")
    pipe.zcard(keys.notify)
    pipe.llen(keys.notify_failed)
    for name in models:
        k = keys.model(name)
        for priority in PRIORITIES:
            pipe.llen(k.pending(priority))
            pipe.lindex(k.pending(priority), -1)  # the tail is the oldest: enqueue pushes at the head
        pipe.zcard(k.inflight)
        pipe.llen(k.dead)
        pipe.zrange(k.workers, 0, -1, withscores=True)
        pipe.hgetall(k.stats)
        pipe.exists(k.paused)
    replies = iter(await pipe.execute())
    seconds, micros = next(replies)
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    memory = next(replies)
    notify_pending, notify_failed = next(replies), next(replies)

    raw = []
    for name in models:
        lengths, tails = {}, {}
        for priority in PRIORITIES:
            lengths[priority] = int(next(replies))
            tails[priority] = next(replies)
        inflight, dead, workers, stats, paused = (next(replies) for _ in range(5))
        raw.append((name, lengths, tails, inflight, dead, workers, stats, paused))

    # Second round trip: when the oldest job of each list was queued, and what each worker holds.
    pipe = client.pipeline(transaction=False)
    for name, _, tails, _, _, workers, _, _ in raw:
        for priority in PRIORITIES:
            if tails[priority] is not None:
                pipe.hget(keys.job(tails[priority]), "queued_at")
        for worker_id, _ in workers:
            pipe.llen(keys.model(name).processing(worker_id))
    replies = iter(await pipe.execute())

    result = []
    for name, lengths, tails, inflight, dead, workers, stats, paused in raw:
        ages = {}
        for priority in PRIORITIES:
            queued_at = _int(next(replies), now_ms) if tails[priority] is not None else now_ms
            # A tail whose record expired has no queued_at: reported as 0 rather than guessed.
            ages[priority] = max(0, now_ms - queued_at) / 1000
        views = [WorkerView(wid, int(next(replies)), int(deadline) > now_ms, int(deadline)) for wid, deadline in workers]
        result.append(
            ModelOverview(
                name=name,
                paused=bool(paused),
                pending=lengths,
                oldest_pending_age_s=ages,
                inflight=int(inflight),
                dead=int(dead),
                workers=views,
                stats={field_name: _int(value) for field_name, value in stats.items()},
            )
        )
    return StoreOverview(
        now_ms=now_ms,
        models=result,
        redis_memory_used_bytes=_int(memory.get("used_memory")),
        redis_memory_max_bytes=_int(memory.get("maxmemory")),
        notify_pending=int(notify_pending),
        notify_failed=int(notify_failed),
    )


async def jobs(client: redis.asyncio.Redis, keys: StoreKeys, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """Records of `job_ids` in order (JOB_FIELDS plus `input_bytes`), None where the record is gone."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), JOB_FIELDS)
        pipe.hstrlen(keys.job(job_id), "input")
    replies = await pipe.execute()
    records: list[dict[str, Any] | None] = []
    for i, job_id in enumerate(job_ids):
        values, input_bytes = replies[2 * i], replies[2 * i + 1]
        if values[0] is None:
            records.append(None)
            continue
        record: dict[str, Any] = {"job_id": job_id, **dict(zip(JOB_FIELDS, values))}
        record["input_bytes"] = int(input_bytes)
        records.append(record)
    return records


async def dead_letters(
    client: redis.asyncio.Redis, keys: StoreKeys, models: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` dead letters of each of `models` whose record still exists, newest first per
    model. (A record expires JOB_TTL_SECONDS after it failed; its id lingers in the bounded list.)"""
    pipe = client.pipeline(transaction=False)
    for name in models:
        pipe.lrange(keys.model(name).dead, 0, limit - 1)  # LPUSHed: the head is the newest
    ids = [job_id for batch in await pipe.execute() for job_id in batch]
    return [record for record in await jobs(client, keys, ids) if record is not None]


async def pause(client: redis.asyncio.Redis, keys: ModelKeys) -> None:
    """Stop workers claiming this model's jobs. Pending lists keep their lengths, so KEDA keeps the
    workers it has (they idle) and nothing is lost; resume picks up where it stopped."""
    await client.set(keys.paused, "1")


async def resume(client: redis.asyncio.Redis, keys: ModelKeys) -> None:
    """Let workers claim this model's jobs again."""
    await client.delete(keys.paused)


def _lua(name: str) -> str:
    return resources.files("jobqueue").joinpath("scripts", f"{name}.lua").read_text()


class DeadLetterRetrier:
    """Moves a model's dead letters back to their pending lists (`admin_retry_dead.lua`), in slices."""

    def __init__(self, client: redis.asyncio.Redis, keys: StoreKeys, job_ttl_seconds: int, max_queue_length: int) -> None:
        self.client = client
        self.keys = keys
        self.job_ttl_seconds = job_ttl_seconds
        self.max_queue_length = max_queue_length
        self._script = client.register_script(_lua("admin_retry_dead"))

    async def retry_model(self, model: str) -> int:
        """Retry every failed or expired job in `model`'s dead-letter list; returns how many went back
        to pending. Stops early when the model's pending lists are full (MAX_QUEUE_LENGTH)."""
        k = self.keys.model(model)
        retried = 0
        while True:
            moved, _skipped, remaining, full = await self._script(
                keys=[k.dead, *k.pending_all, k.stats],
                args=[self.keys.job_prefix, RETRY_SLICE, self.job_ttl_seconds, self.max_queue_length, self.keys.events],
            )
            retried += int(moved)
            if int(full) or int(remaining) == 0:
                return retried

    async def retry(self, models: Sequence[str]) -> int:
        """Retry the dead letters of each of `models`; the total moved back to pending."""
        return sum([await self.retry_model(model) for model in models])

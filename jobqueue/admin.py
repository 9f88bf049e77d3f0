"""Admin-side reads and actions on the queue: the overview (also the source of the queue metrics),
dead letters, one job in detail, pause/resume and retry-all. Every key comes from `jobqueue.keys`.

Reads are pipelined (three round trips for the whole overview, whatever the number of models; its
counts from one MULTI, so they agree with each other). Job state
changes go through the protocol's own transitions (retry-all is many `retry.lua` calls), so the admin
side never writes a job record itself. Async only: the API is the one caller.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from jobqueue.errors import JobQueueError, QueueFull
from jobqueue.keys import ModelKeys, StoreKeys
from jobqueue.protocol import (
    RECORD_FIELDS,
    STAT_COUNTERS,
    JobRecord,
    JobStore,
    lua_source,
    parse_record,
    retry_call,
    state_change,
)
from jobqueue.replicas import execute_confirmed
from jobqueue.settings import PRIORITIES
from jobqueue.states import JobStatus

# A record's fields as the protocol parses them, plus what only operators see; `input` stays in Redis.
ADMIN_FIELDS = (*RECORD_FIELDS, "queued_at", "requeued_at", "worker")
RETRYABLE = (JobStatus.FAILED, JobStatus.EXPIRED)
# Dead letters retried per pipelined round trip: bounds the memory and the burst of script calls one
# admin click sends to Redis at once.
RETRY_SLICE = 200
# MULTI reads of the overview before it settles for one whose worker set moved meanwhile (a worker
# registering or leaving in the microseconds between two reads, three times running): its holding reads 0.
SNAPSHOT_TRIES = 3


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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


async def overview(client: redis.asyncio.Redis, keys: StoreKeys, models: Sequence[str]) -> StoreOverview:
    """Every model's queue as of one instant (server clock for ages and liveness).

    The counts come from one MULTI, so they agree with each other: a job is pending, in flight or
    held by a worker, never none or two of these at once (read at different moments, a worker could
    show "holding 7" beside a model with 0 in flight). A worker's processing list is a key named after
    it, so the worker ids are read first; the MULTI reads the workers again and is repeated in the rare
    case the set changed in between. The ages of the oldest pending jobs come last, from the tails the
    MULTI saw (a queue time never changes once set, so reading it later changes nothing)."""
    pipe = client.pipeline(transaction=False)
    for name in models:
        pipe.zrange(keys.model(name).workers, 0, -1)
    known = [sorted(_text(w) for w in ids) for ids in await pipe.execute()] if models else []
    for _ in range(SNAPSHOT_TRIES):
        snapshot = await _snapshot(client, keys, models, known)
        seen = [sorted(_text(wid) for wid, _ in model[5]) for model in snapshot.raw]
        if seen == known:
            break
        known = seen  # a worker came or went between the two reads: read again with the new ids

    pipe = client.pipeline(transaction=False)
    for _, _, tails, *_ in snapshot.raw:
        for priority in PRIORITIES:
            if tails[priority] is not None:
                pipe.hget(keys.job(tails[priority]), "queued_at")
    replies = iter(await pipe.execute())

    now_ms = snapshot.now_ms
    result = []
    for (name, lengths, tails, inflight, dead, workers, stats, paused), holding in zip(
        snapshot.raw, snapshot.holding, strict=True
    ):
        ages = {}
        for priority in PRIORITIES:
            queued_at = _int(next(replies), now_ms) if tails[priority] is not None else now_ms
            # A tail whose record expired has no queued_at: reported as 0 rather than guessed.
            ages[priority] = max(0, now_ms - queued_at) / 1000
        views = [
            WorkerView(_text(wid), holding.get(_text(wid), 0), int(deadline) > now_ms, int(deadline)) for wid, deadline in workers
        ]
        result.append(
            ModelOverview(
                name=name,
                paused=bool(paused),
                pending=lengths,
                oldest_pending_age_s=ages,
                inflight=int(inflight),
                dead=int(dead),
                workers=views,
                stats={name: _int(stats.get(name)) for name in STAT_COUNTERS},  # not the marks kept beside them
            )
        )
    return StoreOverview(
        now_ms=now_ms,
        models=result,
        redis_memory_used_bytes=_int(snapshot.memory.get("used_memory")),
        redis_memory_max_bytes=_int(snapshot.memory.get("maxmemory")),
        notify_pending=snapshot.notify_pending,
        notify_failed=snapshot.notify_failed,
    )


def _by_tag(store: JobStore, models: Sequence[str]) -> dict[str, tuple[StoreKeys, list[str]]]:
    """`models` grouped by shard (standalone: all together in the one untagged group)."""
    groups: dict[str, tuple[StoreKeys, list[str]]] = {}
    for name in models:
        for keys in store.model_shards(name):
            groups.setdefault(keys.tag, (keys, []))[1].append(name)
    return groups


def _merged(name: str, shards: list[ModelOverview]) -> ModelOverview:
    """One model's shards as one queue: lengths and counts add up, the oldest wait is the oldest of any,
    a worker (registered in every shard it serves) is listed once with all it holds."""
    if len(shards) == 1:
        return shards[0]
    workers: dict[str, WorkerView] = {}
    for shard in shards:
        for w in shard.workers:
            seen = workers.get(w.id)
            workers[w.id] = (
                w
                if seen is None
                else WorkerView(
                    w.id,
                    seen.holding + w.holding,
                    seen.alive or w.alive,
                    max(seen.heartbeat_deadline_ms, w.heartbeat_deadline_ms),
                )
            )
    return ModelOverview(
        name=name,
        paused=any(shard.paused for shard in shards),
        pending={p: sum(shard.pending[p] for shard in shards) for p in PRIORITIES},
        oldest_pending_age_s={p: max(shard.oldest_pending_age_s[p] for shard in shards) for p in PRIORITIES},
        inflight=sum(shard.inflight for shard in shards),
        dead=sum(shard.dead for shard in shards),
        workers=list(workers.values()),
        stats={counter: sum(shard.stats[counter] for shard in shards) for counter in STAT_COUNTERS},
    )


async def store_overview(store: JobStore, models: Sequence[str]) -> StoreOverview:
    """`overview` of `models` wherever their keys live: standalone one read; on a Cluster one per shard
    (each consistent in itself), put together per model. Redis memory is the fullest master's (what
    maxmemory alerts need); webhook backlogs add up."""
    groups = _by_tag(store, models)
    parts = await asyncio.gather(*(overview(store.node_client(tag), keys, names) for tag, (keys, names) in groups.items()))
    by_name: dict[str, list[ModelOverview]] = {}
    for part in parts:
        for model in part.models:
            by_name.setdefault(model.name, []).append(model)
    fullest = max(parts, key=lambda part: part.redis_memory_used_bytes)
    return StoreOverview(
        now_ms=max(part.now_ms for part in parts),
        models=[_merged(name, by_name[name]) for name in models],
        redis_memory_used_bytes=fullest.redis_memory_used_bytes,
        redis_memory_max_bytes=fullest.redis_memory_max_bytes,
        notify_pending=sum(part.notify_pending for part in parts),
        notify_failed=sum(part.notify_failed for part in parts),
    )


@dataclass(frozen=True)
class _Snapshot:
    """The replies of one MULTI, per model: (name, lengths, tails, inflight, dead, workers, stats,
    paused) and what each worker read in it holds."""

    now_ms: int
    memory: dict[str, Any]
    notify_pending: int
    notify_failed: int
    raw: list[tuple[Any, ...]]
    holding: list[dict[str, int]]


async def _snapshot(
    client: redis.asyncio.Redis, keys: StoreKeys, models: Sequence[str], workers: Sequence[Sequence[str]]
) -> _Snapshot:
    pipe = client.pipeline(transaction=True)
    pipe.time()
    pipe.info("memory")
    pipe.zcard(keys.notify)
    pipe.llen(keys.notify_failed)
    for name, worker_ids in zip(models, workers, strict=True):
        k = keys.model(name)
        for priority in PRIORITIES:
            pipe.llen(k.pending(priority))
            pipe.lindex(k.pending(priority), -1)  # the tail is the oldest: enqueue pushes at the head
        pipe.zcard(k.inflight)
        pipe.llen(k.dead)
        pipe.zrange(k.workers, 0, -1, withscores=True)
        pipe.hgetall(k.stats)
        pipe.exists(k.paused)
        for worker_id in worker_ids:
            pipe.llen(k.processing(worker_id))
    replies = iter(await pipe.execute())
    seconds, micros = next(replies)
    memory, notify_pending, notify_failed = next(replies), int(next(replies)), int(next(replies))
    raw, holding = [], []
    for name, worker_ids in zip(models, workers, strict=True):
        lengths, tails = {}, {}
        for priority in PRIORITIES:
            lengths[priority] = int(next(replies))
            tails[priority] = next(replies)
        raw.append((name, lengths, tails, *(next(replies) for _ in range(5))))
        holding.append({worker_id: int(next(replies)) for worker_id in worker_ids})
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return _Snapshot(now_ms, memory, notify_pending, notify_failed, raw, holding)


@dataclass(frozen=True)
class AdminJob:
    """A job as an operator sees it: the record plus what clients are not shown."""

    record: JobRecord
    queued_at: int | None  # epoch ms, Redis clock
    worker: str | None
    input_bytes: int
    requeued_at: int | None = None  # when a worker or recovery last put it back (its latest wait starts there)


async def jobs(client: redis.asyncio.Redis, keys: StoreKeys, job_ids: Sequence[str]) -> list[AdminJob | None]:
    """Records of `job_ids` in order, None where the record is gone; the input is left in Redis (only
    its size is read). One pipelined round trip."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), ADMIN_FIELDS)
        pipe.hstrlen(keys.job(job_id), "input")
    replies = await pipe.execute() if job_ids else []
    found: list[AdminJob | None] = []
    for i, job_id in enumerate(job_ids):
        values, input_bytes = replies[2 * i], replies[2 * i + 1]
        record = parse_record(job_id, ADMIN_FIELDS, values)
        if record is None:
            found.append(None)
            continue
        extra = dict(zip(ADMIN_FIELDS[len(RECORD_FIELDS) :], values[len(RECORD_FIELDS) :], strict=True))
        queued_at = int(extra["queued_at"]) if extra["queued_at"] else None
        requeued_at = int(extra["requeued_at"]) if extra["requeued_at"] else None
        found.append(AdminJob(record, queued_at, extra["worker"], int(input_bytes), requeued_at))
    return found


async def dead_letters(client: redis.asyncio.Redis, keys: StoreKeys, models: Sequence[str], limit: int) -> list[AdminJob]:
    """The newest `limit` dead letters of each of `models` whose record still exists, newest first per
    model. (A record expires JOB_TTL_SECONDS after it failed; its id lingers in the bounded list.)"""
    pipe = client.pipeline(transaction=False)
    for name in models:
        pipe.lrange(keys.model(name).dead, 0, limit - 1)  # LPUSHed: the head is the newest
    ids = [job_id for batch in await pipe.execute() for job_id in batch] if models else []
    return [job for job in await jobs(client, keys, ids) if job is not None]


async def store_dead_letters(store: JobStore, models: Sequence[str], limit: int) -> list[AdminJob]:
    """`dead_letters` of `models` wherever their keys live."""
    found: list[AdminJob] = []
    for tag, (keys, names) in _by_tag(store, models).items():
        found += await dead_letters(store.node_client(tag), keys, names, limit)
    return found


async def store_job(store: JobStore, job_id: str) -> AdminJob | None:
    """One job as `jobs` reads it, from the server its id names."""
    keys = store.tags.job_keys(job_id)
    if keys is None:
        return None
    (job,) = await jobs(store.node_client(keys.tag), keys, [job_id])
    return job


async def pause(client: redis.asyncio.Redis, keys: ModelKeys) -> None:
    """Stop workers claiming this model's jobs. Pending lists keep their lengths, so KEDA keeps the
    workers it has (they idle) and nothing is lost; resume picks up where it stopped."""
    await client.set(keys.paused, "1")


async def resume(client: redis.asyncio.Redis, keys: ModelKeys) -> None:
    """Let workers claim this model's jobs again."""
    await client.delete(keys.paused)


async def store_pause(store: JobStore, model: str, paused: bool) -> None:
    """`pause` (or `resume`) every shard of `model`."""
    for keys in store.model_shards(model):
        client = store.node_client(keys.tag)
        await (pause(client, keys.model(model)) if paused else resume(client, keys.model(model)))


class DeadLetterRetrier:
    """Retry-all: every failed or expired job in a model's dead-letter list goes through the one retry
    transition (`retry.lua`, the script behind `POST /job/{id}/retry`, built by the protocol's
    `retry_call`), pipelined RETRY_SLICE at a time, oldest first. An operator's action: the owners'
    rate and unfinished-jobs limits do not hold it back (a refused job would stay a dead letter)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._retry = store.client.register_script(lua_source("retry"))

    async def retry(self, model: str) -> int:
        """How many of `model`'s dead letters, in all its shards, went back to pending."""
        retried = 0
        for keys in self.store.model_shards(model):
            retried += await self._retry_shard(model, keys)
        return retried

    async def _retry_shard(self, model: str, keys: StoreKeys) -> int:
        """How many of `model`'s dead letters went back to pending. Ids whose record is gone or that are
        no longer retryable are dropped from the list; stops early when the pending list is full
        (MAX_QUEUE_LENGTH), leaving the rest as they are."""
        store = self.store
        client = store.node_client(keys.tag)
        dead_key = keys.model(model).dead
        token = uuid.uuid4().hex  # one admin request: retry.lua recognises its own repeat
        retried = 0
        while True:
            tail = await client.lrange(dead_key, -RETRY_SLICE, -1)  # the tail is the oldest
            ids = list(dict.fromkeys(_text(job_id) for job_id in reversed(tail)))
            if not ids:
                return retried
            records = await store.get_many(ids)
            retryable = [r for r in records if r is not None and r.model == model and r.status in RETRYABLE]
            pipe = client.pipeline(transaction=False)
            for record in retryable:
                call = retry_call(keys, store.settings, record, token, limited=False, limits=store.limits(model))
                await self._retry(keys=call.keys, args=call.args, client=pipe)  # queued in the pipeline
            replies = await execute_confirmed(pipe, store.settings, keys) if retryable else []
            drop = [
                job_id
                for job_id, r in zip(ids, records, strict=True)
                if r is None or r.model != model or r.status not in RETRYABLE
            ]
            full = False
            for record, reply in zip(retryable, replies, strict=True):
                try:
                    state_change(reply, record.job_id, "retry", store.settings)
                    retried += 1
                except QueueFull:
                    full = True
                except JobQueueError:  # raced into another state meanwhile: no longer a dead letter
                    drop.append(record.job_id)
            if drop:
                pipe = client.pipeline(transaction=False)
                for job_id in drop:
                    pipe.lrem(dead_key, 0, job_id)
                await pipe.execute()
            if full:
                return retried

"""The job protocol: one Lua script per transition, called through two typed classes.

`JobStore` (asyncio, the API) and `WorkerQueue` (sync, a worker) share the pure builders and parsers
below, as redis-py itself does for its sync and async clients: a builder turns typed arguments into a
`ScriptCall` (keys from `jobqueue.keys`, args in the script's documented order), a parser turns the
script's reply into a typed value or a `JobQueueError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

import hiredis
import redis

from jobqueue import tracing
from jobqueue.connection import CLUSTER_BUSY, REFUSED, UNAVAILABLE, async_client, async_node_client, rerouted
from jobqueue.errors import (
    IdempotencyConflict,
    JobNotFound,
    JobQueueError,
    QueueFull,
    RateLimited,
    ShardBusy,
    TooManyUnfinished,
    WrongState,
)
from jobqueue.keys import ModelKeys, StoreKeys
from jobqueue.multiplex import MultiplexedRedis
from jobqueue.replicas import ReplicaAcks, ReplicasBehind
from jobqueue.settings import Settings
from jobqueue.shards import ModelTags, tag_of
from jobqueue.states import ClaimFlag, JobStatus, Outcome, ScriptCode

if TYPE_CHECKING:
    import redis.asyncio
    from redis.asyncio import Redis as AsyncRedis  # `redis` inside JobStore is its connection

log = logging.getLogger("asyncinfer.queue")

SCRIPT_NAMES = ("enqueue", "enqueue_many", "claim", "finish", "recover", "cancel", "retry", "heartbeat", "extend")
RECORD_FIELDS = (
    "status", "model", "model_version", "priority", "owner", "result", "error", "attempts",
    "created_at", "started_at", "finished_at", "callback_url",
    "notify_state", "notify_attempts", "notify_last_status", "notify_last_error",
)  # fmt: skip
ANONYMOUS = "anonymous"
OBJECT_RESULT_PREFIX = "s3://"  # a "completed" payload naming a result object rather than holding the result  # the owner of every job while authentication is off


def lua_source(name: str) -> str:
    """A transition script with the shared helpers (scripts/_shared.lua) in front of it."""
    scripts = resources.files("jobqueue").joinpath("scripts")
    return scripts.joinpath("_shared.lua").read_text() + scripts.joinpath(f"{name}.lua").read_text()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    return int(value) if value not in (None, b"", "") else None


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- typed values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptCall:
    """One script invocation: which script, its KEYS and its ARGV."""

    name: str
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class NewJob:
    """A validated submit, ready to be stored."""

    job_id: str
    model: str
    payload: str
    priority: str = "normal"
    owner: str = ANONYMOUS
    callback_url: str = ""
    idempotency_key: str | None = None
    fingerprint: str = ""
    traceparent: str = ""  # W3C trace context of the submit (jobqueue/tracing.py); "" = tracing off


@dataclass(frozen=True)
class Enqueued:
    """What enqueue did: `created` False means an idempotent replay of `job_id` (now `status`)."""

    job_id: str
    created: bool
    status: JobStatus


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    attempts: int
    payload: str
    traceparent: str = ""
    queued_at_ms: int = 0  # when this run's wait began (queued or requeued), Redis clock
    started_at: str = ""  # this run's start as the claim wrote it (Redis-clock ms): tells runs apart


class EndedTiming(NamedTuple):
    """A job's priority and when it was created, queued and started (Redis-clock ms), as the claim that
    started it read them: what the worker's latency histograms need once a finish call ends it. A named
    tuple: one is made per job, at a third of a frozen dataclass's cost."""

    priority: str
    created_at: int
    queued_at: int
    started_at: int
    job_id: str = ""


@dataclass(frozen=True)
class ClaimedBatch:
    jobs: list[ClaimedJob]
    paused: bool = False
    suspects: bool = False  # one suspect group (half of a batch that died or hung): add nothing to it
    # job id -> its priority, created_at, queued_at, started_at as the reply has them: parse_finish reads
    # them for the jobs a finish call ends
    timings: dict[str, Sequence[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class FinishCounts:
    completed: int
    failed: int
    requeued: int
    ignored: int
    still_held: int
    finished_at: int = 0
    ended: tuple[EndedTiming, ...] = ()
    # ids this call ended whose timings are not in `ended`: from `parse_finish`, those no claim of this
    # process read; from `WorkerQueue.finish`, only those whose records were gone when it read them
    untimed: tuple[str, ...] = ()


def parse_finish(reply: Sequence[Any], timings: dict[str, Sequence[Any]]) -> FinishCounts:
    """finish's reply: six counts, then the ids it ended, whose timings come from `timings` (ClaimedBatch's,
    from the claims that started them: the script does not read them from the records again); an ended id
    without one is in `untimed`."""
    completed, failed, requeued, ignored, still_held, finished_at = (int(v) for v in reply[:6])
    ended = tuple(
        EndedTiming(_text(t[0]), int(t[1]), int(t[2]), int(t[3]), job_id)
        for job_id in map(_text, reply[6:])
        if (t := timings.get(job_id)) is not None
    )
    untimed = () if len(ended) == len(reply) - 6 else tuple(i for i in map(_text, reply[6:]) if i not in timings)
    return FinishCounts(completed, failed, requeued, ignored, still_held, finished_at, ended, untimed)


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
    model: str | None
    model_version: str | None
    priority: str
    owner: str | None
    result: str | None
    error: str | None
    attempts: int
    created_at: int | None
    started_at: int | None
    finished_at: int | None
    callback_url: str | None = None
    notify_state: str | None = None
    notify_attempts: int = 0
    notify_last_status: int | None = None
    notify_last_error: str | None = None
    input: str | None = None
    result_object: str | None = None  # s3://... of a result written to the object store (issue #26)

    def visible_to(self, principal: str, admin: bool) -> bool:
        """A client sees only its own jobs; an admin sees all."""
        return admin or self.owner == principal


# -- pure builders and parsers --------------------------------------------------------------------


class Limits(NamedTuple):
    """The limits one shard enforces: its share of each (a model split into n shards holds 1/n of its
    queue length, and each principal 1/n of its rate, burst and unfinished jobs, on each shard)."""

    max_queue_length: int
    rate_per_second: float
    burst: int
    max_unfinished: int

    @classmethod
    def share(cls, settings: Settings, shards: int = 1) -> Limits:
        def part(value: int) -> int:
            return -(-value // shards)  # rounded up: a share of a limit > 0 is never 0 (unlimited)

        return cls(
            part(settings.max_queue_length), settings.rate_limit_per_second / shards,
            part(settings.rate_limit_burst), part(settings.max_pending_per_principal),
        )  # fmt: skip


def enqueue_call(store: StoreKeys, settings: Settings, job: NewJob, limits: Limits | None = None) -> ScriptCall:
    model = store.model(job.model)
    idem = store.idempotency(job.owner, job.idempotency_key or "")
    lim = limits or Limits.share(settings)
    return ScriptCall(
        "enqueue",
        [model.pending(job.priority), store.job(job.job_id), idem, model.stats, store.principal(job.owner), store.migration_guard],
        [
            job.job_id, job.payload, job.model, job.priority, job.owner, job.callback_url, job.fingerprint,
            lim.max_queue_length, "1" if job.idempotency_key else "0",
            lim.rate_per_second, lim.burst, lim.max_unfinished,
            store.job_prefix, job.traceparent,
        ],
    )  # fmt: skip


def enqueue_many_call(store: StoreKeys, settings: Settings, jobs: Sequence[NewJob], limits: Limits | None = None) -> ScriptCall:
    """One call for the jobs of one bulk request: all for one model, one owner and one shard."""
    first = jobs[0]
    model = store.model(first.model)
    keys = [model.stats, store.principal(first.owner)]
    lim = limits or Limits.share(settings)
    args: list[Any] = [
        first.model, first.owner, lim.max_queue_length, lim.rate_per_second, lim.burst, lim.max_unfinished,
        store.job_prefix,
    ]  # fmt: skip
    for job in jobs:
        keys += [model.pending(job.priority), store.job(job.job_id), store.idempotency(job.owner, job.idempotency_key or "")]
        args += [
            job.job_id, job.payload, job.priority, job.callback_url, job.fingerprint, "1" if job.idempotency_key else "0",
            job.traceparent,
        ]  # fmt: skip
    return ScriptCall("enqueue_many", [*keys, store.migration_guard], args)


def enqueue_result(reply: Sequence[Any], settings: Settings) -> Enqueued | JobQueueError:
    """The script's answer as a value, or the refusal as an exception object (not raised: bulk
    submits report each item's refusal in place)."""
    code, job_id, detail = ScriptCode(int(reply[0])), _text(reply[1]), _text(reply[2])
    if code in (ScriptCode.OK, ScriptCode.REPLAYED):
        return Enqueued(job_id, code is ScriptCode.OK, JobStatus(detail))
    if code is ScriptCode.QUEUE_FULL:
        return QueueFull(f"queue holds {settings.max_queue_length} jobs (MAX_QUEUE_LENGTH)")
    if code is ScriptCode.RATE_LIMITED:
        return RateLimited(int(detail))
    if code is ScriptCode.TOO_MANY_UNFINISHED:
        return TooManyUnfinished(f"{settings.max_pending_per_principal} unfinished jobs (MAX_PENDING_PER_PRINCIPAL)")
    if code is ScriptCode.IDEMPOTENCY_CONFLICT:
        return IdempotencyConflict(job_id)
    raise JobQueueError(f"enqueue answered {reply!r}")


def parse_record(job_id: str, fields: Sequence[str], values: Sequence[Any]) -> JobRecord | None:
    f = dict(zip(fields, values, strict=True))
    if f["status"] is None:
        return None
    result = _opt_text(f["result"])
    # A result in the object store is stored as its reference: JSON text never starts with "s3://".
    result_object = result if result is not None and result.startswith(OBJECT_RESULT_PREFIX) else None
    return JobRecord(
        job_id=job_id,
        status=JobStatus(_text(f["status"])),
        model=_opt_text(f["model"]),
        model_version=_opt_text(f["model_version"]),
        priority=_opt_text(f["priority"]) or "normal",
        owner=_opt_text(f["owner"]),
        result=None if result_object else result,
        error=_opt_text(f["error"]),
        attempts=int(f["attempts"] or 0),
        created_at=_opt_int(f["created_at"]),
        started_at=_opt_int(f["started_at"]),
        finished_at=_opt_int(f["finished_at"]),
        callback_url=_opt_text(f["callback_url"]),
        notify_state=_opt_text(f["notify_state"]),
        notify_attempts=int(f["notify_attempts"] or 0),
        notify_last_status=_opt_int(f["notify_last_status"]),
        notify_last_error=_opt_text(f["notify_last_error"]),
        input=_opt_text(f.get("input")),
        result_object=result_object,
    )


def _record_fields(with_input: bool) -> tuple[str, ...]:
    return (*RECORD_FIELDS, "input") if with_input else RECORD_FIELDS


def state_change(reply: Sequence[Any], job_id: str, operation: str, settings: Settings) -> JobStatus:
    """cancel/retry replies: the new status (or, for a replayed retry, the job's status now), or the
    refusal raised."""
    code, value = ScriptCode(int(reply[0])), _text(reply[1])
    if code is ScriptCode.NOT_FOUND:
        raise JobNotFound(job_id)
    if code is ScriptCode.QUEUE_FULL:
        raise QueueFull(f"queue holds {settings.max_queue_length} jobs (MAX_QUEUE_LENGTH)")
    if code is ScriptCode.RATE_LIMITED:
        raise RateLimited(int(value))
    if code is ScriptCode.TOO_MANY_UNFINISHED:
        raise TooManyUnfinished(f"{settings.max_pending_per_principal} unfinished jobs (MAX_PENDING_PER_PRINCIPAL)")
    if code is ScriptCode.WRONG_STATE:
        raise WrongState(value, operation)
    return JobStatus(value)


def retry_result(reply: Sequence[Any], job_id: str, settings: Settings) -> Enqueued:
    """retry's reply: `created` False when this token's retry had already run (a replay)."""
    status = state_change(reply, job_id, "retry", settings)
    return Enqueued(job_id, ScriptCode(int(reply[0])) is ScriptCode.OK, status)


def cancel_call(store: StoreKeys, settings: Settings, record: JobRecord) -> ScriptCall:
    model = store.model(record.model or "")
    return ScriptCall(
        "cancel",
        [store.job(record.job_id), model.pending(record.priority), model.stats, store.notify, store.migration_guard],
        [record.job_id, settings.job_ttl_seconds, store.events, store.principal_prefix],
    )


def retry_call(
    store: StoreKeys, settings: Settings, record: JobRecord, token: str, limited: bool = True, limits: Limits | None = None
) -> ScriptCall:
    """A retry counts like a submit of the job's owner (its limits and bucket, in the job's own shard);
    `limited` False is for an operator's retry-all, which must not leave dead letters behind because
    their owners are busy."""
    model = store.model(record.model or "")
    lim = limits or Limits.share(settings)
    rate, max_unfinished = (lim.rate_per_second, lim.max_unfinished) if limited else (0, 0)
    return ScriptCall(
        "retry",
        [store.job(record.job_id), model.pending(record.priority), model.dead, model.stats,
         store.principal(record.owner or ANONYMOUS), store.migration_guard],
        [record.job_id, lim.max_queue_length, token, store.events, rate, lim.burst, max_unfinished],
    )  # fmt: skip


def parse_claim(reply: Sequence[Any], traced: bool = False) -> ClaimedBatch:
    """claim's reply: per job its id, attempts, input and timings; `traced`: also its traceparent and wait
    start (a tracing worker)."""
    flags = int(reply[0])
    rows = range(1, len(reply), 9 if traced else 7)
    if traced:
        jobs = [
            ClaimedJob(
                _text(reply[i]),
                int(reply[i + 1]),
                _text(reply[i + 2]),
                _text(reply[i + 7]),
                int(reply[i + 8] or 0),
                _text(reply[i + 6]),
            )
            for i in rows
        ]
    else:
        jobs = [ClaimedJob(_text(reply[i]), int(reply[i + 1]), _text(reply[i + 2]), started_at=_text(reply[i + 6])) for i in rows]
    timings = {job.job_id: reply[i + 3 : i + 7] for i, job in zip(rows, jobs, strict=True)}
    return ClaimedBatch(jobs, bool(flags & ClaimFlag.PAUSED), bool(flags & ClaimFlag.SUSPECTS), timings)


def epoch_ms_to_iso(ms: int | None) -> str | None:
    """Redis-clock milliseconds as an ISO-8601 UTC timestamp."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return _iso_second(seconds) + f".{millis:03d}Z"


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    """Formatting a second is most of the work; a busy API formats the same few seconds again and again."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@functools.cache
def scripts_by_name() -> dict[str, tuple[str, str]]:
    """Every script's (SHA1, source): EVALSHA first, EVAL when the server does not have it yet."""
    return {name: (hashlib.sha1(lua_source(name).encode()).hexdigest(), lua_source(name)) for name in SCRIPT_NAMES}


# -- the API's store (asyncio) --------------------------------------------------------------------

# refusals for one shard's share of a limit, or of a shard whose slot is moving: another shard may take the job
SHARE_REFUSALS = (QueueFull, RateLimited, TooManyUnfinished, ShardBusy)


class _Node(NamedTuple):
    """What the API holds per Redis server it writes to: a pooled client, the shared pipelined
    connection and its replica acknowledgements."""

    client: redis.asyncio.Redis
    redis: MultiplexedRedis
    replicas: ReplicaAcks


class JobStore:
    """The API's side of the protocol: submit, read, cancel and retry jobs of any model.

    Its commands go over one shared, self-pipelining connection (jobqueue/multiplex.py), made with
    `client`'s connection settings; `client` itself stays for everything else (admin, Pub/Sub).

    With REDIS_MIN_REPLICAS_ACK > 0, a submit, retry or cancel returns only once that many replicas
    hold it, and a job's end is returned only once they hold that (jobqueue/replicas.py); otherwise
    ReplicasBehind (a ConnectionError: the API answers 503).
    """

    def __init__(self, client: redis.asyncio.Redis, settings: Settings, tags: ModelTags | None = None) -> None:
        self.client = client
        self.settings = settings
        self.keys = StoreKeys(settings.key_prefix)  # the untagged keys: standalone, every model's
        self.tags = tags or ModelTags(settings)
        self._scripts = scripts_by_name()
        self._sources = {sha: source for sha, source in self._scripts.values()}
        self._nodes: dict[str, _Node] = {}  # by tag ("" = untagged), and by address for a slot's move target
        self._node("")  # standalone: the one connection; on a Cluster: the registry's node (admin, Pub/Sub)

    def _node(self, tag: str) -> _Node:
        """The connection serving `tag`'s keys ("" = `client`'s server), opened on first use."""
        node = self._nodes.get(tag)
        if node is None:
            keys = StoreKeys(self.settings.key_prefix, tag)
            client = async_client(self.settings, slot_key=keys.job("")) if tag else self.client
            node = self._nodes[tag] = self._opened(client, keys.replica_ack)
        return node

    def _opened(self, client: AsyncRedis, marker: str) -> _Node:
        """A node around `client`: its shared pipelined connection, and replica acks written to `marker`."""
        multiplexed = MultiplexedRedis(client.connection_pool.make_connection, self.settings.redis_deadline_seconds)
        return _Node(client, multiplexed, ReplicaAcks(multiplexed, self.settings, marker))

    def model_shards(self, model: str) -> list[StoreKeys]:
        """Every shard of `model` (standalone: the one untagged)."""
        return self.tags.model_keys(model)

    def limits(self, model: str) -> Limits:
        """What each shard of `model` that takes new jobs enforces: its share of every limit."""
        return Limits.share(self.settings, self.tags.submit_shards(model))

    def node_client(self, tag: str) -> AsyncRedis:
        """A pooled client for the server holding `tag`'s keys ("" = the untagged keys')."""
        return self._node(tag).client

    def _job(self, job_id: str) -> tuple[StoreKeys, _Node]:
        keys = self.tags.job_keys(job_id)
        if keys is None:
            raise JobNotFound(job_id)
        return keys, self._node(keys.tag)

    async def aclose(self) -> None:
        for tag, node in self._nodes.items():
            await node.redis.aclose()
            if tag:
                await node.client.aclose()

    def _node_at(self, host: str, port: int) -> _Node:
        """The node a Cluster slot is moving to, by its address (ASK names it), opened on first use."""
        address = f"{host}:{port}"
        node = self._nodes.get(address)
        if node is None:
            # its own replica acks are never used: an answer by ASK is confirmed with its shard's marker
            # behind ASKING (`_confirm`), as the node may serve no slot of the untagged one's
            node = self._nodes[address] = self._opened(async_node_client(self.settings, host, port), self.keys.replica_ack)
        return node

    async def _execute(self, node: _Node, args: tuple[Any, ...], patient: bool = True) -> tuple[Any, _Node, int, bool]:
        """A command on the server of its keys (the reply, the node that answered, its connection's serial,
        whether it answered behind ASKING),
        through a Cluster slot's move: ASK is followed (the command again, behind ASKING, on the node it
        names: the key moved there already); TRYAGAIN and CLUSTERDOWN (nothing ran) are asked again
        shortly, within REDIS_DEADLINE_SECONDS. `patient` False raises ShardBusy at once instead (a
        submit then goes to another shard). EVALSHA falls back to EVAL on a server without the script."""
        deadline = time.monotonic() + self.settings.redis_deadline_seconds
        delay = 0.02
        while True:
            try:
                try:
                    reply, serial = await node.redis.execute_traced(*args)
                    return reply, node, serial, False
                except redis.exceptions.AskError as asked:
                    target = self._node_at(asked.host, asked.port)
                    reply, serial = await target.redis.execute_asking(*args)
                    return reply, target, serial, True
            except redis.exceptions.NoScriptError:
                if args[0] != "EVALSHA":
                    raise
                args = ("EVAL", self._sources[args[1]], *args[2:])
                continue
            except CLUSTER_BUSY as exc:  # an ASK followed to a node that answers TRYAGAIN or ASK again included
                if not patient or time.monotonic() + delay > deadline:
                    raise ShardBusy(str(exc)) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _confirm(self, node: _Node, serial: int, keys: StoreKeys, asked: bool) -> None:
        """Return once REDIS_MIN_REPLICAS_ACK replicas hold what `node`'s connection `serial` wrote or
        read. After an ASK the marker is the shard's own key, behind ASKING (the node is importing its
        slot). A marker refused because the slot moved meanwhile confirms nothing: ReplicasBehind (503:
        the write may stand), never a refusal that would say nothing was stored."""
        required = self.settings.redis_min_replicas_ack
        timeout_ms = self.settings.redis_replica_ack_timeout_ms
        try:
            if not asked:
                await node.replicas.confirm(serial)
            elif required:
                acked = await node.redis.wait_replicas(serial, keys.replica_ack, required, timeout_ms, asking=True)
                if acked < required:
                    raise ReplicasBehind(acked, required, timeout_ms)
        except CLUSTER_BUSY as exc:
            raise ReplicasBehind(0, required, timeout_ms) from exc

    async def _run(self, call: ScriptCall, keys: StoreKeys, node: _Node, patient: bool = True) -> Any:
        """Run a script on `keys`' shard that writes; it returns once the replicas asked for hold what it wrote."""
        sha, _ = self._scripts[call.name]
        args = ("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
        reply, answered, serial, asked = await self._execute(node, args, patient)
        await self._confirm(answered, serial, keys, asked)
        return reply

    async def _read(self, job_id: str, fields: Sequence[str]) -> JobRecord | None:
        """A record; an ended one only once the replicas asked for hold its end (no result is shown
        that a failover could take back)."""
        try:
            keys, node = self._job(job_id)
        except JobNotFound:
            return None
        values, answered, serial, asked = await self._execute(node, ("HMGET", keys.job(job_id), *fields))
        record = parse_record(job_id, fields, values)
        if record is not None and record.status.terminal:
            await self._confirm(answered, serial, keys, asked)
        return record

    def new_job_id(self, model: str, affinity: str | None = None) -> str:
        """An id for a new job of `model`: on a Cluster it names the shard the job goes to (the one
        `affinity`, an idempotency key, hashes to; otherwise the next in turn)."""
        return self.tags.new_job_id(model, affinity)

    async def _enqueue_group(self, jobs: Sequence[NewJob]) -> list[Enqueued | JobQueueError]:
        """Jobs of one shard, model and owner in one script call. A shard whose slot is moving answers
        ShardBusy for each at once when another shard can take them (no idempotency key to keep them here)."""
        keys, node = self._job(jobs[0].job_id)
        model = jobs[0].model
        limits = self.limits(model)
        patient = self.tags.submit_shards(model) == 1 or any(job.idempotency_key for job in jobs)
        try:
            if len(jobs) == 1:
                call = enqueue_call(keys, self.settings, jobs[0], limits)
                return [enqueue_result(await self._run(call, keys, node, patient), self.settings)]
            reply = await self._run(enqueue_many_call(keys, self.settings, jobs, limits), keys, node, patient)
        except ShardBusy as busy:
            if patient:
                raise
            return [busy] * len(jobs)
        return [enqueue_result(reply[i : i + 3], self.settings) for i in range(0, len(reply), 3)]

    async def enqueue(self, job: NewJob) -> Enqueued:
        """Create the job and queue it in one round trip; raises the refusal (QueueFull, RateLimited, ...)."""
        if tracing.TRACER is not None:
            (result,) = await self._traced_enqueue([job])
        else:
            (result,) = await self._enqueue_untraced([job])
        if isinstance(result, JobQueueError):
            raise result
        return result

    async def _traced_enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued | JobQueueError]:
        """Enqueue inside one PRODUCER span per job, each job storing its span's traceparent."""
        assert tracing.TRACER is not None
        spans = tracing.ProducerSpans(tracing.TRACER, jobs)
        try:
            results = await self._enqueue_untraced(spans.jobs)
        except BaseException as exc:
            spans.fail(exc)
            raise
        spans.end(results)
        return results

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[Enqueued | JobQueueError]:
        """Enqueue several jobs in one round trip; each is atomic on its own and answers in place."""
        if tracing.TRACER is not None and jobs:
            return await self._traced_enqueue(jobs)
        return await self._enqueue_untraced(jobs)

    async def _enqueue_untraced(self, jobs: Sequence[NewJob]) -> list[Enqueued | JobQueueError]:
        """One script call per shard, model and owner (a bulk request on a standalone Redis: one call),
        sent together. A job its shard refuses for that shard's share of a limit goes to the next shard
        under a new id, until one takes it or every shard has refused (without an idempotency key only:
        a key's repeat must find its job in the one shard it hashes to)."""
        current = list(jobs)
        results: list[Enqueued | JobQueueError | None] = [None] * len(jobs)
        waiting: Sequence[int] = range(len(jobs))
        tries = 0
        while waiting:
            groups: dict[tuple[str, str, str], list[int]] = {}
            for i in waiting:
                groups.setdefault((tag_of(current[i].job_id) or "", current[i].model, current[i].owner), []).append(i)
            calls = [self._enqueue_group([current[i] for i in group]) for group in groups.values()]
            # several: sent together, so they leave in one write per server (the connections pipeline them)
            replies = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
            tries += 1
            waiting = []
            for group, group_results in zip(groups.values(), replies, strict=True):
                for i, result in zip(group, group_results, strict=True):
                    results[i] = result
                    job = current[i]
                    if isinstance(result, SHARE_REFUSALS) and job.idempotency_key is None:
                        other = self.tags.other_shard_id(job.job_id, job.model, tries)
                        if other is not None:
                            current[i] = dataclasses.replace(job, job_id=other)
                            waiting.append(i)
        return [result for result in results if result is not None]  # every one is set

    async def get(self, job_id: str, with_input: bool = False) -> JobRecord:
        """The job's record, or JobNotFound. The input stays in Redis unless asked for."""
        record = await self._read(job_id, _record_fields(with_input))
        if record is None:
            raise JobNotFound(job_id)
        return record

    async def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records of several jobs in one round trip; None where there is none."""
        return list(await asyncio.gather(*(self._read(job_id, RECORD_FIELDS) for job_id in job_ids)))

    async def schedule_object_deletion(self, object_key: str, at_ms: int, model: str) -> None:
        """An object the service hands out (an upload key for `model`) goes at `at_ms` (never earlier:
        GT); `model`'s workers delete it."""
        keys = self.model_shards(model)[0]
        await self._execute(self._node(keys.tag), ("ZADD", keys.objects, "GT", at_ms, object_key))

    async def cancel(self, record: JobRecord) -> JobStatus:
        """End a pending job as canceled (409 WrongState otherwise); repeating it is harmless."""
        keys, node = self._job(record.job_id)
        reply = await self._run(cancel_call(keys, self.settings, record), keys, node)
        return state_change(reply, record.job_id, "cancel", self.settings)

    async def retry(self, record: JobRecord, token: str) -> Enqueued:
        """Requeue a failed or expired job (refusals raised as for a submit); the same `token` again
        answers as its first run did, whatever the job did since (`created` False)."""
        keys, node = self._job(record.job_id)
        call = retry_call(keys, self.settings, record, token, limits=self.limits(record.model or ""))
        reply = await self._run(call, keys, node)
        return retry_result(reply, record.job_id, self.settings)


STAT_COUNTERS = ("enqueued", "completed", "failed", "retried", "recovered", "expired", "canceled")


# -- a worker's queue (sync) ----------------------------------------------------------------------


class WorkerQueue:
    """One worker's side of the protocol for the one model it serves."""

    def __init__(self, client: redis.Redis, settings: Settings, model: str, version: str, store: StoreKeys | None = None) -> None:
        """`store`: the model's keys (its tag on a Cluster, where `client` serves that tag's slot)."""
        self.client = client
        self.settings = settings
        self.store = store or StoreKeys(settings.key_prefix)
        self.keys: ModelKeys = self.store.model(model)
        self.version = version
        self._scripts = scripts_by_name()
        # job id -> its timings from the claim that started it, until a finish call sends it: finish
        # returns only the ids it ended, rather than reading each record's timings again (an ended id
        # missing here has them read after the call: `ended_timings`)
        self._timings: dict[str, Sequence[Any]] = {}

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One script call on a pooled connection, packed by hiredis. This is redis-py's `Script` call
        without its layers (argument checks, observability hooks, a retry wrapper set to no retries),
        which were 40% of a worker's CPU on small batches. No retry here either: a lost reply is an
        unknown outcome the loop reconciles. A connection that failed is dropped, never reused."""
        sha, source = self._scripts[name]
        keys = [*keys, self.store.migration_guard]
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))])  # type: ignore[no-untyped-call]
            try:
                return conn.read_response()
            except redis.exceptions.NoScriptError:  # a new or flushed server: EVAL also caches it
                conn.send_packed_command([hiredis.pack_command(("EVAL", source, len(keys), *keys, *args))])  # type: ignore[no-untyped-call]
                return conn.read_response()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        except redis.exceptions.ResponseError as exc:
            if not rerouted(exc, conn):
                raise
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise redis.exceptions.ConnectionError(f"the server no longer serves these keys ({exc})") from exc
        finally:
            pool.release(conn)

    @property
    def backstop_ms(self) -> int:
        """Recovery fails a job still running this long after its start: the watchdog should have
        aborted it at JOB_TIMEOUT_SECONDS; this only catches a worker that stopped answering."""
        s = self.settings
        return int((s.job_timeout_seconds * 2 + s.worker_ttl_seconds) * 1000)

    def claim(self, worker_id: str, count: int, held_in_batch: int = 0, moved: Sequence[str] = ()) -> ClaimedBatch:
        """Start up to `count` pending jobs (fair share across priorities) plus ids already `moved`
        into this worker's list; `held_in_batch` jobs already collected keep a suspect out."""
        k, s = self.keys, self.settings
        reply = self._run(
            "claim",
            [*k.pending_all, k.processing(worker_id), k.inflight, k.workers, k.stats, k.paused, self.store.notify],
            [
                worker_id, count, self.store.job_prefix, s.request_ttl_seconds * 1000, self.backstop_ms,
                int(s.worker_ttl_seconds * 1000), self.store.events, held_in_batch, self.version,
                s.job_ttl_seconds, self.store.principal_prefix, "1" if tracing.TRACER else "0", *moved,
            ],
        )  # fmt: skip
        batch = parse_claim(reply, tracing.TRACER is not None)
        self._timings.update(batch.timings)
        return batch

    def wait_for_job(self, worker_id: str, timeout_s: float) -> str | None:
        """Block until an id is pending at normal priority and move it into this worker's list
        (reliable-queue BLMOVE; other priorities are found by the claim that follows every wait, which
        also puts the id back unstarted if the model was paused meanwhile)."""
        # redis-py's stub says int; Redis takes a float timeout (>= 6.0)
        moved = self.client.blmove(self.keys.pending("normal"), self.keys.processing(worker_id), timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]
        return None if moved is None else _text(moved)

    def finish(
        self, worker_id: str, outcomes: Iterable[tuple[str, Outcome, str] | tuple[str, Outcome, str, str]]
    ) -> FinishCounts:
        """Record each held job's outcome (id, outcome, result JSON or error[, the run it is for, its
        ClaimedJob.started_at: a requeuing outcome then never touches a later run of the job]) and
        release them."""
        k, s = self.keys, self.settings
        args: list[Any] = [
            worker_id, self.store.job_prefix, s.job_ttl_seconds, s.max_attempts, self.store.events,
            s.max_dead_letters, self.store.principal_prefix,
        ]  # fmt: skip
        job_ids = []
        for job_id, outcome, payload, *run in outcomes:
            args += [job_id, str(outcome), payload, run[0] if run else ""]
            job_ids.append(job_id)
        # Each sent id's timings leave `_timings` before the call, whatever it does with the job (ends it,
        # requeues it: the claim that starts it again brings new ones, or ignores it). Not after: a claim
        # ahead on another I/O thread may start a job this call requeued as soon as Redis has run it, and
        # its new timings must stay.
        timings = {job_id: t for job_id in job_ids if (t := self._timings.pop(job_id, None)) is not None}
        try:
            reply = self._run(
                "finish", [k.processing(worker_id), k.inflight, k.dead, k.stats, self.store.notify, *k.pending_all], args
            )
        except BaseException:
            for job_id, timing in timings.items():  # sent again later; a newer claim's timings win
                self._timings.setdefault(job_id, timing)
            raise
        counts = parse_finish(reply, timings)
        if counts.untimed:  # ids no claim of this process read (see `ended_timings`): off the usual path
            read = self.ended_timings(counts.untimed)
            found = {timing.job_id for timing in read}
            counts = replace(counts, ended=counts.ended + read, untimed=tuple(i for i in counts.untimed if i not in found))
        return counts

    def ended_timings(self, job_ids: Sequence[str]) -> tuple[EndedTiming, ...]:
        """Ended jobs' timings read from their records in one round trip: the fields claim returns. For the
        ids a finish ends with no timing here: ids a claim of another queue object started under this
        worker id, or whose timings an earlier finish took (a second signal's `release_held` hands back a
        batch that still runs on and records its results). A record gone (deleted, or expired within the
        round trip) or never started is left out and counted in one debug line."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.store.job(job_id), "created_at", "queued_at", "started_at", "priority")
        try:
            rows = pipe.execute()
        except (*UNAVAILABLE, *REFUSED) as exc:  # the outcomes are recorded: the finish must not fail now
            log.warning("%d ended job(s) left out of the latency histograms: no records read (%s)", len(job_ids), exc)
            return ()
        read, gone, unstarted = [], 0, 0
        for job_id, (created, queued, started, priority) in zip(job_ids, rows, strict=True):
            if priority is None:  # every record has one from its enqueue on
                gone += 1
            elif started is None:
                unstarted += 1
            else:  # as claim replies them
                read.append(EndedTiming(_text(priority), int(created or 0), int(queued or 0), int(started), job_id))
        if gone or unstarted:
            log.debug("ended jobs left out of the latency histograms: %d record(s) gone, %d never started", gone, unstarted)
        return tuple(read)

    def extend(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """Push the backstop deadline of jobs this worker still runs forward (it is making progress:
        a batch of several model calls); returns how many moved."""
        if not job_ids:
            return 0
        reply = self._run("extend", [self.keys.inflight], [worker_id, self.store.job_prefix, self.backstop_ms, *job_ids])
        return int(reply)

    def heartbeat(self, worker_id: str) -> int:
        """Push this worker's heartbeat deadline forward; returns it (ms)."""
        k = self.keys
        return int(self._run("heartbeat", [k.workers, k.stats], [worker_id, int(self.settings.worker_ttl_seconds * 1000)]))

    def recover(self, worker_id: str) -> RecoverCounts | None:
        """Requeue dead workers' jobs and fail jobs past their backstop; None when another worker just
        did it or Redis was away a moment ago (grace)."""
        k, s = self.keys, self.settings
        reply = self._run(
            "recover",
            [k.workers, k.inflight, k.dead, k.recovery_lock, k.stats, self.store.notify, *k.pending_all],
            [
                worker_id, int(s.recovery_interval_seconds * 1000), self.store.job_prefix, s.max_attempts,
                s.job_ttl_seconds, self.store.events, k.processing_prefix, s.max_dead_letters, self.store.principal_prefix,
                int(s.worker_ttl_seconds * 1000),
            ],
        )  # fmt: skip
        if int(reply[0]) in (ScriptCode.RECOVERY_LOCK_HELD, ScriptCode.RECOVERY_GRACE):
            return None
        return RecoverCounts(*map(int, reply))

    def pending_lengths(self) -> list[int]:
        """How many ids wait at each priority, highest first (one pipelined round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.pending_all:
            pipe.llen(key)
        return [int(n) for n in pipe.execute()]

    def held(self, worker_id: str) -> list[str]:
        """Ids in this worker's processing list, oldest first."""
        return [_text(x) for x in reversed(self.client.lrange(self.keys.processing(worker_id), 0, -1))]

    def deregister(self, worker_id: str) -> None:
        """Clean exit: forget the worker; its processing list is empty by now."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.keys.workers, worker_id)
        pipe.delete(self.keys.processing(worker_id))
        pipe.execute()

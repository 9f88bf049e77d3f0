"""Every Redis key, built in one place. Lua scripts receive each key or key prefix from here.

Layout (prefix = KEY_PREFIX, model = a model name, a DNS label). On Redis Cluster every key of a model's
queue, its jobs' records and everything a script touches with them carry the model's hash tag, so one
script's keys share one slot: `prefix` below is then `KEY_PREFIX:{tag}` (jobqueue/shards.py chooses the
tags). The events channel is not a key (Cluster delivers a PUBLISH to every node) and stays untagged.

    <prefix>:job:<id>                     HASH   one job's record (any model)
    <prefix>:idem:<principal>:<key>       STRING idempotency key -> job id
    KEY_PREFIX:events                     PUBSUB "<status> <id> <id> ..." on every transition
    <prefix>:notify                       ZSET   job id -> next webhook attempt (ms)
    <prefix>:notify-failed                LIST   job ids whose webhook was given up
    <prefix>:principal:<name>             HASH   per-principal rate-limit bucket and unfinished count
    <prefix>:replica-ack                  STRING written before each Redis WAIT (jobqueue/replicas.py)
    <prefix>:migration-guard              never exists: last of every script's KEYS (see StoreKeys)
    <prefix>:objects                      ZSET   object key -> when to delete it (ms): uploads and result objects
    KEY_PREFIX:shards                     HASH   model -> its hash tag on a Cluster (jobqueue/shards.py)
    <prefix>:<model>:pending:<priority>   LIST   ids waiting to start; KEDA reads the lengths
    <prefix>:<model>:inflight             ZSET   id -> backstop deadline (ms); ZCARD is the in-flight count
    <prefix>:<model>:workers              ZSET   worker id -> heartbeat deadline (ms)
    <prefix>:<model>:processing:<worker>  LIST   ids one worker holds
    <prefix>:<model>:dead                 LIST   dead-lettered ids (bounded)
    <prefix>:<model>:stats                HASH   counters and the outage grace mark
    <prefix>:<model>:recovery-lock        STRING
    <prefix>:<model>:paused               STRING present while the model's queue is paused
"""

from __future__ import annotations

from dataclasses import dataclass

from jobqueue.settings import PRIORITIES


@dataclass(frozen=True)
class StoreKeys:
    """Keys shared by every model on one standalone Redis, or by one shard (hash tag) on a Cluster: job
    records, idempotency keys, webhooks, principals, and each model's queue keys."""

    root: str  # KEY_PREFIX
    tag: str = ""  # the shard's hash tag on a Cluster; "" keeps the standalone layout

    @property
    def prefix(self) -> str:
        return f"{self.root}:{{{self.tag}}}" if self.tag else self.root

    @property
    def job_prefix(self) -> str:
        return f"{self.prefix}:job:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    @property
    def idempotency_prefix(self) -> str:
        return f"{self.prefix}:idem:"

    def idempotency(self, principal: str, key: str) -> str:
        """Scoped per principal: one client's key never finds another's job."""
        return f"{self.idempotency_prefix}{principal}:{key}"

    @property
    def events(self) -> str:
        """Pub/Sub channel: '<status> <id> <id> ...' whenever jobs change state."""
        return f"{self.root}:events"

    @property
    def migration_guard(self) -> str:
        """A key that never exists, named last in every script's KEYS: while a Cluster moves the slot,
        a key missing from the node makes Redis refuse the whole script (TRYAGAIN) before it runs,
        rather than run it against a half-moved slot (its records read by name would be gone mid-way)."""
        return f"{self.prefix}:migration-guard"

    @property
    def shard_registry(self) -> str:
        """HASH model name -> the hash tag its keys carry on a Cluster; never read by a script."""
        return f"{self.root}:shards"

    @property
    def notify(self) -> str:
        """ZSET job id -> when its next webhook attempt is due (ms)."""
        return f"{self.prefix}:notify"

    @property
    def notify_failed(self) -> str:
        """LIST of job ids whose webhook delivery was given up."""
        return f"{self.prefix}:notify-failed"

    @property
    def replica_ack(self) -> str:
        """STRING with a short TTL: the write that gives a WAIT the replication offset to wait for."""
        return f"{self.prefix}:replica-ack"

    @property
    def objects(self) -> str:
        """ZSET object key (in OBJECT_STORE_URL's bucket) -> when it is deleted (ms); workers sweep it."""
        return f"{self.prefix}:objects"

    @property
    def principal_prefix(self) -> str:
        return f"{self.prefix}:principal:"

    def principal(self, name: str) -> str:
        """HASH: token bucket (tokens, at) and `unfinished` job count of one principal."""
        return self.principal_prefix + name

    def model(self, name: str) -> ModelKeys:
        return ModelKeys(self.prefix, name)


@dataclass(frozen=True)
class ModelKeys:
    """Keys of one model's queue."""

    prefix: str
    name: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.name}:"

    def pending(self, priority: str = "normal") -> str:
        """LIST of ids waiting to start at one priority; nothing else ever goes in it."""
        return f"{self.base}pending:{priority}"

    @property
    def pending_all(self) -> tuple[str, ...]:
        """The pending lists, highest priority first."""
        return tuple(self.pending(p) for p in PRIORITIES)

    @property
    def inflight(self) -> str:
        return self.base + "inflight"

    @property
    def workers(self) -> str:
        return self.base + "workers"

    @property
    def processing_prefix(self) -> str:
        return self.base + "processing:"

    def processing(self, worker_id: str) -> str:
        """LIST of ids one worker holds: claimed but not yet acknowledged."""
        return self.processing_prefix + worker_id

    @property
    def dead(self) -> str:
        return self.base + "dead"

    @property
    def stats(self) -> str:
        return self.base + "stats"

    @property
    def recovery_lock(self) -> str:
        return self.base + "recovery-lock"

    @property
    def paused(self) -> str:
        return self.base + "paused"

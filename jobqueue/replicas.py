"""Acknowledge nothing that only the primary holds: REDIS_MIN_REPLICAS_ACK replicas must confirm first.

Redis replicates asynchronously, so a write the primary answered can be lost when Sentinel promotes a
replica that had not received it yet. `WAIT n timeout` blocks until n replicas have acknowledged the
calling connection's last write. Replication is one ordered stream, so a WAIT that follows a write made
*after* some other write was answered (on any connection) also covers that other write. `ReplicaAcks`
uses this:

- after a submit, bulk submit, retry or cancel was answered, and before a job's end is shown to anyone
  (long poll, SSE, WebSocket, webhook), the caller asks `confirm()`;
- one round (a small write + WAIT) covers every caller that asked before the round started: concurrent
  requests share one WAIT (a group commit), and a round already in flight never counts for a caller
  that asked after it began;
- the round runs on the very connection that carried the caller's command (the API's shared one,
  jobqueue/multiplex.py): a WAIT answered by another server (after a failover, the new primary) says
  nothing about what the old one took, so a lost connection confirms nothing (503, try again).

A worker's result therefore needs no WAIT of its own: it is shown only after a reporter's round covered
it, so a worker that dies between its result write and any WAIT loses nothing that anyone saw (if the
primary dies with it, the job is run again: at-least-once processing, exactly-once results).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import redis.exceptions

from jobqueue.keys import StoreKeys
from jobqueue.multiplex import MARKER_TTL_MS, MultiplexedRedis
from jobqueue.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio
    import redis.asyncio.client


class ReplicasBehind(redis.exceptions.ConnectionError):
    """Fewer than REDIS_MIN_REPLICAS_ACK replicas confirmed within REDIS_REPLICA_ACK_TIMEOUT_MS.

    A ConnectionError on purpose: every caller already treats "Redis unavailable" as "answer 503 /
    try again later", which is what this is. What was written may still be on the primary (and survive)."""

    def __init__(self, acked: int, required: int, timeout_ms: int) -> None:
        super().__init__(
            f"{acked} of REDIS_MIN_REPLICAS_ACK={required} replicas confirmed within REDIS_REPLICA_ACK_TIMEOUT_MS={timeout_ms}"
        )


class ReplicaAcks:
    """Group-committed `WAIT` on a MultiplexedRedis: `await confirm(serial)` returns once what connection
    `serial` answered the caller is held by enough replicas, or raises ReplicasBehind (or ConnectionError
    when that connection is gone). With REDIS_MIN_REPLICAS_ACK=0 it returns at once and sends nothing."""

    def __init__(self, multiplexed: MultiplexedRedis, settings: Settings, marker: str) -> None:
        """`marker`: a key on `multiplexed`'s server (on a Cluster: in the slot it serves)."""
        self.redis = multiplexed
        self.required = settings.redis_min_replicas_ack
        self.timeout_ms = settings.redis_replica_ack_timeout_ms
        self.marker = marker
        self._lock = asyncio.Lock()
        self._asked = 0  # tickets handed out, one per confirm()
        self._covered = 0  # the highest ticket the last finished round covers ...
        self._covered_serial = 0  # ... on this connection ...
        self._covered_acked = 0  # ... and how many replicas it counted

    async def confirm(self, serial: int) -> None:
        if not self.required:
            return
        self._asked += 1
        ticket = self._asked
        async with self._lock:  # one round at a time; callers that asked meanwhile wait for the next
            if self._covered < ticket or self._covered_serial != serial:
                covers = self._asked  # everyone who asked before this round's write is sent
                acked = await self.redis.wait_replicas(serial, self.marker, self.required, self.timeout_ms)
                self._covered, self._covered_serial, self._covered_acked = covers, serial, acked
            acked = self._covered_acked
        if acked < self.required:
            raise ReplicasBehind(acked, self.required, self.timeout_ms)


async def execute_confirmed(pipe: redis.asyncio.client.Pipeline, settings: Settings, keys: StoreKeys | None = None) -> list[Any]:
    """Run a pipeline (one connection) and return its replies once REDIS_MIN_REPLICAS_ACK replicas hold
    what it wrote or read: a marker write and WAIT go last on the same connection; ReplicasBehind
    otherwise. For callers outside the API's shared connection (the notifier, an operator's retry-all)."""
    required = settings.redis_min_replicas_ack
    if not required:
        return list(await pipe.execute())
    pipe.set((keys or StoreKeys(settings.key_prefix)).replica_ack, "1", px=MARKER_TTL_MS)
    pipe.wait(required, settings.redis_replica_ack_timeout_ms)
    *replies, _, acked = await pipe.execute()
    if int(acked) < required:
        raise ReplicasBehind(int(acked), required, settings.redis_replica_ack_timeout_ms)
    return replies

"""One overall deadline for each call the API makes to Redis: connect, handshake, command and retries.

redis-py bounds each step on its own (socket connect, each read of the handshake, each read of the
reply) and retries each of them, nested: against a stalled server (SIGSTOP, a frozen VM) a request
waited ~100 s for its 503. Here the whole call gets REDIS_DEADLINE_SECONDS; when it expires the caller
sees `redis.exceptions.TimeoutError`, which the API answers with 503.

A command already written to the socket when the deadline hits may still run if Redis resumes: the
client cannot take it back. Every command the API sends is safe to repeat (jobqueue/connection.py), and
a submit repeated with the same Idempotency-Key finds the job that command stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
import redis.asyncio.client
import redis.exceptions


def expired(seconds: float) -> redis.exceptions.TimeoutError:
    return redis.exceptions.TimeoutError(f"no answer from Redis within {seconds:g}s (REDIS_DEADLINE_SECONDS)")


@asynccontextmanager
async def redis_deadline(seconds: float, left_s: float | None = None) -> AsyncIterator[None]:
    """Cancel what runs inside after `left_s` (default: `seconds`), raising redis-py's TimeoutError
    naming the deadline, so callers map it as they map any Redis timeout."""
    scope = asyncio.timeout(seconds if left_s is None else left_s)
    try:
        async with scope:
            yield
    except TimeoutError:
        if scope.expired():
            raise expired(seconds) from None
        raise


class DeadlinePipeline(redis.asyncio.client.Pipeline):
    """A pipeline whose `execute` (all its commands, one round trip) is bounded by the deadline."""

    deadline_s: float = 5.0

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        async with redis_deadline(self.deadline_s):
            return await super().execute(raise_on_error)


class DeadlineRedis(redis.asyncio.Redis):
    """redis-py's asyncio client with every command (scripts included) and every pipeline bounded by
    `deadline_s`, retries and reconnects included. Pub/Sub is not: a subscription waits by design."""

    deadline_s: float = 5.0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with redis_deadline(self.deadline_s):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> DeadlinePipeline:
        pipe = DeadlinePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.deadline_s = self.deadline_s
        return pipe

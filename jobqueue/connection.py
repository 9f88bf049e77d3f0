"""Redis clients built the same way for the API (asyncio) and the worker (sync)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialBackoff

from jobqueue.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio

# Long enough for a blocking BLMOVE (1 s) plus a slow round trip; short enough to notice a dead server.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
POOL_TIMEOUT_S = 10.0
# Connection errors this protocol treats as "Redis is unavailable right now".
UNAVAILABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)
# Error replies: Redis refused the command (OOM at maxmemory, READONLY after a failover, MISCONF,
# NOPERM, ...). Nothing was written (a script is refused before its first write), so it is retried
# later, never counted as the job's failure.
REFUSED: tuple[type[BaseException], ...] = (redis.ResponseError,)


def _options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
    }
    password = settings.redis_password_value
    if password:
        options["password"] = password
    return options


def sync_client(settings: Settings) -> redis.Redis:
    """The worker's client: no automatic retries. A reply lost to a reset or a timeout may hide a
    command that ran (BLMOVE moved an id, claim started jobs); retrying it blindly would start more.
    The worker instead treats the error as "unknown outcome" and reconciles with what Redis holds."""
    return redis.Redis.from_url(settings.redis_url, retry=redis.retry.Retry(ExponentialBackoff(), 0), **_options(settings))


def async_client(settings: Settings, max_connections: int = 64) -> redis.asyncio.Redis:
    """The API's client; each call, its retries included, ends within REDIS_DEADLINE_SECONDS
    (jobqueue/deadline.py). Every command it sends is safe to repeat (reads; enqueue keyed by a job id
    fixed before the first try; cancel and retry answer "done" when run twice), so a stale pooled
    connection after a Redis restart is retried on a fresh one instead of failing a request."""
    import redis.asyncio  # here, not at the top: a worker never pays for asyncio

    from jobqueue.deadline import DeadlineRedis

    retry = redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
    # A blocking pool: a burst of more concurrent requests than connections waits for a free one
    # (up to POOL_TIMEOUT_S) instead of failing with "Too many connections".
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=POOL_TIMEOUT_S,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **_options(settings),
    )
    client = DeadlineRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as `from_pool`: the client owns the pool, aclose() closes it
    client.deadline_s = settings.redis_deadline_seconds  # retries and reconnects included
    return client


def async_probe_client(settings: Settings) -> redis.asyncio.Redis:
    """One connection of its own for readiness: a saturated request pool never makes a pod unready."""
    import redis.asyncio

    pool = redis.asyncio.ConnectionPool.from_url(settings.redis_url, max_connections=1, **_options(settings))
    return redis.asyncio.Redis.from_pool(pool)

"""Redis clients built the same way for the API (asyncio) and the worker (sync)."""

from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff

from jobqueue.settings import Settings

# Long enough for a blocking BLMOVE (1 s) plus a slow round trip; short enough to notice a dead server.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
POOL_TIMEOUT_S = 10.0
# Connection errors this protocol treats as "Redis is unavailable right now".
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


def _options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
        # After a Redis restart every pooled connection is stale: retry once or twice on a fresh one
        # instead of failing a request. A retried script whose reply was lost is harmless: ids are
        # fixed by the caller and every script checks the job's state before changing it.
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    if settings.redis_password:
        options["password"] = settings.redis_password
    return options


def sync_client(settings: Settings) -> redis.Redis:
    retry = redis.retry.Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
    return redis.Redis.from_url(settings.redis_url, retry=retry, **_options(settings))


def async_client(settings: Settings, max_connections: int = 64) -> redis.asyncio.Redis:
    retry = redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
    # A blocking pool: a burst of more concurrent requests than connections waits for a free one
    # (up to POOL_TIMEOUT_S) instead of failing with "Too many connections".
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=POOL_TIMEOUT_S, retry=retry, **_options(settings)
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it

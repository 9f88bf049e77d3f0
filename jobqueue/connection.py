"""Redis clients built the same way for the API (asyncio) and the worker (sync).

With REDIS_SENTINELS set, every client asks the Sentinels for the primary's address each time it
connects (redis-py's Sentinel support); REDIS_URL still gives the db, credentials and TLS. A failover is
followed without a restart: a connection to the old primary fails (reset, timeout) or is refused with
READONLY once it is demoted, redis-py's Sentinel connection turns READONLY into a ConnectionError and
drops the socket, and the next connect finds the new primary. The callers' rules stay as they are: the
API retries (every command it sends is safe to repeat), a worker treats a lost reply as an unknown
outcome and reconciles."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.sentinel
from redis.backoff import ExponentialBackoff

from jobqueue.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio

# Long enough for a blocking BLMOVE (1 s) plus a slow round trip; short enough to notice a dead server.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
POOL_TIMEOUT_S = 10.0
# One Sentinel's answer to "where is the primary?": a dead or frozen Sentinel must not hold up the
# question for longer than it takes to ask the next one.
SENTINEL_TIMEOUT_S = 1.0
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


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs ("[::1]:26379" for an IPv6 address)."""
    addresses = []
    for item in filter(None, (part.strip() for part in settings.redis_sentinels.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_SENTINELS: {item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _primary_kwargs(settings: Settings, parsed: dict[str, Any]) -> dict[str, Any]:
    """A Sentinel pool's connection options: REDIS_URL's db, credentials and TLS options (parsed by
    redis-py's own `parse_url`), without its address, which the Sentinels give."""
    if urlsplit(settings.redis_url).scheme not in ("redis", "rediss"):
        raise ValueError("REDIS_SENTINELS needs a redis:// or rediss:// REDIS_URL (its host is ignored)")
    kwargs = {k: v for k, v in parsed.items() if k not in ("host", "port", "path", "connection_class")}
    kwargs["ssl"] = urlsplit(settings.redis_url).scheme == "rediss"  # picks the Sentinel-managed TLS connection
    return {**kwargs, **_options(settings)}


def _sentinel_options(settings: Settings, primary: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: their own password, REDIS_URL's TLS settings."""
    options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": min(CONNECT_TIMEOUT_S, SENTINEL_TIMEOUT_S),
        "decode_responses": True,
    }
    options.update({k: v for k, v in primary.items() if k == "ssl" or k.startswith("ssl_")})
    password = settings.secret("", settings.redis_sentinel_password_file)
    if password:
        options["password"] = password
    return options


def sync_client(settings: Settings) -> redis.Redis:
    """The worker's client: no automatic retries. A reply lost to a reset or a timeout may hide a
    command that ran (BLMOVE moved an id, claim started jobs); retrying it blindly would start more.
    The worker instead treats the error as "unknown outcome" and reconciles with what Redis holds."""
    retry = redis.retry.Retry(ExponentialBackoff(), 0)
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, retry=retry, **_options(settings))
    primary = _primary_kwargs(settings, redis.connection.parse_url(settings.redis_url))  # type: ignore[no-untyped-call]
    sentinels = redis.sentinel.Sentinel(sentinel_addresses(settings), sentinel_kwargs=_sentinel_options(settings, primary))
    pool = redis.sentinel.SentinelConnectionPool(settings.redis_sentinel_master, sentinels, retry=retry, **primary)  # type: ignore[no-untyped-call]
    return redis.Redis(connection_pool=pool, retry=retry)


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
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": POOL_TIMEOUT_S,
        "retry": retry,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    pool = (
        _async_sentinel_pool(settings, _blocking_sentinel_pool(), options)
        if settings.redis_sentinels
        else redis.asyncio.BlockingConnectionPool.from_url(settings.redis_url, **options, **_options(settings))
    )
    client = DeadlineRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as `from_pool`: the client owns the pool, aclose() closes it
    client.deadline_s = settings.redis_deadline_seconds  # retries and reconnects included
    return client


def async_probe_client(settings: Settings) -> redis.asyncio.Redis:
    """One connection of its own for readiness: a saturated request pool never makes a pod unready."""
    import redis.asyncio
    import redis.asyncio.sentinel

    if settings.redis_sentinels:
        pool = _async_sentinel_pool(settings, redis.asyncio.sentinel.SentinelConnectionPool, {"max_connections": 1})
    else:
        pool = redis.asyncio.ConnectionPool.from_url(settings.redis_url, max_connections=1, **_options(settings))
    return redis.asyncio.Redis.from_pool(pool)


def _async_sentinel_pool(settings: Settings, pool_class: type[Any], options: dict[str, Any]) -> Any:
    import redis.asyncio.connection
    import redis.asyncio.sentinel

    primary = _primary_kwargs(settings, dict(redis.asyncio.connection.parse_url(settings.redis_url)))
    sentinels = redis.asyncio.sentinel.Sentinel(
        sentinel_addresses(settings), sentinel_kwargs=_sentinel_options(settings, primary)
    )
    return pool_class(settings.redis_sentinel_master, sentinels, **options, **primary)


async def primary_moved(client: redis.asyncio.Redis, connection: Any) -> bool:
    """True when the Sentinels name another primary than the one `connection` talks to (a failover
    happened: a frozen old primary keeps a subscription silent instead of closing it). Always False
    without Sentinels; a Sentinel that does not answer in time says nothing either."""
    import asyncio

    pool: Any = client.connection_pool
    if not uses_sentinels(connection) or not hasattr(pool, "sentinel_manager"):
        return False
    try:
        async with asyncio.timeout(SENTINEL_TIMEOUT_S * 2):
            host, port = await pool.sentinel_manager.discover_master(pool.service_name)
    except (TimeoutError, redis.ConnectionError, redis.TimeoutError, OSError):  # UNAVAILABLE, and our own timeout
        return False
    return (host, int(port)) != (connection.host, int(connection.port))


def demoted(error: BaseException) -> bool:
    """The server is a replica now (a failover): READONLY, also as a script's error (Redis 6.2 runs the
    script and refuses its first write), or a blocked command released by the demotion. Nothing was
    written; a client that found the server through the Sentinels reconnects and asks them again."""
    text = str(error)
    return (
        isinstance(error, redis.exceptions.ReadOnlyError)
        or "-READONLY " in text
        or text.startswith(redis.sentinel.DEMOTED_MASTER_UNBLOCKED_ERROR)
    )


def uses_sentinels(connection: Any) -> bool:
    """True for a connection whose address came from the Sentinels (READONLY then means "rediscover")."""
    import redis.asyncio.sentinel

    return isinstance(connection, (redis.asyncio.sentinel.SentinelManagedConnection, redis.sentinel.SentinelManagedConnection))


@functools.cache
def _blocking_sentinel_pool() -> type[Any]:
    """Built on first use: it subclasses asyncio classes a worker never imports."""
    import redis.asyncio.sentinel

    class BlockingSentinelPool(redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
        """Sentinel discovery with the blocking pool's wait for a free connection (see `async_client`)."""

    return BlockingSentinelPool

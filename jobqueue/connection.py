"""Redis clients built the same way for the API (asyncio) and the worker (sync).

With REDIS_SENTINELS set, every client asks the Sentinels for the primary's address each time it
connects (redis-py's Sentinel support); REDIS_URL still gives the db, credentials and TLS. A failover is
followed without a restart: a connection to the old primary fails (reset, timeout) or is refused with
READONLY once it is demoted, redis-py's Sentinel connection turns READONLY into a ConnectionError and
drops the socket, and the next connect finds the new primary. The callers' rules stay as they are: the
API retries (every command it sends is safe to repeat), a worker treats a lost reply as an unknown
outcome and reconciles.

With REDIS_CLUSTER, a client serves the keys of one hash slot (one model's tag, jobqueue/shards.py: every
key a script touches is in it) and asks the Cluster's nodes which master serves that slot each time it
connects, as a Sentinel client asks where the primary is. A MOVED reply (a failover or a resharding moved
the slot) is turned into a ConnectionError that drops the socket, exactly like READONLY under Sentinels:
nothing ran, and the next connect finds the new master. ASK and TRYAGAIN (a slot half-way through a
migration) and CLUSTERDOWN are refusals: nothing ran either, the caller retries later."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot

from jobqueue.keys import StoreKeys
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
# A Cluster slot half-way through a move (ASK: the key moved already; TRYAGAIN: some of a script's keys
# did) or a Cluster down for the slot: refusals (nothing ran) that end on their own within seconds.
CLUSTER_BUSY: tuple[type[BaseException], ...] = (
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.AskError,
)


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


class ClusterNodes:
    """The Cluster's node addresses as last seen (REDIS_URL's node first), asked which master serves a
    slot: any node that answers CLUSTER SLOTS will do, and every node it names is remembered, so the seed
    itself may go away."""

    def __init__(self, settings: Settings) -> None:
        parsed = redis.connection.parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        self.addresses: list[tuple[str, int]] = [(parsed.get("host", "localhost"), int(parsed.get("port", 6379)))]
        keep = ("username", "password", "ssl", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
        self.kwargs = {k: v for k, v in {**parsed, **_options(settings)}.items() if k in keep or k.startswith("ssl_")}
        self.kwargs.update(socket_timeout=CONNECT_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S, decode_responses=True)
        self.kwargs["ssl"] = urlsplit(settings.redis_url).scheme == "rediss"

    def _learn(self, slots: list[Any], slot: int) -> tuple[str, int]:
        owner = None
        for start, end, master, *replicas in slots:
            for node in (master, *replicas):
                address = (_text(node[0]) or self.addresses[0][0], int(node[1]))
                if address not in self.addresses:
                    self.addresses.append(address)
            if int(start) <= slot <= int(end):
                owner = (_text(master[0]) or self.addresses[0][0], int(master[1]))
        if owner is None:
            raise redis.ConnectionError(f"no master serves slot {slot} (cluster_state is not ok)")
        return owner

    def _unreachable(self, address: tuple[str, int], error: BaseException) -> str:
        """A node that did not answer is asked last from now on (a dead one costs a connect timeout)."""
        if address in self.addresses:
            self.addresses.remove(address)
            self.addresses.append(address)
        return f"{address[0]}:{address[1]}: {error}"

    def owner(self, slot: int) -> tuple[str, int]:
        """The address of the master serving `slot`, as the first node that answers says."""
        errors = []
        for host, port in list(self.addresses):
            try:
                with redis.Redis(host=host, port=port, **self.kwargs) as node:
                    return self._learn(node.execute_command("CLUSTER", "SLOTS"), slot)
            except UNAVAILABLE as exc:
                errors.append(self._unreachable((host, port), exc))
        raise redis.ConnectionError(f"no Cluster node answered ({'; '.join(errors)})")

    async def owner_async(self, slot: int) -> tuple[str, int]:
        import redis.asyncio

        errors = []
        for host, port in list(self.addresses):
            try:
                async with redis.asyncio.Redis(host=host, port=port, **self.kwargs) as node:
                    return self._learn(await node.execute_command("CLUSTER", "SLOTS"), slot)  # type: ignore[no-untyped-call]
            except UNAVAILABLE as exc:
                errors.append(self._unreachable((host, port), exc))
        raise redis.ConnectionError(f"no Cluster node answered ({'; '.join(errors)})")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _SlotOwner:
    """Mixed into a redis-py connection class: connect to whichever master serves `slot` now."""

    nodes: ClusterNodes
    slot: int

    def __init__(self, *, nodes: ClusterNodes, slot: int, **kwargs: Any) -> None:
        self.nodes, self.slot = nodes, slot
        super().__init__(**kwargs)

    # Every (re)connect goes through connect_check_health: `connect` calls it, and so does a command sent
    # on a connection that was dropped (redis-py reconnects there without `connect`).
    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_sock", None) is None:
            self.host, self.port = self.nodes.owner(self.slot)
        return super().connect_check_health(*args, **kwargs)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError as exc:
            if not moved(exc):
                raise
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(f"the slot moved ({exc})") from exc


class _AsyncSlotOwner(_SlotOwner):
    async def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "is_connected", False):
            self.host, self.port = await self.nodes.owner_async(self.slot)
        return await super(_SlotOwner, self).connect_check_health(*args, **kwargs)  # type: ignore[misc]

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super(_SlotOwner, self).read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError as exc:
            if not moved(exc):
                raise
            await self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(f"the slot moved ({exc})") from exc


@functools.cache
def _slot_owner_class(base: type[Any], mixin: type[Any]) -> type[Any]:
    return type(f"SlotOwner{base.__name__}", (mixin, base), {})


def _cluster_pool(settings: Settings, slot_key: str, pool_class: type[Any], options: dict[str, Any], asynchronous: bool) -> Any:
    """A pool whose connections serve `slot_key`'s slot (REDIS_URL's credentials and TLS options)."""
    import redis.asyncio.connection

    module: Any = redis.asyncio.connection if asynchronous else redis.connection
    parsed = dict(module.parse_url(settings.redis_url))
    base = parsed.pop("connection_class", module.Connection)
    mixin = _AsyncSlotOwner if asynchronous else _SlotOwner
    nodes = _cluster_nodes(settings)
    return pool_class(
        connection_class=_slot_owner_class(base, mixin),
        nodes=nodes,
        slot=key_slot(slot_key.encode()),
        **{**parsed, **_options(settings), **options},
    )


_NODES: dict[str, ClusterNodes] = {}


def _cluster_nodes(settings: Settings) -> ClusterNodes:
    """One view of the Cluster per REDIS_URL and process: what one client learns, the others use."""
    if settings.redis_url not in _NODES:
        _NODES[settings.redis_url] = ClusterNodes(settings)
    return _NODES[settings.redis_url]


def uses_cluster(connection: Any) -> bool:
    """True for a connection that found its server by asking the Cluster (MOVED then means "ask again")."""
    return isinstance(connection, _SlotOwner)


def moved(error: BaseException) -> bool:
    """A Cluster node no longer serves the slot (a failover or a resharding): nothing ran."""
    return isinstance(error, redis.exceptions.MovedError) or str(error).startswith("MOVED ")


def rerouted(error: BaseException, connection: Any) -> bool:
    """The server `connection` found is no longer the one to talk to (a Sentinel failover demoted it,
    or the Cluster moved the slot): nothing ran; drop the socket, and the next connect asks again."""
    return (demoted(error) and uses_sentinels(connection)) or (moved(error) and uses_cluster(connection))


def sync_client(settings: Settings, slot_key: str = "") -> redis.Redis:
    """The worker's client: no automatic retries. A reply lost to a reset or a timeout may hide a
    command that ran (BLMOVE moved an id, claim started jobs); retrying it blindly would start more.
    The worker instead treats the error as "unknown outcome" and reconciles with what Redis holds.
    With REDIS_CLUSTER it serves `slot_key`'s slot (every key of one model's tag)."""
    retry = redis.retry.Retry(ExponentialBackoff(), 0)
    if settings.redis_cluster:
        pool = _cluster_pool(settings, slot_key, redis.ConnectionPool, {"retry": retry}, asynchronous=False)
        return redis.Redis(connection_pool=pool, retry=retry)
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, retry=retry, **_options(settings))
    primary = _primary_kwargs(settings, redis.connection.parse_url(settings.redis_url))  # type: ignore[no-untyped-call]
    sentinels = redis.sentinel.Sentinel(sentinel_addresses(settings), sentinel_kwargs=_sentinel_options(settings, primary))
    pool = redis.sentinel.SentinelConnectionPool(settings.redis_sentinel_master, sentinels, retry=retry, **primary)  # type: ignore[no-untyped-call]
    return redis.Redis(connection_pool=pool, retry=retry)


def async_client(settings: Settings, max_connections: int = 64, slot_key: str = "") -> redis.asyncio.Redis:
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
    if settings.redis_cluster:
        pool = _cluster_pool(settings, slot_key, redis.asyncio.BlockingConnectionPool, options, asynchronous=True)
    elif settings.redis_sentinels:
        pool = _async_sentinel_pool(settings, _blocking_sentinel_pool(), options)
    else:
        pool = redis.asyncio.BlockingConnectionPool.from_url(settings.redis_url, **options, **_options(settings))
    client = DeadlineRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as `from_pool`: the client owns the pool, aclose() closes it
    client.deadline_s = settings.redis_deadline_seconds  # retries and reconnects included
    return client


def async_node_client(settings: Settings, host: str, port: int) -> redis.asyncio.Redis:
    """A client for one Cluster node by its address (the target of a slot's move, named by ASK), with
    REDIS_URL's credentials and TLS options."""
    import redis.asyncio

    parsed = dict(redis.asyncio.connection.parse_url(settings.redis_url))
    parsed.update(host=host, port=port)
    return redis.asyncio.Redis(connection_pool=redis.asyncio.ConnectionPool(**{**parsed, **_options(settings)}))


def async_probe_client(settings: Settings) -> redis.asyncio.Redis:
    """One connection of its own for readiness: a saturated request pool never makes a pod unready."""
    import redis.asyncio
    import redis.asyncio.sentinel

    if settings.redis_cluster:  # the node serving the shard registry: any answer means the Cluster is reachable
        pool = _cluster_pool(
            settings,
            StoreKeys(settings.key_prefix).shard_registry,
            redis.asyncio.ConnectionPool,
            {"max_connections": 1},
            asynchronous=True,
        )
    elif settings.redis_sentinels:
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

"""With REDIS_SENTINELS, every client takes the primary's address from the Sentinels and everything
else from REDIS_URL: db, credentials, TLS. (Failover itself: tests/faults/test_sentinel_failover.py.)"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio.sentinel
import redis.sentinel

from jobqueue.connection import async_client, async_probe_client, sentinel_addresses, sync_client
from jobqueue.settings import Settings

URL = "rediss://jobs:s3cret@ignored.example:6380/3?ssl_cert_reqs=none"


@pytest.fixture
def settings(tmp_path) -> Settings:
    password = tmp_path / "sentinel-password"
    password.write_text("watch-me\n")
    return Settings(
        redis_url=URL,
        redis_sentinels="10.0.0.1:26379, sentinel-b:26380,[::1]:26381",
        redis_sentinel_master="jobs",
        redis_sentinel_password_file=str(password),
    )


def test_sentinel_addresses_are_host_port_pairs(settings: Settings) -> None:
    assert sentinel_addresses(settings) == [("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381)]
    with pytest.raises(ValueError, match="host:port"):
        sentinel_addresses(Settings(redis_sentinels="no-port"))


def test_the_worker_client_takes_db_credentials_and_tls_from_redis_url(settings: Settings) -> None:
    pool = sync_client(settings).connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool) and pool.service_name == "jobs"
    assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "jobs", "s3cret")
    assert "host" not in kwargs and "port" not in kwargs  # the Sentinels give the address
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == ["10.0.0.1", "sentinel-b", "::1"]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"watch-me"}


def test_the_api_clients_take_db_credentials_and_tls_from_redis_url(settings: Settings) -> None:
    async def pools() -> list[redis.asyncio.ConnectionPool]:
        return [async_client(settings).connection_pool, async_probe_client(settings).connection_pool]

    requests, probe = asyncio.run(pools())
    assert isinstance(requests, redis.asyncio.BlockingConnectionPool)  # a burst waits for a free connection
    for pool in (requests, probe):
        assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
        assert pool.connection_class is redis.asyncio.sentinel.SentinelManagedSSLConnection
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "s3cret")
        assert {s.connection_pool.connection_kwargs["password"] for s in pool.sentinel_manager.sentinels} == {"watch-me"}


def test_without_sentinels_the_clients_are_plain_url_clients() -> None:
    pool = sync_client(Settings(redis_url="redis://127.0.0.1:6390/2")).connection_pool
    assert not isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"], pool.connection_kwargs["db"]) == (
        "127.0.0.1",
        6390,
        2,
    )

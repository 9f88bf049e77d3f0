"""The API's shared Redis connection (jobqueue/multiplex.py) against a real redis-server: replies reach
the right callers under concurrency and cancellation, errors keep redis-py's classes, a silent server
times out every waiting command, and a restarted server is reconnected to."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import redis.asyncio
from stack import RedisServer

from jobqueue.multiplex import MultiplexedRedis

T = TypeVar("T")


def run(url: str, body: Callable[[MultiplexedRedis], Awaitable[T]], timeout_s: float = 5.0) -> T:
    async def main() -> T:
        # the socket timeout bounds a reconnect's handshake, as in jobqueue/connection.py
        pool = redis.asyncio.ConnectionPool.from_url(url, decode_responses=True, socket_timeout=timeout_s)
        shared = MultiplexedRedis(pool.make_connection, timeout_s)
        try:
            return await body(shared)
        finally:
            await shared.aclose()
            await pool.aclose()

    return asyncio.run(main())


def test_concurrent_callers_each_get_their_own_reply(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    redis_client.mset({f"k{i}": f"v{i}" for i in range(2000)})
    before = {c["id"] for c in redis_client.client_list()}  # an earlier test's process may still be leaving

    async def body(shared: MultiplexedRedis) -> list[object]:
        async def one(i: int) -> object:
            await asyncio.sleep(random.random() / 100)  # callers interleave at random
            return await shared.execute("GET", f"k{i}")

        replies = await asyncio.gather(*(one(i) for i in range(2000)))
        # one connection served them all (checked while it is open)
        opened = [c for c in redis_client.client_list() if c["id"] not in before]
        assert len(opened) == 1, opened
        return replies

    assert run(redis_server.url, body) == [f"v{i}" for i in range(2000)]


def test_cancelled_callers_do_not_shift_replies(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """A caller that goes away (a disconnected HTTP client) leaves its reply to be dropped, not handed
    to the next caller."""
    redis_client.mset({f"k{i}": f"v{i}" for i in range(500)})

    async def body(shared: MultiplexedRedis) -> tuple[list[object], int]:
        tasks = [asyncio.ensure_future(shared.execute("GET", f"k{i}")) for i in range(500)]
        await asyncio.sleep(0)  # every command is queued; cancel every third before its reply
        for task in tasks[::3]:
            task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        after = await asyncio.gather(*(shared.execute("GET", f"k{i}") for i in range(500)))
        answered = [r for i, r in enumerate(done) if i % 3]
        assert answered == [f"v{i}" for i in range(500) if i % 3]
        return after, sum(isinstance(r, asyncio.CancelledError) for r in done)

    after, cancelled = run(redis_server.url, body)
    assert cancelled == len(range(0, 500, 3))
    assert after == [f"v{i}" for i in range(500)]


def test_error_replies_are_redis_py_exceptions_and_spare_the_others(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    redis_client.set("text", "abc")

    async def body(shared: MultiplexedRedis) -> list[object]:
        return await asyncio.gather(
            shared.execute("INCR", "text"),
            shared.execute("GET", "text"),
            shared.execute("HMGET", "missing", "a", "b"),
            return_exceptions=True,
        )

    error, value, missing = run(redis_server.url, body)
    assert isinstance(error, redis.ResponseError) and "not an integer" in str(error)
    assert (value, missing) == ("abc", [None, None])


def test_a_value_that_is_not_utf8_spares_the_other_commands(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    raw.set("binary", b"\xff\xfeA")
    raw.close()
    redis_client.set("text", "fine")

    async def body(shared: MultiplexedRedis) -> list[object]:
        return await asyncio.gather(shared.execute("GET", "binary"), shared.execute("GET", "text"))

    assert run(redis_server.url, body) == ["\ufffd\ufffdA", "fine"]


def test_script_loads_itself_after_a_flush(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    source = "return {KEYS[1], ARGV[1]}"
    sha = hashlib.sha1(source.encode()).hexdigest()
    redis_client.script_flush()

    async def body(shared: MultiplexedRedis) -> list[object]:
        first = await shared.script(sha, source, ["a"], ["1"])  # NOSCRIPT, then EVAL
        second = await shared.script(sha, source, ["b"], [2])  # cached by the EVAL
        return [first, second]

    assert run(redis_server.url, body) == [["a", "1"], ["b", "2"]]
    assert redis_client.script_exists(sha) == [True]


@pytest.fixture
def stoppable_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to SIGSTOP; continued before it is stopped."""
    server = RedisServer(tmp_path / "frozen").start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)  # a stopped server would ignore SIGTERM
    server.stop()


def test_a_frozen_server_times_out_every_waiting_command(stoppable_server: RedisServer) -> None:
    """SIGSTOP: no reply ever comes; each caller gets TimeoutError within its deadline, not a hang."""
    server = stoppable_server

    async def body(shared: MultiplexedRedis) -> tuple[list[object], float, object]:
        await shared.execute("SET", "k", "v")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(*(shared.execute("GET", "k") for _ in range(20)), return_exceptions=True)
        elapsed = time.monotonic() - started
        server.proc.send_signal(signal.SIGCONT)
        return results, elapsed, await shared.execute("GET", "k")

    results, elapsed, after = run(server.url, body, timeout_s=0.5)
    assert all(isinstance(r, redis.TimeoutError) for r in results), results
    assert elapsed < 3 * 0.5, elapsed  # one deadline for every try: a correctness bound, not a speed target
    assert after == "v"  # and the next command uses a fresh connection


def test_connecting_to_a_frozen_server_ends_within_the_deadline(stoppable_server: RedisServer) -> None:
    """The kernel still accepts connections to a stopped server; the handshake never gets its reply.
    redis-py retries that on its own: the deadline bounds the whole connect, not each try."""
    server = stoppable_server

    async def body(shared: MultiplexedRedis) -> tuple[list[object], float]:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(*(shared.execute("GET", "k") for _ in range(5)), return_exceptions=True)
        return results, time.monotonic() - started

    results, elapsed = run(server.url, body, timeout_s=0.5)
    assert all(isinstance(r, redis.TimeoutError) for r in results), results
    assert elapsed < 3 * 0.5, elapsed  # a correctness bound, not a speed target


def test_a_restarted_server_is_reconnected_to(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "restarted").start()
    try:

        async def body(shared: MultiplexedRedis) -> tuple[object, object]:
            await shared.execute("SET", "k", "before")
            server.kill()
            with pytest.raises((redis.ConnectionError, OSError)):
                await shared.execute("GET", "k")  # nobody listens: refused after the retries
            server.start()
            return await shared.execute("GET", "k"), await shared.execute("SET", "k", "after")

        got, replaced = run(server.url, body)
        assert got == "before" and replaced is not None  # the AOF kept it; the new connection works
    finally:
        server.stop()

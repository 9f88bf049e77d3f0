"""One Redis connection that every request of an API process shares, replies matched in order.

Redis answers the commands of one connection in the order it received them. So instead of checking a
connection out of a pool, arming a timeout and waiting on a read for each command (a third of the
API's CPU under load, by py-spy), a caller writes its command and waits on a future; one reader task
parses replies as they arrive (hiredis) and resolves the futures first-in, first-out. Commands sent
at the same moment by concurrent requests leave in one write and come back in one read: the API
pipelines itself, and Redis pays fewer system calls per job too.

What stays as with redis-py's pool: the connection handshake (AUTH, SELECT, TLS, unix sockets) is
redis-py's own; errors are redis-py's classes (`ConnectionError`, `TimeoutError`, the `ResponseError`
family), so callers map them the same way; and a command that fails because the connection did is
retried on a new one, which is safe because every command the API sends is (jobqueue/connection.py).

Timeouts: `deadline_s` bounds each `execute`, connect, handshake and retries included
(jobqueue/deadline.py). On a live connection (the usual case) no timer is armed per call: a command
unanswered after `deadline_s` closes the connection and fails every command on it (their replies can
no longer be matched), and one timer checks the oldest command. Only a call that has to connect or
retry arms a timer of its own, for what is left of its deadline. Blocking commands (BLMOVE, SUBSCRIBE)
never go here: they would hold up everyone behind them.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hiredis
import redis.exceptions
from redis._parsers.base import BaseParser

from jobqueue.connection import rerouted
from jobqueue.deadline import redis_deadline

if TYPE_CHECKING:
    import redis.asyncio.connection

RETRIES = 2
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
BACKOFF_S = (0.05, 0.25)
READ_CHUNK = 256 * 1024
WRITE_BUFFER_HIGH = 4 * 2**20  # bytes queued in the transport before writers wait for it to drain
MARKER_TTL_MS = 60_000  # the replica-ack marker only needs to outlive one WAIT


class _Connection:
    """A connected socket, its pending futures in send order, and the task reading its replies."""

    def __init__(self, conn: Any, serial: int) -> None:
        self.conn = conn  # the redis-py connection that did the handshake; we read and write its streams
        self.serial = serial  # which connection of its MultiplexedRedis this is (see `wait_replicas`)
        self.reader: asyncio.StreamReader = conn._reader
        self.writer: asyncio.StreamWriter = conn._writer
        self.pending: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self.outbox: list[bytes] = []  # commands packed since the last write: one write per loop turn
        # Bytes that are not UTF-8 (a value some other client wrote) become U+FFFD: raising here
        # would fail every command on the connection, not just the one that read them.
        self.parser = hiredis.Reader(encoding="utf-8", errors="replace")
        self.broken: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def fail(self, error: BaseException) -> None:
        """Mark broken, close the socket and fail every command still waiting for its reply."""
        if self.broken is None:
            self.broken = error
            self.writer.close()
            asyncio.ensure_future(self.conn.disconnect(nowait=True))  # redis-py's side of the socket
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.pending:
            _, future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)


class MultiplexedRedis:
    """`await execute("HMGET", key, *fields)` over one shared, self-pipelining connection.

    Connections come from `make_connection`, normally a redis-py pool's (its URL, password, TLS and
    socket options; the pool itself stays the caller's); `deadline_s` bounds every call.
    """

    def __init__(self, make_connection: Callable[[], redis.asyncio.connection.AbstractConnection], deadline_s: float) -> None:
        self._make_connection = make_connection
        self._deadline_s = deadline_s
        self._current: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._serial = 0  # connections opened so far: each one's number

    async def execute(self, *args: Any) -> Any:
        reply, _ = await self.execute_traced(*args)
        return reply

    async def execute_traced(self, *args: Any) -> tuple[Any, int]:
        """The reply and the serial number of the connection that carried it (see `wait_replicas`)."""
        started = time.monotonic()
        current = self._current
        if current is not None and current.broken is None:
            try:  # the reply timer bounds this attempt by the deadline: no timer of its own
                return await self._execute_once(args)
            except RETRYABLE:
                pass
        # connect and retry within what is left of the deadline (nothing left: a TimeoutError at once)
        async with redis_deadline(self._deadline_s, started + self._deadline_s - time.monotonic()):
            for attempt in range(RETRIES + 1):
                try:
                    return await self._execute_once(args)
                except RETRYABLE:
                    if attempt == RETRIES:
                        raise
                    await asyncio.sleep(BACKOFF_S[attempt])
        raise AssertionError("unreachable")

    async def execute_asking(self, *args: Any) -> tuple[Any, int]:
        """ASKING, then `args` right behind it on the same connection: a Cluster slot half-way through a
        move names this node for a key it already took (ASK). Nothing ran if it fails; no retry here."""
        async with redis_deadline(self._deadline_s):
            current = self._current
            if current is None or current.broken is not None:
                current = await self._connect()
            asking = self._send(current, ("ASKING",))
            future = self._send(current, args)
            await asking
            return await future, current.serial

    async def script(self, sha: str, source: str, keys: list[str], args: list[Any]) -> Any:
        reply, _ = await self.script_traced(sha, source, keys, args)
        return reply

    async def script_traced(self, sha: str, source: str, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        """EVALSHA, falling back to EVAL (which caches the script) after a SCRIPT FLUSH or a new server."""
        try:
            return await self.execute_traced("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self.execute_traced("EVAL", source, len(keys), *keys, *args)

    async def wait_replicas(self, serial: int, marker: str, replicas: int, timeout_ms: int, asking: bool = False) -> int:
        """How many replicas hold everything connection `serial` has seen answered (a write of its own to
        `marker`, then WAIT, on that same connection). A replica's acknowledgement counts only for the
        server that was asked: if that connection is gone (a failover may have moved us to another
        server), nothing can be confirmed, and ConnectionError says so. `asking`: the marker goes behind
        ASKING (a Cluster slot moving to this node). Blocks the shared connection
        until WAIT answers (at most `timeout_ms`): callers share one WAIT (jobqueue/replicas.py)."""
        current = self._current
        if current is None or current.broken is not None or current.serial != serial:
            raise redis.exceptions.ConnectionError(
                "the Redis connection that carried the write was lost before replicas confirmed it"
            )
        if asking:  # a Cluster node still importing the marker's slot (the write it confirms came by ASK)
            self._send(current, ("ASKING",))
        marked = self._send(current, ("SET", marker, "1", "PX", MARKER_TTL_MS))
        acked = self._send(current, ("WAIT", replicas, timeout_ms))
        await marked
        return int(await acked)

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        current, self._current = self._current, None
        if current is not None:
            current.fail(redis.exceptions.ConnectionError("client closed"))
            if current.task is not None:
                current.task.cancel()
            await current.conn.disconnect(nowait=True)

    async def _execute_once(self, args: tuple[Any, ...]) -> tuple[Any, int]:
        current = self._current
        if current is None or current.broken is not None:
            current = await self._connect()
            if current.broken is not None:  # lost while we were waiting for it: the caller retries
                raise redis.exceptions.ConnectionError(f"Redis connection lost: {current.broken}")
        future = self._send(current, args)
        if current.writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            await current.writer.drain()
        return await future, current.serial

    def _send(self, current: _Connection, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue one command on `current` (written at the end of this loop turn); its reply's future."""
        packed = hiredis.pack_command(args)  # raises on an argument Redis cannot take, before anything is queued
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not current.outbox:
            loop.call_soon(self._flush, current)
        current.outbox.append(packed)
        current.pending.append((time.monotonic(), future))
        if current.timer is None:
            current.timer = loop.call_later(self._deadline_s, self._check_timeout, current)
        return future

    @staticmethod
    def _flush(current: _Connection) -> None:
        """Write every command queued during this turn of the event loop in one system call."""
        outbox, current.outbox = current.outbox, []
        if current.broken is None:
            current.writer.write(b"".join(outbox))

    async def _connect(self) -> _Connection:
        # Concurrent callers share one connection attempt; a failed attempt fails them all, each retrying.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        conn = self._make_connection()
        try:
            # redis-py retries the connect and each handshake read on its own: one deadline for it all
            async with redis_deadline(self._deadline_s):
                await conn.connect()  # type: ignore[no-untyped-call]
        except TimeoutError:
            raise redis.exceptions.TimeoutError("timeout connecting to Redis") from None
        except BaseException:
            await conn.disconnect(nowait=True)  # a half-done handshake leaves a socket open
            raise
        self._serial += 1
        current = _Connection(conn, self._serial)
        current.task = asyncio.ensure_future(self._read_replies(current))
        self._current = current
        return current

    async def _read_replies(self, current: _Connection) -> None:
        try:
            while current.broken is None:
                data = await current.reader.read(READ_CHUNK)
                if not data:
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                current.parser.feed(data)
                while (reply := current.parser.gets()) is not False:
                    if not current.pending:
                        raise redis.exceptions.ConnectionError("a reply nobody asked for (protocol out of step)")
                    _, future = current.pending.popleft()
                    if future.done():  # its caller went away (a cancelled request): the reply is dropped
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        error = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
                        if rerouted(error, current.conn):
                            # the server this connection found no longer serves these keys (a demoted
                            # primary, a moved slot): nothing ran, so the command is retried on a new
                            # connection, which asks the Sentinels (the Cluster) again
                            error = redis.exceptions.ConnectionError(f"the server no longer serves these keys ({reply})")
                            future.set_exception(error)
                            raise error
                        future.set_exception(error)
                    else:
                        future.set_result(reply)
        except asyncio.CancelledError:
            current.fail(redis.exceptions.ConnectionError("client closed"))
            raise
        except Exception as exc:  # a lost connection, or a reply we cannot parse: either way it is unusable
            error = exc if isinstance(exc, redis.exceptions.ConnectionError) else redis.exceptions.ConnectionError(repr(exc))
            current.fail(error)

    def _check_timeout(self, current: _Connection) -> None:
        current.timer = None
        if current.broken is not None:
            current.fail(current.broken)  # anything still waiting on it fails now
            return
        if not current.pending:
            return
        sent_at, _ = current.pending[0]
        overdue_in = sent_at + self._deadline_s - time.monotonic()
        if overdue_in <= 0:
            current.fail(redis.exceptions.TimeoutError(f"no reply from Redis within {self._deadline_s:g}s"))
            return
        current.timer = asyncio.get_running_loop().call_later(overdue_in, self._check_timeout, current)

"""The HTTP transports of the two clients: httpx's own for `Client`, and for `AsyncClient` httpx's with its
connections on asyncio streams instead of anyio's.

httpcore reaches asyncio through anyio, whose socket streams build a dict of attribute getters (and call
getpeername) each time httpcore asks whether an idle connection is still usable, which it does for every pooled
connection on every request: with the rest of anyio's per-read bookkeeping, that made AsyncClient spend about
half again the CPU per request of `Client` (bench/cli_run.py: `asyncinfer run` against `Client.map`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection as an asyncio StreamReader/StreamWriter pair, with httpcore's errors."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ReadError(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # the peer reset it first: closed all the same
            await self._writer.wait_closed()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout(exc) from exc
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(exc) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # asked of an idle connection before reusing it: the server closed it (keep-alive timeout) when
            # the end of its stream has arrived; asyncio reads it as it comes, so no socket call is needed
            return self._reader.at_eof() or self._writer.transport.is_closing()
        names = {"client_addr": "sockname", "server_addr": "peername", "socket": "socket", "ssl_object": "ssl_object"}
        return self._writer.get_extra_info(names[info]) if info in names else None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens httpcore's connections with asyncio.open_connection (AsyncClient runs on asyncio only)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        for option in socket_options or ():  # asyncio already sets TCP_NODELAY, as anyio does
            writer.get_extra_info("socket").setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def async_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx's transport, as `httpx.AsyncClient` would make it, with its pool on AsyncioBackend."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx builds its pool without a choice of backend; tests/client/test_transport.py checks this took
    transport._pool._network_backend = AsyncioBackend()
    return transport


def sync_transport(limits: httpx.Limits) -> httpx.BaseTransport:
    """httpx's own transport, as `httpx.Client` would make it."""
    return httpx.HTTPTransport(limits=limits)

"""AsyncClient's connections on asyncio streams (asyncinfer_client/_transport.py): in use, reused, dropped once
the server closed them, timeouts and TLS as with httpx's own transport."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from asyncinfer_client import AsyncClient, RetryPolicy
from asyncinfer_client._transport import AsyncioStream
from asyncinfer_client.errors import ConnectionFailed

NO_RETRY = RetryPolicy(max_retries=0, max_refused_retries=0)
MODELS = json.dumps({"models": [{"name": "iris"}]}).encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(MODELS), MODELS)


class KeepAliveServer:
    """A raw HTTP/1.1 server answering every request with MODELS; it closes a connection idle for `idle_close_s`
    (as uvicorn's keep-alive timeout does), or never answers when `silent`."""

    def __init__(self, idle_close_s: float = 30.0, silent: bool = False) -> None:
        self.idle_close_s = idle_close_s
        self.silent = silent
        self.connections = 0
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close_s)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return
                self.requests += 1
                if self.silent:
                    await asyncio.sleep(self.idle_close_s)
                    return
                writer.write(ANSWER)
                await writer.drain()
        finally:
            writer.close()

    async def run(self, body: Callable[[str], Awaitable[None]], tls: ssl.SSLContext | None = None) -> None:
        server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=tls)
        async with server:
            port = server.sockets[0].getsockname()[1]
            await body(f"{'https' if tls else 'http'}://127.0.0.1:{port}")


def streams_of(client: AsyncClient) -> list[object]:
    """The network stream of each pooled connection (httpx and httpcore internals: what this module changes)."""
    pool = client._http._transport._pool
    return [connection._connection._network_stream for connection in pool.connections]


def test_requests_go_over_asyncio_streams_and_reuse_one_connection():
    server = KeepAliveServer()

    async def body(url: str) -> None:
        async with AsyncClient(url, retry=NO_RETRY) as client:
            for _ in range(3):
                assert (await client.models())[0]["name"] == "iris"
            assert [type(stream) for stream in streams_of(client)] == [AsyncioStream]

    asyncio.run(server.run(body))
    assert (server.connections, server.requests) == (1, 3)


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    # no retries: a request sent on the closed connection would fail, not be sent again
    server = KeepAliveServer(idle_close_s=0.1)

    async def body(url: str) -> None:
        async with AsyncClient(url, retry=NO_RETRY) as client:
            await client.models()
            await asyncio.sleep(0.5)  # the server has closed the idle connection by now
            assert (await client.models())[0]["name"] == "iris"

    asyncio.run(server.run(body))
    assert (server.connections, server.requests) == (2, 2)


def test_a_read_timeout_is_httpx_s_and_names_the_url():
    server = KeepAliveServer(idle_close_s=5.0, silent=True)

    async def body(url: str) -> None:
        async with AsyncClient(url, retry=NO_RETRY, timeout=0.2) as client:
            with pytest.raises(ConnectionFailed, match=rf"ReadTimeout to {url}"):
                await client.models()

    asyncio.run(server.run(body))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_verifies_the_server_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = KeepAliveServer()

    async def body(url: str) -> None:
        async with AsyncClient(url, retry=NO_RETRY) as client:  # trusts only the system's CAs: refused
            with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await client.models()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx reads it when the client is made
        async with AsyncClient(url, retry=NO_RETRY) as client:
            assert (await client.models())[0]["name"] == "iris"
            (stream,) = streams_of(client)
            assert isinstance(stream, AsyncioStream) and stream.get_extra_info("ssl_object") is not None

    asyncio.run(server.run(body, tls))

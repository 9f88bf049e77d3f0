"""api.main.CoalescingTransport over a real socket: writes within one event-loop turn reach the socket
as one write, in order, and nothing written before a close or a write_eof is lost or reordered."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from api.main import CoalescingTransport


class CountingTransport:
    """The real transport, with its write calls counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def _pair() -> tuple[CoalescingTransport, CountingTransport, socket.socket]:
    ours, peer = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
    counting = CountingTransport(transport)  # type: ignore[arg-type]
    return CoalescingTransport(counting), counting, peer  # type: ignore[arg-type]


def _read_all(peer: socket.socket) -> bytes:
    """Everything the peer receives until EOF (then the peer is closed)."""
    with peer:
        peer.settimeout(5)
        chunks = []
        while chunk := peer.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_writes_of_one_turn_leave_in_one_write_in_order() -> None:
    async def main() -> tuple[list[bytes], bytes, int]:
        coalescing, counting, peer = await _pair()
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        coalescing.writelines([b"o", memoryview(b"k")])
        held = coalescing.get_write_buffer_size()
        assert counting.writes == []  # nothing yet: held until the end of this turn
        await asyncio.sleep(0)
        coalescing.write(b"next")  # a later turn: a write of its own
        await asyncio.sleep(0)
        coalescing.close()
        await asyncio.sleep(0.05)
        return counting.writes, _read_all(peer), held

    writes, received, held = asyncio.run(main())
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"next"]
    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\noknext"
    assert held == len(writes[0])


def test_close_and_write_eof_come_after_the_held_bytes() -> None:
    async def main() -> tuple[bytes, bytes]:
        coalescing, _, peer = await _pair()
        coalescing.write(b"last words")
        coalescing.write_eof()  # forwarded to the real transport, after the held bytes
        await asyncio.sleep(0.05)
        first = _read_all(peer)  # EOF arrives after the data
        coalescing.close()
        second_coalescing, _, second_peer = await _pair()
        second_coalescing.write(b"goodbye")
        second_coalescing.close()  # same turn: flushed first, not dropped
        await asyncio.sleep(0.05)
        return first, _read_all(second_peer)

    assert asyncio.run(main()) == (b"last words", b"goodbye")

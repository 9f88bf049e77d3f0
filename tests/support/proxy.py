"""A TCP proxy in front of Redis that loses one reply: a lost reply on real sockets, on cue."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

MARKER_SPAN = 256  # bytes kept from the previous chunk: a marker split across two reads is still seen


class ReplyLosingProxy:
    """Forwards 127.0.0.1:`port` to Redis on `upstream_port`. The first command that contains `marker`
    reaches Redis (and runs there); the reply to it is dropped and that connection closed on both
    sides, and new connections then wait at the proxy until `release()`: the test changes what Redis
    holds in between, exactly as if the client's reconnect had been slow."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.dropped = threading.Event()
        self._released = threading.Event()
        self._released.set()
        self._armed = True
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def release(self) -> None:
        """Let connections through again."""
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        accept_forever(self._listener, self._serve)

    def _serve(self, client: socket.socket) -> None:
        self._released.wait()
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        marked = threading.Event()  # this connection sent the marked command
        threading.Thread(target=self._requests, args=(client, upstream, marked), daemon=True).start()
        self._replies(upstream, client, marked)

    def _requests(self, client: socket.socket, upstream: socket.socket, marked: threading.Event) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self._armed and self.marker in tail + data:
                    marked.set()  # before Redis can answer it
                tail = data[-MARKER_SPAN:]
                upstream.sendall(data)
        _shut(upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket, marked: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if marked.is_set():
                    with self._lock:
                        lose, self._armed = self._armed, False
                    if lose:
                        self._released.clear()  # before the client can notice and reconnect
                        _shut(client)
                        _shut(upstream)
                        self.dropped.set()
                        return
                client.sendall(data)
        _shut(client)


def accept_forever(listener: socket.socket, serve: Callable[[socket.socket], None]) -> None:
    """Each connection to `listener` served on a thread of its own, until the listener is closed."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # closed
            return
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class StallingProxy:
    """Forwards 127.0.0.1:`port` to `upstream_port` until a connection sends `marker`: from then on
    that connection's bytes (the marked request included) are held, never forwarded: a request in
    flight for good, to kill its sender in the middle of it."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            _shut(sock)

    def _accept(self) -> None:
        accept_forever(self._listener, self._serve)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._sockets += [client, upstream]
        threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
        self._replies(upstream, client)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.marker in tail + data:
                    self.stalled.set()
                    while client.recv(65536):  # held: read and dropped until the sender dies
                        pass
                    return
                tail = data[-MARKER_SPAN:]
                upstream.sendall(data)

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)

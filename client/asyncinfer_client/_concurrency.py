"""How `map` runs its chunks side by side: asyncio tasks for `AsyncClient`, threads for `Client`.

The one place the two clients differ beyond `async`/`await`: aio.py is written once against `AsyncChunkPool`
and `async_sleep`, and client.py is generated from it with `SyncChunkPool` and `sleep` in their place.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from asyncinfer_client.views import Outcome

async_sleep = asyncio.sleep
sleep = time.sleep


@dataclass(frozen=True)
class ChunkEnd:
    """A chunk is done; `error` is what stopped it (handed to the caller of `map`), None when it finished."""

    error: BaseException | None = None


class AsyncChunkPool:
    """Chunks as asyncio tasks; their outcomes and their ends arrive on one queue, read by `map`."""

    def __init__(self, size: int) -> None:
        self.stopped = False  # tasks are canceled at close; nothing needs to look
        self._events: asyncio.Queue[Outcome | ChunkEnd] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, run: Callable[..., Awaitable[None]], *args: Any) -> None:
        task = asyncio.create_task(self._run(run, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, run: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await run(*args)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the iterator, which raises it in the caller's task
            self.emit(ChunkEnd(exc))
        else:
            self.emit(ChunkEnd())

    def emit(self, event: Outcome | ChunkEnd) -> None:
        self._events.put_nowait(event)

    async def next_event(self) -> Outcome | ChunkEnd:
        return await self._events.get()

    async def aclose(self) -> None:
        """Cancel the chunks still running (the iterator may have been closed early)."""
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SyncChunkPool:
    """Chunks on threads; their outcomes and their ends arrive on one queue, read by `map`."""

    def __init__(self, size: int) -> None:
        self._stop = threading.Event()
        self._events: queue.Queue[Outcome | ChunkEnd] = queue.Queue()
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="asyncinfer-map")

    @property
    def stopped(self) -> bool:
        """Set at close: a thread cannot be canceled, so chunks look at this before each request."""
        return self._stop.is_set()

    def start(self, run: Callable[..., None], *args: Any) -> None:
        self._threads.submit(self._run, run, *args)

    def _run(self, run: Callable[..., None], *args: Any) -> None:
        error: BaseException | None = None
        try:
            run(*args)
        except BaseException as exc:  # handed to the iterator, which raises it in the caller's thread
            error = exc
        self.emit(ChunkEnd(error))

    def emit(self, event: Outcome | ChunkEnd) -> None:
        self._events.put(event)

    def next_event(self) -> Outcome | ChunkEnd:
        return self._events.get()

    def close(self) -> None:
        """Stop the chunks at their next request and wait for them."""
        self._stop.set()
        self._threads.shutdown(wait=True, cancel_futures=True)

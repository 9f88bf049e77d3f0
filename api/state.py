"""What the API holds for its lifetime: settings, the model signature, the queue client, waiters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass

from fastapi import Request

from api.errors import HTTPProblem
from jobqueue.connection import UNAVAILABLE
from jobqueue.model_signature import ModelSignature, read_signature
from jobqueue.protocol import JobQueue
from jobqueue.settings import Settings

log = logging.getLogger("asyncinfer.api")
SIGNATURE_RETRY_S = 5


class CompletionWaiters:
    """Wakes long polls when a job ends, from one Pub/Sub subscription per API process.

    Scripts publish the ids of jobs that reached a terminal state; a long poll registers a future for
    its id. A missed message (Redis restart) only costs a re-check, which long polls also do slowly.
    """

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue
        self._futures: dict[str, set[asyncio.Future]] = defaultdict(set)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="completion-waiters")

    async def stop(self) -> None:
        self.wake_all()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, job_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._futures[job_id].add(future)
        return future

    def discard(self, job_id: str, future: asyncio.Future) -> None:
        futures = self._futures.get(job_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._futures[job_id]

    def wake(self, job_id: str) -> None:
        for future in self._futures.pop(job_id, ()):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        for job_id in list(self._futures):
            self.wake(job_id)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._queue.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._queue.keys.events)
                backoff = 0.1
                async for message in pubsub.listen():
                    if self._futures and message.get("type") == "message":
                        for job_id in str(message["data"]).split():
                            self.wake(job_id)
            except UNAVAILABLE as exc:
                log.debug("completion listener lost redis (%s)", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            self.wake_all()  # let long polls re-check while we reconnect
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


@dataclass
class AppState:
    settings: Settings
    queue: JobQueue
    waiters: CompletionWaiters
    signature: ModelSignature | None = None  # None until MODEL_PATH could be read
    signature_error: str = ""
    draining: bool = False

    def require_signature(self) -> ModelSignature:
        """The model signature, or a 503 saying why it is not there (readiness is 503 meanwhile)."""
        if self.signature is None:
            raise HTTPProblem(
                503,
                f"model signature not loaded from MODEL_PATH={self.settings.model_path}: {self.signature_error}",
                {"Retry-After": str(SIGNATURE_RETRY_S)},
            )
        return self.signature

    async def load_signature(self) -> None:
        """Read the model's signature, retrying while the file is missing or unreadable (a volume
        still being mounted or filled): the API serves, unready, instead of crash-looping."""
        while True:
            try:
                self.signature = read_signature(self.settings.model_path, self.settings.labels_path)
            except Exception as exc:  # noqa: BLE001 - any reason is reported the same way
                if self.signature_error != str(exc):
                    log.error("cannot read the model signature (%s); retrying every %ss", exc, SIGNATURE_RETRY_S)
                self.signature_error = str(exc)
                await asyncio.sleep(SIGNATURE_RETRY_S)
            else:
                s = self.signature
                log.info("serving model %s v%s on queue %s", s.name, s.version, self.settings.queue_name)
                return


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a sync dependency in a thread pool, a hop on every request
    return request.app.state.asyncinfer

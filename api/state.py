"""What the API holds for its lifetime: settings, model signatures, the job store, event waiters."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio
from fastapi import Request

from api.auth import TokenFile
from api.errors import HTTPProblem, as_problem
from jobqueue.connection import REFUSED, UNAVAILABLE, primary_moved
from jobqueue.job_input import checked_payload
from jobqueue.model_signature import InputError, ModelSignature
from jobqueue.models import ModelConfig, read_model
from jobqueue.objectstore import ObjectStore
from jobqueue.protocol import Enqueued, JobRecord, JobStore, NewJob
from jobqueue.settings import Settings

log = logging.getLogger("asyncinfer.api")
SIGNATURE_RETRY_S = 5
LONG_POLL_RECHECK_S = 2.0  # re-read the record this often while waiting, in case a wake-up was missed
FAILOVER_CHECK_S = 1.0  # with Sentinels: how often the event listener checks that its server is the primary
CANCEL_RECHECK_S = 0.1  # how soon a stopping listener is cancelled again if a cancellation was lost


@dataclass
class ModelEntry:
    """One served model as the API knows it: its signature (never its weights) and version."""

    config: ModelConfig
    signature: ModelSignature | None = None
    version: str | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return self.signature is not None

    def require_signature(self) -> ModelSignature:
        """The signature, or a 503 saying why it is not there."""
        if self.signature is None:
            raise HTTPProblem(
                503,
                f"model {self.name} is not loaded from {self.config.path}: {self.error or 'loading'}",
                {"Retry-After": str(SIGNATURE_RETRY_S)},
            )
        return self.signature

    def load(self) -> None:
        """Read signature and version (blocking: run it in a thread)."""
        self.signature, self.version = read_model(self.config)


class ModelRegistry:
    """Every configured model by name; the first is the default."""

    def __init__(self, configs: dict[str, ModelConfig]) -> None:
        self.entries = {name: ModelEntry(config) for name, config in configs.items()}
        self.default = next(iter(self.entries))

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)

    def require(self, name: str | None) -> ModelEntry:
        """The named model (the default for None), or a 404 naming the known ones."""
        entry = self.entries.get(name or self.default)
        if entry is None:
            raise HTTPProblem(404, f"unknown model {name!r}; known models: {', '.join(self.entries)}")
        return entry

    async def load_all(self) -> None:
        """Read every model's signature in a thread (a large file never blocks the event loop),
        retrying while a file is missing or unreadable (a volume still being filled)."""
        while True:
            missing = [e for e in self.entries.values() if not e.ready]
            for entry in missing:
                try:
                    await asyncio.to_thread(entry.load)
                except Exception as exc:  # any reason is reported the same way
                    if entry.error != str(exc):
                        log.error(
                            "model %s: cannot read its signature (%s); retrying every %ss", entry.name, exc, SIGNATURE_RETRY_S
                        )
                    entry.error = str(exc)
                else:
                    log.info("serving model %s version %s", entry.name, entry.version)
            if all(e.ready for e in self.entries.values()):
                return
            await asyncio.sleep(SIGNATURE_RETRY_S)


class JobEvents:
    """Wakes waiters when a job changes state, from one Pub/Sub subscription per API process.

    Scripts publish '<kind> <id> <id> ...' (kind: processing, pending, ended); a waiter registers a
    future for its id. A missed message (Redis restart) only costs a re-check, which waiters also do
    slowly on their own.
    """

    def __init__(self, client: redis.asyncio.Redis, channel: str, sentinels: bool = False) -> None:
        self._client = client
        self._channel = channel
        # With Sentinels, how often the listener asks whether the primary moved (a frozen old primary
        # keeps the subscription open and silent); standalone, it just listens.
        self._silence_s = FAILOVER_CHECK_S if sentinels else None
        # waiters for any transition (streams), and waiters for the end only (wait and long poll):
        # "processing" is no news to the latter, so it costs them no wake-up and no re-read
        self._futures: dict[str, set[asyncio.Future[str]]] = defaultdict(set)
        self._end_futures: dict[str, set[asyncio.Future[str]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="job-events")

    async def stop(self) -> None:
        self.wake_all()
        task = self._task
        # Cancelled again until it ends: on Python 3.11 asyncio.wait_for swallows a cancellation that
        # arrives as its inner call completes (CPython gh-86296), and redis-py sends each command under
        # wait_for, so one cancel during SUBSCRIBE can be lost and leave the task in listen() forever.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_RECHECK_S)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def add(self, job_id: str, ends_only: bool = False) -> asyncio.Future[str]:
        """A future resolved with the event kind at the job's next transition (its end, with `ends_only`)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        (self._end_futures if ends_only else self._futures)[job_id].add(future)
        return future

    def discard(self, job_id: str, future: asyncio.Future[str]) -> None:
        for waiting in (self._futures, self._end_futures):
            futures = waiting.get(job_id)
            if futures is not None and future in futures:
                futures.discard(future)
                if not futures:
                    del waiting[job_id]

    def wake(self, job_id: str, kind: str) -> None:
        woken = list(self._futures.pop(job_id, ()))
        if kind in ("ended", "recheck"):
            woken += self._end_futures.pop(job_id, ())
        for future in woken:
            if not future.done():
                future.set_result(kind)

    def wake_all(self) -> None:
        for job_id in {*self._futures, *self._end_futures}:
            self.wake(job_id, "recheck")

    def _on_reconnect(self, _connection: Any) -> None:
        """redis-py reconnects and re-subscribes a dropped Pub/Sub connection on its own (its retry);
        messages published meanwhile are lost, so every waiter re-checks."""
        self.wake_all()

    async def _listen(self) -> None:
        backoff = 0.1
        resubscribed = False
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                backoff = 0.1
                if resubscribed:
                    self.wake_all()  # transitions between the last re-check and now were not heard
                if pubsub.connection is not None:  # set by subscribe
                    pubsub.connection.register_connect_callback(self._on_reconnect)
                checked = time.monotonic()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._silence_s)
                    if self._silence_s is not None and time.monotonic() - checked >= self._silence_s:
                        checked = time.monotonic()
                        if await primary_moved(self._client, pubsub.connection):
                            raise redis.ConnectionError("a failover moved the primary: subscribing on the new one")
                    if message is not None and (self._futures or self._end_futures) and message.get("type") == "message":
                        kind, *ids = str(message["data"]).split()
                        for job_id in ids:
                            if job_id in self._futures or job_id in self._end_futures:
                                self.wake(job_id, kind)
            except UNAVAILABLE as exc:
                log.debug("event listener lost redis (%s)", exc)
            except REFUSED as exc:  # e.g. NOPERM on SUBSCRIBE: keep trying, so fixing the ACL is enough
                log.warning("event listener refused by redis (%s); waiters re-check on their own meanwhile", exc)
            finally:
                with contextlib.suppress(Exception):
                    if pubsub.connection is not None:
                        pubsub.connection.deregister_connect_callback(self._on_reconnect)
                    # Through a typed name: redis-py < 8.1 leaves aclose untyped, newer releases type it,
                    # so neither a direct call nor a `type: ignore` passes mypy on both.
                    close: Callable[[], Awaitable[None]] = pubsub.aclose
                    await close()
            self.wake_all()  # let waiters re-check while we reconnect
            resubscribed = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def fingerprint(model: str, payload: bytes, priority: str, callback_url: str) -> str:
    """What makes two submits "the same request" for an idempotency key."""
    digest = hashlib.sha256()
    for part in (model.encode(), priority.encode(), callback_url.encode(), payload):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:32]


@dataclass
class AppState:
    settings: Settings
    store: JobStore
    probe: redis.asyncio.Redis  # readiness's own connection
    models: ModelRegistry
    events: JobEvents
    tokens: TokenFile | None = None
    draining: bool = False
    callback_validator: Callable[[str, Settings], str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    objects: ObjectStore | None = None  # OBJECT_STORE_URL set: `input_url`, POST /uploads, result objects

    def validated_job(
        self,
        owner: str,
        model: ModelEntry,
        data: Any,
        priority: str = "normal",
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        loc: tuple[str | int, ...] = ("body",),
        raw: bytes | None = None,
    ) -> NewJob:
        """A job ready to store: `data` checked against the model's signature (422 naming the field)."""
        signature = model.require_signature()
        try:
            payload = checked_payload(data, signature, self.settings.max_rows_per_job, raw)
        except InputError as exc:
            raise HTTPProblem(422, [{"loc": [*loc, *exc.loc[1:]], "msg": exc.msg, "type": "value_error"}]) from None
        # the request's own JSON identifies it for an idempotency key, as before inputs were kept as tensors:
        # a retry across an upgrade still matches its first submit
        identity = orjson.dumps({"data": data}) if idempotency_key else None
        return self.new_job(owner, model, payload, priority, callback_url, idempotency_key, loc, identity)

    def new_job(
        self,
        owner: str,
        model: ModelEntry,
        payload: str,
        priority: str,
        callback_url: str | None,
        idempotency_key: str | None,
        loc: tuple[str | int, ...],
        identity: bytes | None = None,
    ) -> NewJob:
        """A job from a checked payload (its tensors, `{"data": ...}` or `{"input_url": ...}`): priority and
        callback checked. `identity`: what an idempotency key's repeat must match (default: the payload)."""
        if priority not in ("high", "normal", "low"):
            raise HTTPProblem(422, [{"loc": [*loc, "priority"], "msg": "must be one of high, normal, low", "type": "enum"}])
        callback = ""
        if callback_url is not None:
            if not isinstance(callback_url, str):
                raise HTTPProblem(422, [{"loc": [*loc, "callback_url"], "msg": "must be a URL string", "type": "string_type"}])
            try:
                callback = self.callback_validator(callback_url, self.settings) if self.callback_validator else callback_url
            except ValueError as exc:
                raise HTTPProblem(422, [{"loc": [*loc, "callback_url"], "msg": str(exc), "type": "value_error"}]) from None
        return NewJob(
            # an idempotency key's repeat must reach the shard its first job went to
            job_id=self.store.new_job_id(model.name, f"{owner}\n{idempotency_key}" if idempotency_key else None),
            model=model.name,
            payload=payload,
            priority=priority,
            owner=owner,
            callback_url=callback,
            idempotency_key=idempotency_key,
            # only an idempotency key's replay compares fingerprints: no key, no hashing
            fingerprint=fingerprint(model.name, identity or payload.encode(), priority, callback) if idempotency_key else "",
        )

    async def enqueue(self, job: NewJob) -> Enqueued:
        try:
            return await self.store.enqueue(job)
        except Exception as exc:
            problem = as_problem(exc)
            if problem is None:
                raise
            raise problem from None

    async def wait_for(
        self,
        job_id: str,
        timeout_s: float,
        disconnected: asyncio.Future[Any] | None = None,
        listening: asyncio.Future[str] | None = None,
    ) -> JobRecord:
        """The job's record once it ends, or as it is after `timeout_s` (or when the client left).
        Woken by Pub/Sub, not by polling Redis. `listening`: a future from `events.add(job_id,
        ends_only=True)` taken before the caller saw the job unfinished (created it, or read it),
        so the first read is skipped: any end since then has woken it."""
        deadline = time.monotonic() + timeout_s
        future = listening if listening is not None else self.events.add(job_id, ends_only=True)
        try:
            # read after listening: no end is missed (and at once while draining: it answers now)
            record = None if listening is not None and not self.draining else await self.store.get(job_id)
            while record is None or not (record.status.terminal or self.draining):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (disconnected is not None and disconnected.done()):
                    break
                waiting = (future,) if disconnected is None else (future, disconnected)
                await asyncio.wait(waiting, timeout=min(remaining, LONG_POLL_RECHECK_S), return_when=asyncio.FIRST_COMPLETED)
                if disconnected is not None and disconnected.done():
                    break
                if future.done():  # woken (a recheck): listen again BEFORE reading, or an end
                    self.events.discard(job_id, future)  # landing during the read is lost
                    future = self.events.add(job_id, ends_only=True)
                record = await self.store.get(job_id)
            return record if record is not None else await self.store.get(job_id)
        finally:
            self.events.discard(job_id, future)


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a sync dependency in a thread pool, a hop on every request
    state: AppState = request.app.state.asyncinfer
    return state

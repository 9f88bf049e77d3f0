"""Getting results pushed: Server-Sent Events for one job, and a WebSocket for many.

Both are woken by `JobEvents` (one Pub/Sub subscription per API process), never by polling Redis per
client; both re-read the record after registering for the next wake-up, so no transition is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Header, WebSocket
from fastapi.responses import Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect

from api.auth import Principal, authenticate, principal
from api.errors import HTTPProblem
from api.routes.jobs import MAX_JOB_ID, JobId, owned
from api.schemas import ErrorBody
from api.state import LONG_POLL_RECHECK_S, AppState, get_state
from jobqueue.connection import UNAVAILABLE
from jobqueue.errors import JobNotFound
from jobqueue.protocol import JobRecord
from jobqueue.views import job_view

log = logging.getLogger("asyncinfer.api")
router = APIRouter(tags=["jobs"])

KEEPALIVE_S = 15.0  # under the 30-60 s idle timeouts of common proxies and load balancers
RECONNECT_MS = 3000  # `retry:` hint: how long an EventSource waits before reconnecting
# Each stream ticks this often to notice a draining API (it then ends, and the client reconnects to
# another replica); Redis is re-read on wake-ups and at keep-alive time, not on every tick.
TICK_S = LONG_POLL_RECHECK_S
WS_RECHECK_S = 30.0  # re-read every watched job this often, in case a wake-up was lost with Redis
WS_RETRY_S = 1.0  # after Redis was unavailable, try the unread jobs again this soon
WS_UNAUTHORIZED = 4401  # application close code mirroring HTTP 401
WS_SERVICE_RESTART = 1012  # the API is draining: reconnect (to another replica) and subscribe again
WS_TRY_AGAIN_LATER = 1013  # this process holds its most open streams
WS_POLICY_VIOLATION = 1008  # over the principal's budget of sockets or watched ids
WS_MESSAGE_TOO_BIG = 1009  # a message over WS_MAX_MESSAGE_BYTES
# Open streams (SSE and WebSockets together) per process, per MAX_CONCURRENT_REQUESTS slot: a stream is
# an idle socket and a waiter, far cheaper than a request in flight, and it is not counted against
# MAX_CONCURRENT_REQUESTS (a few hundred watching browsers must not lock submits out); 512 -> 4096.
STREAMS_PER_REQUEST_SLOT = 8
STREAMS_RETRY_AFTER_S = 5

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx (and the ingress-nginx controller): do not buffer the stream
}

Caller = Annotated[Principal, Depends(principal)]
State = Annotated[AppState, Depends(get_state)]


class OpenStreams:
    """How many streams this process holds open, against its cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


def open_streams(state: AppState) -> OpenStreams:
    streams = state.extras.get("open_streams")
    if streams is None:
        streams = state.extras["open_streams"] = OpenStreams(state.settings.max_concurrent_requests * STREAMS_PER_REQUEST_SLOT)
    return streams


class ClosingSocket(Exception):
    """What ends a WebSocket: its close code and a reason (at most 123 bytes on the wire)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]


class PrincipalBudgets:
    """Per principal on this process: WebSockets open and job ids watched across all of them (each id
    holds a future and a wake-up). One client cannot take the memory the others need."""

    def __init__(self, max_sockets: int, max_watched: int) -> None:
        self.max_sockets = max_sockets
        self.max_watched = max_watched
        self.sockets: Counter[str] = Counter()
        self.watched: Counter[str] = Counter()

    def open_socket(self, name: str) -> None:
        if self.sockets[name] >= self.max_sockets:
            raise ClosingSocket(
                WS_POLICY_VIOLATION, f"this principal holds {self.max_sockets} WebSockets here (WS_MAX_SOCKETS_PER_PRINCIPAL)"
            )
        self.sockets[name] += 1

    def close_socket(self, name: str) -> None:
        self._give_back(self.sockets, name, 1)

    def watch(self, name: str, count: int) -> None:
        if self.watched[name] + count > self.max_watched:
            raise ClosingSocket(
                WS_POLICY_VIOLATION,
                f"this principal would watch more than {self.max_watched} jobs here (WS_MAX_WATCHED_PER_PRINCIPAL)",
            )
        self.watched[name] += count

    def unwatch(self, name: str, count: int) -> None:
        self._give_back(self.watched, name, count)

    @staticmethod
    def _give_back(counter: Counter[str], name: str, count: int) -> None:
        counter[name] -= count
        if counter[name] <= 0:
            del counter[name]  # no entry left behind per principal ever seen


def principal_budgets(state: AppState) -> PrincipalBudgets:
    budgets = state.extras.get("principal_budgets")
    if budgets is None:
        settings = state.settings
        budgets = state.extras["principal_budgets"] = PrincipalBudgets(
            settings.ws_max_sockets_per_principal, settings.ws_max_watched_per_principal
        )
    return budgets


def event_id(record: JobRecord) -> str:
    """An id per state a job passes through: `<status>-<attempts>-<started_at ms or 0>`.

    A new run has a new start time, so a job that goes processing -> pending -> processing again gets
    new ids; the terminal state's id differs from every earlier one, so a client reconnecting with
    the id of a non-terminal state is always sent the end.
    """
    return f"{record.status}-{record.attempts}-{record.started_at or 0}"


def sse_frame(kind: str, record: JobRecord) -> bytes:
    """One SSE event carrying the job view (orjson never emits a newline, so one `data:` line)."""
    return f"id: {event_id(record)}\nevent: {kind}\ndata: ".encode() + orjson.dumps(job_view(record)) + b"\n\n"


async def job_stream(state: AppState, record: JobRecord, last_event_id: str | None) -> AsyncIterator[bytes]:
    """`status` events while the job runs, then `end` with the final view; `: keep-alive` meanwhile.

    Starlette cancels this generator when the client disconnects; `finally` frees the waiter.
    """
    job_id = record.job_id
    future = state.events.add(job_id)
    # counted here, not in the route: a response whose start could not be sent never runs this
    with open_streams(state).held():
        try:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            last_sent = last_event_id
            next_keepalive = time.monotonic() + KEEPALIVE_S
            stale = True  # re-read after registering `future`: no transition in between is missed
            while True:
                if stale:
                    try:
                        record = await state.store.get(job_id)
                    except UNAVAILABLE:
                        pass  # keep the last record (ids stop a resend); JobEvents wakes us when Redis is back
                    except JobNotFound:
                        # The record vanished while the job never ended (the database was flushed).
                        yield f'event: error\ndata: {{"detail": "job {job_id} not found"}}\n\n'.encode()
                        return
                if record.status.terminal:
                    yield sse_frame("end", record)
                    return
                if event_id(record) != last_sent:
                    yield sse_frame("status", record)
                    last_sent = event_id(record)
                if state.draining:
                    return  # the client reconnects (with Last-Event-ID) to a replica that stays
                await asyncio.wait({future}, timeout=TICK_S)  # a timeout leaves `future` armed
                stale = future.done()
                if stale:
                    state.events.discard(job_id, future)
                    future = state.events.add(job_id)
                if time.monotonic() >= next_keepalive:
                    yield b": keep-alive\n\n"
                    next_keepalive = time.monotonic() + KEEPALIVE_S
                    stale = True  # and a slow safety net in case a wake-up was lost
        finally:
            state.events.discard(job_id, future)


@router.get(
    "/job/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`status` events, then one `end` event with the final job view",
        },
        204: {"description": "Last-Event-ID is the id of the job's `end` event: the client has it already"},
        401: {"model": ErrorBody, "description": "missing or invalid bearer token"},
        404: {"model": ErrorBody, "description": "unknown or expired job (or another principal's)"},
    },
    summary="Server-Sent Events: the job's state now, on every change, and at its end",
)
async def job_events(
    job_id: JobId,
    state: State,
    caller: Caller,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=100, description="resume after this event")
    ] = None,
) -> Response:
    """Stream one job's states: `event: status` (data: the job view) now and on each transition,
    `event: end` (data: the final view) when it ends, then the stream closes."""
    record = await owned(state, caller, job_id)
    if open_streams(state).full:
        raise HTTPProblem(503, "this API process holds its most open streams; try again or poll GET /job/{id}?wait=N",
                          {"Retry-After": str(STREAMS_RETRY_AFTER_S)})  # fmt: skip
    if record.status.terminal and last_event_id == event_id(record):
        # The client has the end already; 204 is what stops an EventSource from reconnecting.
        return Response(status_code=204, headers={"Cache-Control": "no-cache"})
    return StreamingResponse(job_stream(state, record, last_event_id), media_type="text/event-stream", headers=SSE_HEADERS)


class Subscriptions:
    """The jobs one WebSocket watches: a future per job from `JobEvents`, woken ids queued for a re-read."""

    def __init__(self, state: AppState, caller: Principal) -> None:
        self.state = state
        self.caller = caller
        self.budgets = principal_budgets(state)
        self.futures: dict[str, asyncio.Future[str]] = {}
        self.woken: set[str] = set()  # watched ids to re-read: woken, or unread because Redis was away
        self.wakeup = asyncio.Event()

    def _watch(self, job_id: str) -> None:
        old = self.futures.get(job_id)
        if old is not None:
            self.state.events.discard(job_id, old)
        future = self.state.events.add(job_id)
        future.add_done_callback(functools.partial(self._woken_by, job_id))
        self.futures[job_id] = future

    def _woken_by(self, job_id: str, _future: asyncio.Future[str]) -> None:
        self._on_wake(job_id)

    def _on_wake(self, job_id: str) -> None:
        self.woken.add(job_id)
        self.wakeup.set()

    def _forget(self, job_id: str) -> None:
        future = self.futures.pop(job_id, None)
        if future is not None:
            self.state.events.discard(job_id, future)
            self.budgets.unwatch(self.caller.name, 1)
        self.woken.discard(job_id)

    def close(self) -> None:
        for job_id in list(self.futures):
            self._forget(job_id)

    def add(self, job_ids: list[str]) -> list[str]:
        """Start watching the ids not watched yet; those ids, to be read. Over the principal's budget:
        ClosingSocket, nothing added."""
        fresh = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in self.futures]
        self.budgets.watch(self.caller.name, len(fresh))
        for job_id in fresh:
            self._watch(job_id)  # before the read: a transition in between still wakes us
        return fresh

    def take_woken(self) -> list[str]:
        self.wakeup.clear()
        ids, self.woken = [job_id for job_id in self.woken if job_id in self.futures], set()
        for job_id in ids:
            self._watch(job_id)  # re-armed before the read, for the same reason
        return ids

    async def read(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """Messages for the ids read: ended jobs and ids the caller may not see; the rest stay watched."""
        if not job_ids:
            return []
        try:
            records = await self.state.store.get_many(job_ids)
        except UNAVAILABLE as exc:
            log.debug("websocket: redis unavailable (%s); re-reading %d job(s) later", exc, len(job_ids))
            self.woken.update(job_ids)
            return []
        messages: list[dict[str, Any]] = []
        for job_id, record in zip(job_ids, records, strict=True):
            if record is None or not record.visible_to(self.caller.name, self.caller.admin):
                self._forget(job_id)
                messages.append({"type": "not_found", "job_id": job_id})
            elif record.status.terminal:
                self._forget(job_id)
                messages.append({"type": "job", "job": job_view(record)})
        return messages


def parse_message(message: dict[str, Any], max_bytes: int) -> Any:
    """A text or binary WebSocket frame as JSON; ValueError saying what is wrong. A message over
    `max_bytes` is never parsed (ClosingSocket): the server (uvicorn's `ws_max_size`) refuses it
    first, this holds under any other server."""
    raw = message.get("text") if message.get("text") is not None else message.get("bytes")
    if raw is not None and len(raw) > max_bytes:  # a text's characters: never more than its bytes
        raise ClosingSocket(WS_MESSAGE_TOO_BIG, f"message larger than {max_bytes} bytes (WS_MAX_MESSAGE_BYTES)")
    try:
        return orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None


def subscribe_ids(message: Any) -> list[str]:
    """The ids of a `{"subscribe": [...]}` message; ValueError saying what is wrong."""
    if not isinstance(message, dict) or set(message) != {"subscribe"}:
        raise ValueError('expected {"subscribe": ["<job id>", ...]}')
    ids = message["subscribe"]
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= MAX_JOB_ID for i in ids):
        raise ValueError(f"subscribe must be a list of job ids (strings of 1..{MAX_JOB_ID} characters)")
    return ids


async def ws_caller(websocket: WebSocket, state: AppState) -> Principal | None:
    """The caller from `Authorization: Bearer` or, for browsers (which cannot set headers on a
    WebSocket), `?token=`; None after closing the socket with 4401."""
    authorization = websocket.headers.get("authorization")
    token = websocket.query_params.get("token")
    if token is not None:
        # uvicorn logs the path with its query string when the handshake is accepted: keep the
        # secret out of the logs (the same scope object is what it formats).
        websocket.scope["query_string"] = urlencode(
            [(k, "REDACTED" if k == "token" else v) for k, v in websocket.query_params.multi_items()]
        ).encode()
    if authorization is None and token:
        authorization = f"Bearer {token}"
    try:
        return authenticate(state.tokens, authorization)
    except HTTPProblem as problem:
        # Checked before any message is read; the handshake completes only so that the code and
        # reason reach the client: a refused handshake shows browser code nothing but 1006.
        await websocket.accept()
        await websocket.close(WS_UNAUTHORIZED, str(problem.detail)[:120])
        return None


@router.websocket("/ws")
async def job_socket(websocket: WebSocket) -> None:
    """Send `{"subscribe": [ids]}` (any number of messages); each job's view arrives once, when it
    ends (at once if it already has) as `{"type": "job", "job": view}`; unknown ids and other
    principals' jobs as `{"type": "not_found", "job_id"}`; a bad message gets `{"type": "error"}`.
    A message over WS_MAX_MESSAGE_BYTES closes the socket with 1009; going over the principal's budget
    of sockets or watched ids closes the socket that went over with 1008."""
    state: AppState = websocket.app.state.asyncinfer
    caller = await ws_caller(websocket, state)
    if caller is None:
        return
    await websocket.accept()
    streams = open_streams(state)
    if streams.full:
        await websocket.close(WS_TRY_AGAIN_LATER, "this API process holds its most open streams; try again later")
        return
    budgets = principal_budgets(state)
    try:
        budgets.open_socket(caller.name)
    except ClosingSocket as closing:
        await websocket.close(closing.code, closing.reason)
        return
    try:
        with streams.held():
            await serve_subscriptions(websocket, state, caller)
    finally:
        budgets.close_socket(caller.name)


async def serve_subscriptions(websocket: WebSocket, state: AppState, caller: Principal) -> None:
    """The accepted socket's loop: read subscribe messages, send each watched job when it ends."""
    subs = Subscriptions(state, caller)
    receiving: asyncio.Task[Any] = asyncio.ensure_future(websocket.receive())
    waking: asyncio.Task[Any] = asyncio.ensure_future(subs.wakeup.wait())
    next_recheck = time.monotonic() + WS_RECHECK_S
    try:
        while True:
            timeout = WS_RETRY_S if subs.woken else TICK_S
            await asyncio.wait({receiving, waking}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            to_read: list[str] = []
            replies: list[dict[str, Any]] = []
            if receiving.done():
                message = receiving.result()
                if message["type"] == "websocket.disconnect":
                    return
                receiving = asyncio.ensure_future(websocket.receive())
                try:
                    to_read += subs.add(subscribe_ids(parse_message(message, state.settings.ws_max_message_bytes)))
                except ValueError as exc:
                    replies.append({"type": "error", "detail": str(exc)})
                except ClosingSocket as closing:  # this socket only: the principal's others keep theirs
                    await websocket.close(closing.code, closing.reason)
                    return
            if waking.done() or subs.woken:
                to_read += subs.take_woken()
                waking = asyncio.ensure_future(subs.wakeup.wait())
            if time.monotonic() >= next_recheck:
                to_read += subs.futures  # duplicates are dropped below
                next_recheck = time.monotonic() + WS_RECHECK_S
            replies += await subs.read(list(dict.fromkeys(to_read)))
            for reply in replies:
                await websocket.send_text(orjson.dumps(reply).decode())
            if state.draining:
                await websocket.close(WS_SERVICE_RESTART, "API restarting: reconnect and subscribe again")
                return
    except (WebSocketDisconnect, OSError):
        return  # the client left while we were sending
    finally:
        receiving.cancel()
        waking.cancel()
        subs.close()

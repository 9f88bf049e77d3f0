"""One asyncinfer service's client and the job handle it returns: `AsyncClient`, `AsyncJob` (aio.py) and
`Client`, `Job` (client.py), with the same methods.

aio.py is the source of both: client.py is generated from it by client/generate_sync.py (unasync drops
`async`/`await` and makes the Async names sync), so a change lands once. Edit aio.py, then run
`make sync-client`; tests/client/test_generated_sync.py fails while client.py is stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import islice
from typing import Any

import httpx

from asyncinfer_client import protocol
from asyncinfer_client._concurrency import AsyncChunkPool, ChunkEnd, async_sleep
from asyncinfer_client._transport import async_transport
from asyncinfer_client.errors import APIError
from asyncinfer_client.protocol import Call, RetryPolicy
from asyncinfer_client.views import JobView, Outcome

log = logging.getLogger("asyncinfer_client")


class AsyncJob:
    """A submitted job. `wait()` / `result()` long-poll the service in slices until it ends."""

    def __init__(
        self, client: AsyncClient, job_id: str, model: str | None = None, view: JobView | None = None, replayed: bool = False
    ) -> None:
        self.client = client
        self.id = job_id
        self.model = model
        self.view = view  # the last view seen; None until the job was read once
        self.replayed = replayed  # the submit found an earlier job with the same idempotency key

    async def refresh(self) -> JobView:
        """Read the job now (no waiting)."""
        self.view = await self.client.get(self.id)
        return self.view

    async def wait(self, timeout: float | None = None) -> JobView:
        """Hold until the job ends and return its view; `timeout` in seconds (None = as long as it takes).

        Raises JobFailed / JobCanceled / JobExpired when it ended without a result, Timeout when it did not end.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.view is None or not self.view.terminal:
            slice_s = protocol.wait_slice_s(deadline)
            if slice_s is None:
                raise protocol.timed_out(self.id, timeout)
            self.view = await self.client.get(self.id, wait=slice_s)
        return protocol.finished_view(self.view)

    async def result(self, timeout: float | None = None) -> Any:
        """The job's result once it ends (see `wait` for the errors); a result the service keeps in its
        object store (`result_url`) is downloaded: a dict of numpy arrays for an array input, else JSON."""
        view = await self.wait(timeout)
        url = view.raw.get("result_url")
        if view.result is None and url:
            return await self.client.download(url)
        return view.result

    async def cancel(self) -> JobView:
        """Cancel the job while it is pending (Conflict once a worker started it)."""
        self.view = await self.client.cancel(self.id)
        return self.view

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.view.status if self.view else None!r})"


class AsyncClient:
    """Client of one asyncinfer service (`AsyncClient` awaits, `Client` blocks; the same methods).

    `base_url` defaults to ASYNCINFER_URL (else http://127.0.0.1:8000) and `token` to ASYNCINFER_TOKEN.
    Every request has a timeout; connection errors, 429 and 503 are retried (see RetryPolicy) and a
    submit's idempotency key is reused on each retry, so a retried submit never makes a second job.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = protocol.DEFAULT_REQUEST_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        upload_above_bytes: int = protocol.UPLOAD_ABOVE_BYTES,
    ) -> None:
        self.upload_above_bytes = upload_above_bytes  # numpy inputs larger than this go through POST /uploads
        self.base_url = (base_url or protocol.default_url()).rstrip("/")
        self._token = token if token is not None else protocol.default_token()
        self.retry_policy = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            transport=transport or async_transport(protocol.http_limits(max_connections)),
            **protocol.http_options(self.base_url, self._token, timeout),
        )

    def __repr__(self) -> str:
        return protocol.masked_repr(type(self).__name__, self.base_url, self._token)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- transport ----------------------------------------------------------------------------------

    async def send(self, call: Call) -> httpx.Response:
        """Send one call, retrying per the policy; the last answer is returned whatever its status."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    headers=call.headers,
                    timeout=call.timeout_s if call.timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                delay = self.retry_policy.delay_after_error(attempt, exc, call.resendable)
                if delay is None:
                    raise protocol.connection_failed(self.base_url, call, exc) from exc
                log.info("%s %s: %s; retry %d in %.2fs", call.method, call.path, type(exc).__name__, attempt + 1, delay)
            else:
                delay = self.retry_policy.delay_after_response(attempt, response)
                if delay is None:
                    return response
                await response.aclose()
                log.info("%s %s: HTTP %d; retry %d in %.2fs", call.method, call.path, response.status_code, attempt + 1, delay)
            await async_sleep(delay)
            attempt += 1

    async def _json(self, call: Call) -> Any:
        return protocol.checked_json(await self.send(call))

    # -- jobs ----------------------------------------------------------------------------------------

    async def submit(
        self,
        data: Any,
        model: str | None = None,
        priority: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> AsyncJob:
        """Submit one job (`data`: one or more input rows). With `wait` (seconds, at most 30) the service holds
        the answer until the job ends, so a fast job needs no second request. A numpy array over
        `upload_above_bytes` is uploaded to the service's object store first and submitted by reference."""
        input_url = await self.upload(data, model) if protocol.is_large_array(data, self.upload_above_bytes) else None
        key = idempotency_key or protocol.new_idempotency_key()
        call = protocol.submit_call(data, model, priority, callback_url, key, wait, input_url)
        response = await self.send(call)
        body = protocol.checked_json(response)
        replayed = response.headers.get("idempotent-replayed") == "true"
        view = JobView.from_json(body) if response.status_code == 200 else None
        return AsyncJob(self, str(body["job_id"]), body.get("model") or model, view, replayed)

    async def upload(self, array: Any, model: str | None = None) -> str:
        """Upload a numpy array as .npy through a presigned URL (POST /uploads); returns its `input_url`."""
        grant = await self._json(protocol.upload_call(model))
        async with httpx.AsyncClient(timeout=protocol.UPLOAD_TIMEOUT_S) as plain:  # no bearer token to the store
            response = await plain.put(grant["upload_url"], content=protocol.npy_bytes(array))
            response.raise_for_status()
        return str(grant["input_url"])

    async def download(self, url: str) -> Any:
        """A result object through its presigned `result_url`: numpy arrays (.npz) or JSON."""
        async with httpx.AsyncClient(timeout=protocol.UPLOAD_TIMEOUT_S) as plain:
            response = await plain.get(url)
            response.raise_for_status()
        return protocol.object_result(url, response.content)

    async def predict(
        self, data: Any, model: str | None = None, timeout: float | None = 60.0, priority: str | None = None
    ) -> Any:
        """Submit and wait in one call; the job's result (JobFailed etc. when it has none, Timeout after `timeout`)."""
        job = await self.submit(data, model, priority, wait=min(timeout, protocol.MAX_WAIT_S) if timeout else protocol.MAX_WAIT_S)
        return await job.result(timeout)

    async def submit_many(
        self,
        inputs: Sequence[Any],
        model: str | None = None,
        priority: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        chunk_size: int = protocol.DEFAULT_CHUNK_SIZE,
        idempotency_keys: Sequence[str] | None = None,
    ) -> list[AsyncJob | APIError]:
        """Submit many jobs with the bulk route, `chunk_size` per request. One entry per input, in order: its
        job handle, or the APIError that refused that item (e.g. a 422 naming the field).

        `idempotency_keys` (one per input) give each input its own key, so a later call that sends an input
        again in another chunk replays its job (`job.replayed`) instead of making a second one."""
        submitted: list[AsyncJob | APIError] = []
        for start in range(0, len(inputs), chunk_size):
            key = f"{idempotency_key}:{start}" if idempotency_key else protocol.new_idempotency_key()
            item_keys = None if idempotency_keys is None else idempotency_keys[start : start + chunk_size]
            call = protocol.submit_many_call(inputs[start : start + chunk_size], model, priority, callback_url, key, item_keys)
            body = await self._json(call)
            for index, item in enumerate(body["items"]):
                outcome = protocol.submitted_item(item, call, start + index)
                submitted.append(
                    outcome
                    if isinstance(outcome, APIError)
                    else AsyncJob(self, outcome, body.get("model") or model, replayed=bool(item.get("replayed")))
                )
        return submitted

    async def map(
        self,
        inputs: Iterable[Any],
        model: str | None = None,
        priority: str | None = None,
        *,
        concurrency: int = 4,
        ordered: bool = True,
        chunk_size: int = protocol.DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        idempotency_keys: Sequence[str] | None = None,
    ) -> AsyncIterator[Outcome]:
        """Run every input and yield one Outcome per input: in input order (`ordered=True`) or as jobs end.

        Inputs go in bulk requests of `chunk_size`; at most `concurrency` chunks are in flight (threads for
        `Client`, tasks for `AsyncClient`). A job that fails yields an Outcome with its error (`outcome.unwrap()`
        raises it); errors that stop everything (authentication, the service unreachable) are raised by the
        iterator. `timeout` bounds each chunk's wait. `idempotency_keys` (one per input, in input order) make a
        re-run exactly-once: an input sent before replays its job (`outcome.replayed`) instead of running again.
        """
        pool = AsyncChunkPool(concurrency)
        items = enumerate(inputs)
        buffered: dict[int, Outcome] = {}
        next_index = 0
        running = 0
        try:
            while True:
                while running < concurrency and (chunk := list(islice(items, chunk_size))):
                    keys = None if idempotency_keys is None else {index: idempotency_keys[index] for index, _ in chunk}
                    pool.start(self._run_chunk, chunk, keys, model, priority, timeout, pool)
                    running += 1
                if running == 0:
                    return
                event = await pool.next_event()
                if isinstance(event, ChunkEnd):
                    running -= 1
                    if event.error is not None:
                        raise event.error
                elif not ordered:
                    yield event
                else:
                    buffered[event.index] = event
                    while next_index in buffered:
                        yield buffered.pop(next_index)
                        next_index += 1
        finally:
            await pool.aclose()

    async def _run_chunk(
        self,
        chunk: list[tuple[int, Any]],
        keys: dict[int, str] | None,  # input index -> its idempotency key
        model: str | None,
        priority: str | None,
        timeout: float | None,
        pool: AsyncChunkPool,
    ) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        indexes: dict[str, int] = {}
        replayed: set[str] = set()
        pending, attempt = chunk, 0
        while pending and not pool.stopped:
            try:
                pending_keys = None if keys is None else [keys[index] for index, _ in pending]
                jobs = await self.submit_many(
                    [data for _, data in pending], model, priority, chunk_size=len(pending), idempotency_keys=pending_keys
                )
                replayed.update(job.id for job in jobs if not isinstance(job, APIError) and job.replayed)
                submitted = [job if isinstance(job, APIError) else job.id for job in jobs]
            except APIError as exc:
                if exc.status not in protocol.CHUNK_REJECTED_STATUSES:
                    raise
                submitted = [exc] * len(pending)  # the whole request was refused: so is each of its items
            sorted_items = protocol.sort_submission(pending, submitted, attempt < self.retry_policy.max_retries)
            indexes.update(sorted_items.accepted)
            for outcome in sorted_items.rejected:
                pool.emit(outcome)
            pending = sorted_items.again
            if pending:
                await async_sleep(self.retry_policy.backoff_s(attempt))
                attempt += 1
        running = list(indexes)
        while running and not pool.stopped:
            slice_s = protocol.wait_slice_s(deadline, protocol.MAP_POLL_SLICE_S)
            if slice_s is None:
                for outcome in protocol.timeout_outcomes(indexes, running, timeout, replayed):
                    pool.emit(outcome)
                break
            # the chunk's jobs run roughly in order: once the last one ends, most of the others have
            await self.get(running[-1], wait=slice_s)
            done, running = protocol.chunk_outcomes(indexes, await self.lookup(running), running, replayed)
            for outcome in done:
                pool.emit(outcome)

    async def get(self, job_id: str, wait: float | None = None) -> JobView:
        """The job's view; with `wait` (seconds, at most 30) held until it ends or the time passes."""
        return JobView.from_json(await self._json(protocol.get_call(job_id, wait)))

    def job(self, job_id: str) -> AsyncJob:
        """A handle on an existing job (no request is made)."""
        return AsyncJob(self, job_id)

    async def cancel(self, job_id: str) -> JobView:
        """Cancel a pending job (Conflict when it already started or ended)."""
        return JobView.from_json(await self._json(Call("DELETE", protocol.job_path(job_id))))

    async def retry(self, job_id: str) -> JobView:
        """Queue a failed or expired job again (Conflict otherwise)."""
        return JobView.from_json(await self._json(Call("POST", protocol.job_path(job_id, "/retry"), resendable=False)))

    async def lookup(self, ids: Sequence[str]) -> list[JobView | None]:
        """Many jobs in one request, in the order of `ids`; None for an unknown id."""
        return protocol.lookup_items(await self._json(protocol.lookup_call(ids)))

    # -- models ----------------------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """The models this service serves: `{"name", "version", "ready", "default"}` each."""
        return list((await self._json(Call("GET", "/models")))["models"])

    async def metadata(self, model: str | None = None) -> dict[str, Any]:
        """A model's inputs, outputs, labels and an example input (the default model's when None)."""
        return dict(await self._json(Call("GET", protocol.metadata_path(model))))

    # -- operators (admin token) -----------------------------------------------------------------------

    async def dead_letters(self, model: str | None = None, limit: int | None = None) -> list[JobView]:
        """Jobs in the dead-letter lists (all models, or one)."""
        params = {key: str(value) for key, value in (("model", model), ("limit", limit)) if value is not None}
        body = await self._json(Call("GET", "/admin/dead-letters", params=params or None))
        return [JobView.from_json(item) for item in body["items"]]

    async def retry_dead_letters(self, model: str | None = None) -> int:
        """Queue every dead-lettered job again (of one model, or all); how many were queued."""
        body = {"model": model} if model else {}
        return int((await self._json(Call("POST", "/admin/dead-letters/retry", body, resendable=False)))["retried"])

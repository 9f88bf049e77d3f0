"""One webhook attempt: sign the job view (Standard Webhooks), POST it to a vetted address, and classify
the answer as delivered, retry later (with which delay) or give up. No Redis here: see notifier.main."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from jobqueue import tracing
from jobqueue.notifications import DeliveryRecord
from jobqueue.settings import Settings
from jobqueue.ssrf import CallbackRefused, Resolver, resolve_vetted, system_resolver, validate_callback_url

log = logging.getLogger("asyncinfer.notifier")

# Retry schedule: exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
# Jitter"): attempt n waits uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**(n-1))). With the
# default WEBHOOK_MAX_ATTEMPTS=8 the ceilings are 1, 2, 4, ..., 64 s, so a receiver down for a few
# minutes still gets its webhook, within the default JOB_TTL_SECONDS; jitter spreads a receiver's
# backlog instead of retrying it in lockstep after an outage.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0
# A receiver's Retry-After is honoured up to this; beyond it we would outlive the job record.
RETRY_AFTER_CAP_S = 600.0
# 4xx answers that mean "later", not "never" (timeout, conflict, too early, too many requests).
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
# How much of a failing receiver's body goes into notify_last_error.
ERROR_BODY_CHARS = 200
USER_AGENT = "asyncinfer-notifier/1"


@dataclass(frozen=True)
class AttemptOutcome:
    """What one POST came to. `retry_after_s` is the receiver's own wish (429/503), if it gave one."""

    delivered: bool
    permanent: bool
    http_status: int | None
    error: str
    retry_after_s: float | None = None


def backoff_delay_s(attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter delay after failed attempt number `attempt` (1-based); see BACKOFF_BASE_S."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or an HTTP date), capped at RETRY_AFTER_CAP_S;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def classify(status: int) -> tuple[bool, bool]:
    """(delivered, permanent) for an HTTP status. 2xx delivered; 410 Gone and other 4xx (except
    RETRYABLE_4XX) permanent; 3xx permanent too (redirects are not followed: a redirect could lead
    anywhere the address guard would refuse); 5xx and RETRYABLE_4XX retried."""
    if 200 <= status < 300:
        return True, False
    if status in RETRYABLE_4XX or status >= 500:
        return False, False
    return False, True


def signed_headers(secret: str, message_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for `body`: webhook-id, webhook-timestamp, webhook-signature."""
    timestamp = now or datetime.now(tz=UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


class PinnedTransport(httpx.AsyncBaseTransport):
    """Connects only to addresses it has resolved and vetted itself, while the request keeps its name.

    Why this defeats DNS rebinding: the name is resolved exactly once per request, here; every address
    it returned is checked (`resolve_vetted`); then the request's URL is rewritten to the chosen IP, so
    the connection layer never resolves the name again and cannot be handed a different (internal)
    address by a second, attacker-controlled answer. The `Host` header (set by httpx from the original
    URL) and, for https, the TLS SNI and certificate check (httpcore's `sni_hostname` extension) still
    use the original name, so virtual hosting and certificate verification work unchanged.
    Keep-alive is off in the inner pool: pooled connections are keyed by IP, and a connection opened
    for one name must not be reused for another name on the same IP (its certificate was checked for
    the first name only).
    """

    def __init__(
        self, allow_private: bool, resolver: Resolver = system_resolver, inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        # trust_env=False: an HTTP(S)_PROXY variable would route around the pinning
        self.inner = inner or httpx.AsyncHTTPTransport(
            trust_env=False, limits=httpx.Limits(max_connections=None, max_keepalive_connections=0)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        addresses = await resolve_vetted(
            host, request.url.port or (443 if request.url.scheme == "https" else 80), self.allow_private, self.resolver
        )
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        last_error: httpx.ConnectError | None = None
        for ip in addresses:  # the resolver's order; the next address only when one refuses the connection
            request.url = request.url.copy_with(host=str(ip))
            try:
                return await self.inner.handle_async_request(request)
            except httpx.ConnectError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_client(settings: Settings, resolver: Resolver = system_resolver) -> httpx.AsyncClient:
    """The HTTP client every delivery uses: pinned transport, no redirects, no proxies from the environment."""
    return httpx.AsyncClient(
        transport=PinnedTransport(settings.webhook_allow_private, resolver),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(settings.webhook_timeout_seconds),
    )


async def attempt_delivery(client: httpx.AsyncClient, record: DeliveryRecord, settings: Settings, secret: str) -> AttemptOutcome:
    """POST the signed job view once, within WEBHOOK_TIMEOUT_SECONDS in all (DNS, connect, send, read)."""
    if not record.callback_url:
        return AttemptOutcome(False, True, None, "job record has no callback_url")
    try:
        # Re-checked at delivery: settings may have tightened since submit, and records may be written
        # by other paths than the API.
        validate_callback_url(record.callback_url, settings)
    except ValueError as exc:
        return AttemptOutcome(False, True, None, str(exc))
    body = orjson.dumps(record.view).decode()
    headers = signed_headers(secret, record.message_id, body)
    span, traceparent = tracing.delivery_span(record.traceparent, record.view.get("model"), record.job_id, record.callback_url)
    if traceparent:
        headers["traceparent"] = traceparent  # the receiver's handling joins the job's trace
    outcome = await _post(client, record, settings, body, headers)
    tracing.end_delivery_span(span, outcome.http_status, "" if outcome.delivered else outcome.error)
    return outcome


async def _post(
    client: httpx.AsyncClient, record: DeliveryRecord, settings: Settings, body: str, headers: dict[str, str]
) -> AttemptOutcome:
    assert record.callback_url is not None
    try:
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            async with client.stream("POST", record.callback_url, content=body.encode(), headers=headers) as response:
                snippet = b""
                if not 200 <= response.status_code < 300:
                    async for chunk in response.aiter_bytes():
                        snippet += chunk
                        if len(snippet) >= ERROR_BODY_CHARS:
                            break
    except CallbackRefused as exc:
        return AttemptOutcome(False, True, None, str(exc))
    except TimeoutError:
        return AttemptOutcome(
            False, False, None, f"timed out after {settings.webhook_timeout_seconds:g}s (WEBHOOK_TIMEOUT_SECONDS)"
        )
    except httpx.TimeoutException as exc:
        return AttemptOutcome(False, False, None, f"timed out: {type(exc).__name__}")
    except (httpx.HTTPError, OSError) as exc:
        return AttemptOutcome(False, False, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    status = response.status_code
    delivered, permanent = classify(status)
    if delivered:
        return AttemptOutcome(True, False, status, "")
    text = snippet[:ERROR_BODY_CHARS].decode(errors="replace").strip()
    error = f"HTTP {status}" + (f": {text}" if text else "")
    if 300 <= status < 400:
        error += " (redirects are not followed)"
    retry_after = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
    return AttemptOutcome(False, permanent, status, error, retry_after)

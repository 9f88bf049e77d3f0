"""`asyncinfer-notifier`: deliver finished jobs' webhooks from the Redis outbox, with leases, retries and
probes. Several replicas may run: each id is leased to one of them at a time."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import signal
import sys
import time
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import redis.asyncio
from standardwebhooks.webhooks import Webhook

from jobqueue import logs, tracing
from jobqueue.connection import REFUSED, UNAVAILABLE, async_client
from jobqueue.health import serve_health
from jobqueue.keys import StoreKeys
from jobqueue.notifications import Lease, NotificationStore, TransitionCode
from jobqueue.objectstore import object_store
from jobqueue.settings import Settings, get_settings
from jobqueue.shards import registered_tags
from jobqueue.views import sign_result_urls_with
from notifier.delivery import attempt_delivery, backoff_delay_s, make_client

log = logging.getLogger("asyncinfer.notifier")

# Deliveries one process runs at once; each holds a socket for up to WEBHOOK_TIMEOUT_SECONDS.
DELIVERY_CONCURRENCY = 32
# How often the outbox is polled when nothing was due: the latency a webhook adds to a job's end.
POLL_INTERVAL_S = 0.25
# Lease slack beyond two delivery timeouts: Redis round trips and a slow event loop must not let a
# lease run out under a delivery that is still within its timeout (that would send it twice).
LEASE_SLACK_S = 5.0
# The outbox size for /metrics is read this often rather than on every poll.
OUTBOX_GAUGE_INTERVAL_S = 5.0
# /healthz fails when the loop has not turned for this long (a wedged event loop).
LOOP_STALL_S = 30.0
TAGS_REFRESH_S = 10.0  # on a Cluster: how often the registry of model tags is read again
REDIS_BACKOFF_MAX_S = 5.0
# Standard Webhooks asks for secrets of 24 to 64 random bytes; a shorter one is guessable.
MIN_SECRET_BYTES = 24
# How a 2xx counts, by what notify_delivered made of it; any other code: the lease was lost.
DELIVERED_COUNTS = {TransitionCode.DONE: "delivered", TransitionCode.SUPERSEDED: "superseded"}


def lease_ms(settings: Settings) -> int:
    """The visibility timeout of a claimed delivery: 2 x WEBHOOK_TIMEOUT_SECONDS + LEASE_SLACK_S."""
    return int((2 * settings.webhook_timeout_seconds + LEASE_SLACK_S) * 1000)


class Notifier:
    """The delivery loop: claim due ids, deliver each on its own task (bounded), record the outcome."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis, http: httpx.AsyncClient, secret: str) -> None:
        self.settings = settings
        self.client = client
        self._tag_clients: dict[str, redis.asyncio.Redis] = {}  # on a Cluster: one per model tag's slot
        self.tags: list[str] = []  # on a Cluster: every model's tag, from the registry (jobqueue/shards.py)
        self.store = NotificationStore(client, settings, self._tag_client, lambda: self.tags)
        self.http = http
        self.secret = secret
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.inflight: dict[asyncio.Task[None], Lease] = {}
        self.redis_ok = False
        self.last_loop = time.monotonic()
        self.outbox_size = 0
        self.counts: dict[str, int] = {"delivered": 0, "retried": 0, "failed": 0, "lease_lost": 0, "superseded": 0, "errors": 0}

    def _tag_client(self, tag: str) -> redis.asyncio.Redis:
        if tag not in self._tag_clients:
            slot_key = StoreKeys(self.settings.key_prefix, tag).job("")
            self._tag_clients[tag] = async_client(self.settings, max_connections=DELIVERY_CONCURRENCY + 4, slot_key=slot_key)
        return self._tag_clients[tag]

    async def _read_tags(self) -> None:
        """On a Cluster, the outboxes to serve: every model's tag, read again now and then (a model
        added later gets its tag from the first process that serves it)."""
        if self.settings.redis_cluster:
            registry = await self.client.hgetall(StoreKeys(self.settings.key_prefix).shard_registry)
            self.tags = registered_tags(registry)

    async def aclose(self) -> None:
        for client in self._tag_clients.values():
            await client.aclose()

    def stop(self) -> None:
        """Stop claiming; in-flight deliveries finish (see `serve`)."""
        self.stopping.set()
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """Probe state, read by the health thread (plain attribute reads)."""
        alive = time.monotonic() - self.last_loop < LOOP_STALL_S
        return {"alive": alive, "ready": alive and self.redis_ok and not self.stopping.is_set(), "in_flight": len(self.inflight)}

    def metrics_text(self) -> str:
        """Prometheus text exposition of the notifier's counters and gauges."""
        lines = [
            "# HELP asyncinfer_notifier_deliveries_total Webhook attempts by outcome.",
            "# TYPE asyncinfer_notifier_deliveries_total counter",
            *(f'asyncinfer_notifier_deliveries_total{{outcome="{k}"}} {v}' for k, v in self.counts.items()),
            "# HELP asyncinfer_notifier_in_flight Webhook attempts running now.",
            "# TYPE asyncinfer_notifier_in_flight gauge",
            f"asyncinfer_notifier_in_flight {len(self.inflight)}",
            "# HELP asyncinfer_notifier_outbox Deliveries waiting or leased (ZCARD of the notify set).",
            "# TYPE asyncinfer_notifier_outbox gauge",
            f"asyncinfer_notifier_outbox {self.outbox_size}",
        ]
        return "\n".join(lines) + "\n"

    async def serve(self) -> None:
        """Run until `stop()`, then wait for in-flight deliveries (each bounded by its timeout)."""
        backoff = 0.1
        next_gauge = next_tags = 0.0
        lease = lease_ms(self.settings)
        while not self.stopping.is_set():
            self.last_loop = time.monotonic()
            free = DELIVERY_CONCURRENCY - len(self.inflight)
            try:
                if self.last_loop >= next_tags:
                    await self._read_tags()
                    next_tags = self.last_loop + TAGS_REFRESH_S
                leases = await self.store.claim(free, lease) if free > 0 else []
                if self.last_loop >= next_gauge:
                    self.outbox_size = await self.store.due_count()
                    next_gauge = self.last_loop + OUTBOX_GAUGE_INTERVAL_S
                self.redis_ok, backoff = True, 0.1
            except (*UNAVAILABLE, *REFUSED) as exc:  # refusals too: a Cluster slot half-way through a move
                self.redis_ok = False
                log.warning("redis unavailable or refusing (%s); retrying in %.1fs", exc, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, REDIS_BACKOFF_MAX_S)
                continue
            for claimed in leases:
                task = asyncio.create_task(self._deliver(claimed), name=f"deliver-{claimed.job_id}")
                self.inflight[task] = claimed
                task.add_done_callback(self._done)
            if len(leases) < free or free <= 0:
                # nothing more due right now, or every slot busy: wait for the poll interval or a free slot
                await self._pause(POLL_INTERVAL_S)
        await self._drain()

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.pop(task, None)
        self._wake.set()

    async def _drain(self) -> None:
        """Let in-flight attempts end (each is bounded by WEBHOOK_TIMEOUT_SECONDS); hand back any that
        still run after that, due now, so another replica takes them without waiting for the lease."""
        if self.inflight:
            log.info("stopping: waiting for %d in-flight deliveries", len(self.inflight))
            await asyncio.wait(list(self.inflight), timeout=self.settings.webhook_timeout_seconds + 2)
        stuck = dict(self.inflight)
        for task in stuck:
            task.cancel()
        for task, lease in stuck.items():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(*UNAVAILABLE):
                await self.store.release(lease)

    async def _deliver(self, lease: Lease) -> None:
        """One attempt for one leased id, and the one script that records how it went."""
        try:
            record = await self.store.read(lease.job_id)
            if record is None:  # the record expired between claim and read: drop the id
                await self.store.failed_attempt(lease, None, "job record expired", True, 0)
                return
            if not record.describes(lease):
                # retried between claim and read: this end's view is gone, and a running job's view must
                # not go out; handed back, the id is dropped while the job runs, its next end re-adds it
                await self.store.release(lease)
                self._count("superseded")
                log.info("skipped %s end %d: the job was retried since", lease.job_id, lease.end)
                return
            outcome = await attempt_delivery(self.http, record, self.settings, self.secret)
            ids = logs.job_ids(record.job_id, record.view.get("model"), record.traceparent)
            if outcome.delivered:
                code = await self.store.delivered(lease, outcome.http_status or 200)
                self._count(DELIVERED_COUNTS.get(code, "lease_lost"))
                log.info("delivered %s end %d (HTTP %s)", lease.job_id, lease.end, outcome.http_status, extra=ids)
                return
            previous = (record.view["notification"] or {}).get("attempts", 0)
            delay_s = outcome.retry_after_s if outcome.retry_after_s is not None else backoff_delay_s(previous + 1)
            result = await self.store.failed_attempt(
                lease, outcome.http_status, outcome.error, outcome.permanent, int(delay_s * 1000)
            )
            if result.code is TransitionCode.GIVEN_UP:
                self._count("failed")
                log.warning("gave up %s after %d attempts: %s", lease.job_id, result.attempts, outcome.error, extra=ids)
            elif result.code is TransitionCode.DONE:
                self._count("retried")
                log.info(
                    "attempt %d for %s failed (%s); next in %.1fs",
                    result.attempts,
                    lease.job_id,
                    outcome.error,
                    delay_s,
                    extra=ids,
                )
            elif result.code is TransitionCode.SUPERSEDED:
                self._count("superseded")
            else:
                self._count("lease_lost")
        except UNAVAILABLE as exc:
            # the outcome is not recorded; the lease runs out and the id is attempted again (at-least-once)
            self._count("errors")
            log.warning("redis unavailable while delivering %s (%s); it will be retried", lease.job_id, exc)
        except Exception:
            self._count("errors")
            log.exception("delivery of %s failed unexpectedly; it will be retried after its lease", lease.job_id)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1


def serve_probes(port: int, notifier: Notifier, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """/healthz, /readyz (JSON, 200 or 503) and /metrics on a daemon thread, as the workers serve theirs."""
    return serve_health(port, notifier.health, lambda: notifier.metrics_text().encode(), host)


def signing_secret(settings: Settings) -> str:
    """WEBHOOK_SECRET(_FILE), checked to be a usable Standard Webhooks secret; SystemExit otherwise:
    unsigned webhooks would let anyone forge results, so the notifier does not start without one."""
    secret = settings.webhook_secret_value
    if not secret:
        raise SystemExit("asyncinfer-notifier: WEBHOOK_SECRET_FILE (or WEBHOOK_SECRET) must hold a whsec_... secret")
    try:
        Webhook(secret)
        size = len(base64.b64decode(secret.removeprefix("whsec_") + "=="))
    except Exception as exc:
        raise SystemExit(f"asyncinfer-notifier: WEBHOOK_SECRET is not a valid whsec_ (base64) secret: {exc}") from None
    if size < MIN_SECRET_BYTES:
        raise SystemExit(
            f"asyncinfer-notifier: WEBHOOK_SECRET holds {size} bytes; Standard Webhooks needs at least {MIN_SECRET_BYTES}"
        )
    return secret


async def main(settings: Settings) -> None:
    """Build the clients, install SIGTERM/SIGINT handling, serve probes, run until stopped."""
    secret = signing_secret(settings)
    objects = object_store(settings)
    sign_result_urls_with(objects.presign_get_url if objects else None)  # a webhook's view carries result_url too
    # on a Cluster: the node serving the tag registry
    registry = StoreKeys(settings.key_prefix).shard_registry
    client = async_client(settings, max_connections=DELIVERY_CONCURRENCY + 4, slot_key=registry)
    http = make_client(settings)
    notifier = Notifier(settings, client, http, secret)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, notifier.stop)
    probes = serve_probes(settings.worker_health_port, notifier) if settings.worker_health_port else None
    log.info(
        "notifier up: outbox %s, timeout %gs, max attempts %d, lease %dms",
        notifier.store.keys.notify,
        settings.webhook_timeout_seconds,
        settings.webhook_max_attempts,
        lease_ms(settings),
    )
    try:
        await notifier.serve()
    finally:
        if probes:
            probes.shutdown()
        await http.aclose()
        await notifier.aclose()
        await client.aclose()
    log.info("notifier stopped")


def run() -> None:
    """Console script `asyncinfer-notifier`: configured by environment variables (jobqueue/settings.py)."""
    argparse.ArgumentParser(prog="asyncinfer-notifier", description="Deliver asyncinfer job webhooks.").parse_args()
    settings = get_settings()
    logs.configure(settings)
    tracing.setup("asyncinfer-notifier", settings.tracing_headers_file)  # imports opentelemetry only when OTEL_* turns it on
    asyncio.run(main(settings))
    sys.exit(0)


if __name__ == "__main__":
    run()

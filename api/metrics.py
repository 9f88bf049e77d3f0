"""The API's /metrics body: this process's own metrics (requests) plus the queue state read from Redis
for this scrape (`jobqueue.metrics.QueueCollector`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis

from jobqueue import admin, metrics
from jobqueue.connection import UNAVAILABLE

if TYPE_CHECKING:
    from api.state import AppState

log = logging.getLogger("asyncinfer.api")
# A scrape must answer within Prometheus' scrape timeout (10 s by default) even when Redis hangs.
SCRAPE_REDIS_TIMEOUT_S = 3.0


async def metrics_text(state: AppState) -> str:
    """The exposition text; without Redis it still answers, with `asyncinfer_redis_up 0`."""
    try:
        overview = await asyncio.wait_for(
            admin.overview(state.store.client, state.store.keys, state.models.names()), SCRAPE_REDIS_TIMEOUT_S
        )
    except (*UNAVAILABLE, redis.ResponseError, TimeoutError) as exc:
        log.debug("metrics: queue state not read (%s)", exc)
        overview = None
    body, _ = metrics.render(overview, with_queue=True)
    return body.decode()

"""Bench-only API runner: our `api.app:create_app` under uvicorn or granian, with or without the hot path.

    python -m bench.serve --server uvicorn|granian [--no-hotpath]   # PORT and the usual env vars

Used by `bench/run.py` to A/B the ASGI server and the `api/hotpath.py` bypass in the same run, with the
same app, settings and load. Production runs `asyncinfer-api` (api/main.py); nothing here is shipped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

from fastapi import FastAPI

HOTPATH_ENV = "BENCH_HOTPATH"  # "0" drops the HotPathMiddleware (granian imports the factory by name)
REARM_ENV = "BENCH_REARM"  # "1" runs the proposed AppState.wait_for (below) instead of the shipped one


async def rearmed_wait_for(self: Any, job_id: str, timeout_s: float, disconnected: asyncio.Future[Any] | None = None) -> Any:
    """The change proposed for `api/state.py` `AppState.wait_for`, measured here before the lead applies it.

    Shipped: after a wake-up it re-reads the record and only then registers a new future. `JobEvents.wake`
    pops the job's futures, so an `ended` message arriving during that HMGET (the `processing` event
    comes a few ms before it) finds no waiter and is lost: the waiter sleeps until the 2 s recheck.
    Proposed: re-arm before reading. Any `ended` published after the re-arm wakes the new future; one
    published before it was sent after `finish` had run, so the read that follows sees the end.
    (Skipping the read after a `processing` wake-up is NOT safe: `processing` and `ended` often arrive in
    one socket read and the listener handles both before the waiter runs again.)
    """
    from api.state import LONG_POLL_RECHECK_S

    deadline = time.monotonic() + timeout_s
    future = self.events.add(job_id)
    try:
        record = await self.store.get(job_id)
        while not record.status.terminal and not self.draining:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (disconnected is not None and disconnected.done()):
                break
            waiting: set[asyncio.Future[Any]] = {asyncio.ensure_future(asyncio.shield(future))}
            if disconnected is not None:
                waiting.add(disconnected)
            await asyncio.wait(waiting, timeout=min(remaining, LONG_POLL_RECHECK_S), return_when=asyncio.FIRST_COMPLETED)
            for pending in waiting:
                if pending is not disconnected and not pending.done():
                    pending.cancel()
            if disconnected is not None and disconnected.done():
                break
            if future.done():
                self.events.discard(job_id, future)
                future = self.events.add(job_id)  # armed before the read: no wake-up can fall in between
            record = await self.store.get(job_id)
    finally:
        self.events.discard(job_id, future)
    return record


def build_app() -> FastAPI:
    """create_app() as shipped, minus the HotPathMiddleware when BENCH_HOTPATH=0.

    Starlette builds the middleware stack on the first request, so removing the entry from
    `user_middleware` before serving gives exactly the app without the bypass."""
    from api.app import create_app
    from api.hotpath import HotPathMiddleware

    if os.environ.get(REARM_ENV) == "1":
        from api.state import AppState

        AppState.wait_for = rearmed_wait_for  # type: ignore[method-assign]
    app = create_app()
    if os.environ.get(HOTPATH_ENV, "1") == "0":
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HotPathMiddleware]
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--no-hotpath", action="store_true")
    parser.add_argument("--rearm", action="store_true", help="the proposed AppState.wait_for (wake-ups never lost)")
    args = parser.parse_args()
    if args.no_hotpath:
        os.environ[HOTPATH_ENV] = "0"
    if args.rearm:
        os.environ[REARM_ENV] = "1"
    port = int(os.environ.get("PORT", "8000"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.server == "uvicorn":
        import uvicorn

        # the settings api/main.py uses: uvloop + httptools picked by "auto", no access log
        uvicorn.run(build_app(), host="127.0.0.1", port=port, access_log=False, log_level="warning")
        return
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        "bench.serve:build_app",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        log_level=LogLevels.warning,
    ).serve()


if __name__ == "__main__":
    main()

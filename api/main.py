"""Runs the API process (`asyncinfer-api`): uvicorn with a graceful, load-balancer-friendly drain."""

from __future__ import annotations

import logging
import sys
import threading
from types import FrameType

import uvicorn
from api.app import create_app
from api.state import AppState
from jobqueue.settings import get_settings

log = logging.getLogger("asyncinfer.api")


class DrainingServer(uvicorn.Server):
    """On SIGTERM, fail readiness first and keep serving SHUTDOWN_DELAY_SECONDS, so the load balancer
    stops sending traffic before the listener closes; then uvicorn finishes in-flight requests."""

    def __init__(self, config: uvicorn.Config, shutdown_delay_s: float) -> None:
        super().__init__(config)
        self.shutdown_delay_s = shutdown_delay_s
        self._delayed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app_state: AppState | None = getattr(self.config.app.state, "asyncinfer", None)
        if app_state is not None:
            app_state.draining = True  # long polls notice within LONG_POLL_RECHECK_S and answer
        if self._delayed or self.shutdown_delay_s <= 0:
            self._stop()
            return
        self._delayed = True
        log.info("draining: readiness is 503; stopping in %.1fs", self.shutdown_delay_s)
        threading.Timer(self.shutdown_delay_s, self._stop).start()

    def _stop(self) -> None:
        # Unlike uvicorn's own handler, a graceful stop exits 0 rather than re-raising the signal.
        if self.should_exit:
            self.force_exit = True  # a second signal: stop waiting for in-flight requests
        self.should_exit = True


def run() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # one line per job at thousands of jobs/s would cost more than the job
        timeout_graceful_shutdown=35,  # longer than the longest long poll
        proxy_headers=True,
    )
    DrainingServer(config, settings.shutdown_delay_seconds).run()


if __name__ == "__main__":
    run()

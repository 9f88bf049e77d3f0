"""`asyncinfer-worker`: run one worker process configured by environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from jobqueue.connection import REFUSED, UNAVAILABLE
from jobqueue.settings import get_settings

if TYPE_CHECKING:
    from jobqueue.settings import Settings
    from worker.loop import Worker

log = logging.getLogger("asyncinfer.worker")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class SignalWatcher:
    """Handles SIGTERM/SIGINT on a thread of its own, blocked in sigwait.

    Python runs signal handlers only on the main thread between bytecodes, so a handler would wait
    for a long model call to return. The signals are blocked in every thread instead (the mask is
    set before any other thread starts, and threads inherit it) and this thread takes them at once:
    the first starts the drain (its deadline counts from the signal); a second one, or the deadline,
    aborts the model call, hands held jobs back without counting an attempt, and exits.
    """

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.early = False  # a signal arrived before the worker existed (a quick scale-in)
        self.drain_timeout_s = 0.0
        self._draining = False
        self._lock = threading.Lock()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        threading.Thread(target=self._wait, name="signals", daemon=True).start()

    def attach(self, worker: Worker, drain_timeout_s: float) -> None:
        with self._lock:
            self.worker = worker
            self.drain_timeout_s = drain_timeout_s
            if self.early:
                self._start_drain("signal during start-up")

    def _wait(self) -> None:
        while True:
            signum = signal.sigwait(STOP_SIGNALS)
            name = signal.Signals(signum).name
            with self._lock:
                if self.worker is None:
                    self.early = True
                elif self._draining:
                    hard_exit(self.worker, f"second {name}")
                else:
                    self._start_drain(name)

    def _start_drain(self, why: str) -> None:
        assert self.worker is not None
        self._draining = True
        log.info("%s: draining (up to %.0fs)", why, self.drain_timeout_s)
        self.worker.stop()
        timer = threading.Timer(self.drain_timeout_s, hard_exit, (self.worker, "drain timeout"))
        timer.daemon = True
        timer.start()


def hard_exit(worker: Worker, why: str) -> None:
    """Leave now: abort the model call, hand held jobs back (attempt not counted) when Redis lets
    us, otherwise recovery finds them; exit non-zero."""
    log.warning("%s: aborting the model call and handing held jobs back", why)
    worker.model.abort()
    try:
        worker.release_held()
    except (*UNAVAILABLE, *REFUSED) as exc:
        log.warning("could not release held jobs (%s); recovery will requeue them", exc)
    finally:
        logging.shutdown()
        os._exit(1)


def start_health(settings: Settings, worker: Worker) -> None:
    """The health and metrics server, once the worker is ready: prometheus_client and the HTTP server
    are not needed to serve jobs, so they stay out of the cold start (exec -> ready line)."""
    if settings.worker_health_port:
        from jobqueue import metrics
        from jobqueue.health import serve_health

        serve_health(settings.worker_health_port, worker.health, metrics.exposition)


def run() -> None:
    parser = argparse.ArgumentParser(prog="asyncinfer-worker", description="Run an asyncinfer worker.")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    args = parser.parse_args()
    watcher = SignalWatcher()  # before the slow imports, so an early SIGTERM is a clean exit
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from worker.loop import Worker  # heavy: ONNX Runtime

    try:
        worker = Worker(settings)
    except (ValueError, OSError) as exc:  # an unusable model file or MODELS_FILE: one line saying why
        log.error("cannot start: %s", exc)
        sys.exit(2)
    watcher.attach(worker, settings.drain_timeout_seconds)
    worker.run(burst=args.burst, on_ready=lambda: start_health(settings, worker))
    sys.exit(0)


if __name__ == "__main__":
    run()

"""`asyncinfer-worker`: run one worker process configured by environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from typing import TYPE_CHECKING

from jobqueue.connection import UNAVAILABLE
from jobqueue.settings import get_settings
from worker.health import serve_health

if TYPE_CHECKING:
    from worker.loop import Worker

log = logging.getLogger("asyncinfer.worker")


def _hard_exit(worker: Worker, why: str) -> None:
    """Leave now, handing held jobs back first when Redis lets us; otherwise recovery finds them."""
    log.warning("%s: exiting without finishing held jobs", why)
    try:
        worker.release_held()
    except UNAVAILABLE as exc:
        log.warning("could not release held jobs (%s); recovery will requeue them", exc)
    finally:
        logging.shutdown()
        os._exit(1)


def install_drain_handlers(worker: Worker, drain_timeout_s: float) -> None:
    """First SIGTERM/SIGINT: stop claiming and finish what is held; a second one, or the timeout, exits at once."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if worker.stopping.is_set():
            _hard_exit(worker, f"second {signal.Signals(signum).name}")
        log.info("%s: draining (up to %.0fs)", signal.Signals(signum).name, drain_timeout_s)
        worker.stop()
        # A thread, not the handler, enforces the deadline: the main thread may sit in a long model call.
        timer = threading.Timer(drain_timeout_s, _hard_exit, (worker, "drain timeout"))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def run() -> None:
    parser = argparse.ArgumentParser(prog="asyncinfer-worker", description="Run an asyncinfer worker.")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    args = parser.parse_args()
    # Loading ONNX Runtime and the model takes a while; a SIGTERM meanwhile (a quick scale-in)
    # is remembered and honoured as a clean exit instead of killing the process mid-import.
    early_signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: early_signals.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: early_signals.append(signum))
    from worker.loop import Worker  # noqa: PLC0415 - heavy import after the handlers are in place

    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    worker = Worker(settings)
    install_drain_handlers(worker, settings.drain_timeout_seconds)
    if early_signals:
        worker.stop()
    if settings.worker_health_port:
        serve_health(settings.worker_health_port, worker.health)
    worker.run(burst=args.burst)
    sys.exit(0)


if __name__ == "__main__":
    run()

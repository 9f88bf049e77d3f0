"""`asyncinfer-worker`: run one worker process configured by environment variables."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from jobqueue import logs, tracing

if TYPE_CHECKING:
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
        timer = threading.Timer(self.drain_timeout_s, self._drain_deadline)
        timer.daemon = True
        timer.start()

    def _drain_deadline(self) -> None:
        with self._lock:
            assert self.worker is not None
            hard_exit(self.worker, "drain timeout")

    def leave(self) -> None:
        """The worker loop returned: exit 0, unless a hard exit has begun. It holds the lock until it
        ends the process with 1, so a loop that returns once the abort released its batch cannot
        race it to a clean exit."""
        with self._lock:
            sys.exit(0)


def hard_exit(worker: Worker, why: str) -> None:
    """Leave now: abort the model call, hand held jobs back (attempt not counted) when Redis lets
    us, otherwise recovery finds them; exit non-zero."""
    from jobqueue.connection import REFUSED, UNAVAILABLE

    log.warning("%s: aborting the model call and handing held jobs back", why)
    worker.model.abort()
    try:
        worker.release_held()
    except (*UNAVAILABLE, *REFUSED) as exc:
        log.warning("could not release held jobs (%s); recovery will requeue them", exc)
    finally:
        logging.shutdown()
        os._exit(1)


class StartupProbes:
    """Probe answers from the first second: alive while the model loads (a slow load from a large file,
    a slow volume or a GPU provider is not a hang, so the kubelet must not restart it), ready only once
    the worker exists; then the worker's own health."""

    def __init__(self) -> None:
        self.worker: Worker | None = None

    def __call__(self) -> dict[str, Any]:
        if self.worker is None:
            return {"alive": True, "ready": False, "loading": True}
        return self.worker.health()


def skip_start_up_work_a_worker_never_uses() -> None:
    """Environment defaults that spare a worker's cold start work it never uses (call before anything
    imports pydantic or numpy); a value the operator set wins.

    - pydantic looks for plugins by reading the entry points of every installed distribution when the
      first model class is built: only the worker's settings and MODELS_FILE checks use pydantic here,
      and no plugin has anything to do with them.
    - numpy's OpenBLAS starts one thread per CPU the process can see (a Kubernetes node's, not the
      pod's limit) at `import numpy`: a worker does no BLAS work, ONNX Runtime has threads of its own.
    """
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def burst_mode(argv: list[str]) -> bool:
    """--burst given; no arguments (how a deployment starts it) need no parser, and argparse with its
    gettext stays out of the cold start."""
    if not argv:
        return False
    import argparse

    parser = argparse.ArgumentParser(prog="asyncinfer-worker", description="Run an asyncinfer worker.")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    return bool(parser.parse_args(argv).burst)


def run() -> None:
    burst = burst_mode(sys.argv[1:])
    tracing.keep_sdk_out_unless_wanted()  # before anything imports redis
    watcher = SignalWatcher()  # before the slow imports, so an early SIGTERM is a clean exit
    skip_start_up_work_a_worker_never_uses()
    from jobqueue.settings import get_settings  # pydantic: after the line above

    settings = get_settings()
    logs.configure(settings)
    tracing.setup("asyncinfer-worker", settings.tracing_headers_file)  # imports opentelemetry only when OTEL_* turns it on
    probes = StartupProbes()
    if settings.worker_health_port:  # before the heavy import and the model load
        from jobqueue import metrics  # only then: prometheus_client stays out of a probe-less cold start
        from jobqueue.health import serve_health

        serve_health(settings.worker_health_port, probes, metrics.exposition, openmetrics=metrics.openmetrics_exposition)
    from worker.loop import Worker  # heavy: ONNX Runtime

    try:
        worker = Worker(settings)
    except (ValueError, OSError) as exc:  # an unusable model file or MODELS_FILE: one line saying why
        log.error("cannot start: %s", exc)
        sys.exit(2)
    probes.worker = worker
    watcher.attach(worker, settings.drain_timeout_seconds)
    worker.run(burst=burst)
    watcher.leave()


if __name__ == "__main__":
    run()

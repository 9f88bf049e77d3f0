"""Bench-only PROTOTYPE of the overlapped worker loop proposed in docs/performance.md (change 2).

    python -m bench.pipelined_worker        # same env as asyncinfer-worker; drain measurements only

Not a worker to run: it measures the throughput bound of overlapping Redis with Python, nothing more. It
claims batch N+1 and records batch N on a second thread (its own pooled connection) while the main thread
converts and runs batch N, so Redis executes claim/finish while Python works. It skips what the real loop
does around that (suspects running alone, pause, adoption after a lost reply, Redis outages, draining on
SIGTERM): the lead's implementation keeps all of those in `worker/loop.py`.
"""

from __future__ import annotations

import logging
import sys
from concurrent.futures import Future, ThreadPoolExecutor

from jobqueue.protocol import ClaimedJob
from jobqueue.settings import get_settings
from worker.loop import Worker

log = logging.getLogger("asyncinfer.worker")


class PipelinedWorker(Worker):
    """Worker whose Redis calls run on an I/O thread, one batch ahead of the model."""

    def claim_batch(self) -> list[ClaimedJob]:
        return list(self.queue.claim(self.worker_id, self.config.max_batch_size).jobs)

    def run(self, burst: bool = False) -> None:
        log.info("worker %s serving model %s (pipelined prototype)", self.worker_id, self.model.name)
        io = ThreadPoolExecutor(1, thread_name_prefix="redis-io")
        claimed: Future[list[ClaimedJob]] = io.submit(self.claim_batch)
        recorded: Future[object] | None = None
        while not self.stopping.is_set():
            jobs = claimed.result()
            if not jobs:
                if recorded is not None:
                    recorded.result()
                    recorded = None
                jobs, _, _ = self._collect_batch(burst)  # the shipped blocking wait when idle
                if not jobs:
                    if burst:
                        break
                    claimed = io.submit(self.claim_batch)
                    continue
            claimed = io.submit(self.claim_batch)  # batch N+1 starts in Redis now
            outcomes = self._process_safely(jobs)  # batch N runs here meanwhile
            if recorded is not None:
                recorded.result()  # at most one finish in flight
            recorded = io.submit(self.queue.finish, self.worker_id, outcomes)
            self.processed += len(outcomes)
        if recorded is not None:
            recorded.result()
        io.shutdown()


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    PipelinedWorker(settings).run()


if __name__ == "__main__":
    main()

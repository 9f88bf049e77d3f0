"""The worker loop: claim a micro-batch, run the model once, record every result in one round trip."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
import orjson

from jobqueue.connection import UNAVAILABLE, sync_client
from jobqueue.model_signature import InputError, parse_input
from jobqueue.protocol import ClaimedJob, JobQueue
from jobqueue.settings import Settings
from jobqueue.states import Outcome
from worker.model import OnnxModel

log = logging.getLogger("asyncinfer.worker")

BLOCK_TIMEOUT_S = 1.0  # how long one blocking wait lasts before the loop looks at its stop flag
MAX_BACKOFF_S = 5.0  # longest pause between attempts to reach Redis again


def new_worker_id() -> str:
    """Host name first (the pod name in Kubernetes) so an operator can tell whose jobs these are."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, model: OnnxModel | None = None, worker_id: str | None = None) -> None:
        self.settings = settings
        self.model = model or OnnxModel(settings.model_path, settings.labels_path, settings.inference_threads)
        self.worker_id = worker_id or new_worker_id()
        self.client = sync_client(settings)
        self.queue = JobQueue(self.client, settings)
        self.stopping = threading.Event()
        self._closed = threading.Event()  # set once the loop has left: ends the heartbeat
        self.redis_ok = False
        self.last_tick = time.monotonic()
        self.processed = 0
        self._unrecorded: list[tuple[str, Outcome, str]] = []  # outcomes Redis has not taken yet
        self._adopt = False  # Redis lists ids under us that this process does not know it holds
        self._background = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self, burst: bool = False) -> None:
        """Process jobs until `stop()`; with `burst`, also stop once the queue is empty."""
        log.info("worker %s serving %s from %s", self.worker_id, self.model.signature.name, self.settings.queue_name)
        self._background.start()
        backoff = 0.1
        while True:
            self.last_tick = time.monotonic()
            try:
                if self._unrecorded:
                    self._record()
                if self.stopping.is_set():
                    break
                jobs = self._collect_batch(burst)
                self.redis_ok = True
                backoff = 0.1
                if jobs:
                    self._unrecorded = self._process_safely(jobs)
                    self._record()
                elif burst:
                    break
            except UNAVAILABLE as exc:
                self.redis_ok = False
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                if self._unrecorded:
                    time.sleep(backoff)  # outcomes in hand: keep trying even while stopping
                else:
                    self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                self._adopt = True  # a reply may have been lost: look at what Redis says we hold
        self._leave()

    def stop(self) -> None:
        """Stop claiming; the loop finishes and records what it holds, then returns."""
        self.stopping.set()

    def release_held(self) -> None:
        """Give every held job back to the queue unrun (drain timeout, second signal)."""
        held = self.queue.held(self.worker_id)
        if held:
            counts = self.queue.finish(self.worker_id, [(job_id, Outcome.RELEASE, "") for job_id in held])
            log.warning("released %d held job(s) back to the queue", counts.requeued)

    def _leave(self) -> None:
        try:
            if not self.queue.held(self.worker_id):
                self.queue.deregister(self.worker_id)
        except UNAVAILABLE:
            pass  # our heartbeat runs out and recovery takes over whatever is left
        self._closed.set()
        log.info("worker %s stopped after %d jobs", self.worker_id, self.processed)

    # -- claiming ------------------------------------------------------------------------------

    def _collect_batch(self, burst: bool) -> list[ClaimedJob]:
        size = self.settings.max_batch_size
        orphans = self.queue.held(self.worker_id) if self._adopt else []
        jobs = self.queue.claim(self.worker_id, max(size - len(orphans), 0), moved=orphans)
        self._adopt = False
        if not jobs:
            if burst:
                return []
            moved = self.queue.wait_for_job(self.worker_id, BLOCK_TIMEOUT_S)
            if moved is None:
                return []
            jobs = self.queue.claim(self.worker_id, size - 1, moved=[moved])
        # Holding at least one job: wait a little for more so the model runs on a fuller batch.
        deadline = time.monotonic() + self.settings.max_batch_wait_ms / 1000
        while len(jobs) < size and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.001))
            jobs += self.queue.claim(self.worker_id, size - len(jobs))
        return jobs

    def _record(self) -> None:
        counts = self.queue.finish(self.worker_id, self._unrecorded)
        self.processed += counts.completed + counts.failed
        self._unrecorded = []
        self._adopt = counts.still_held > 0

    # -- inference -----------------------------------------------------------------------------

    def _process_safely(self, jobs: list[ClaimedJob]) -> list[tuple[str, Outcome, str]]:
        """A bug here must not crash-loop the worker with jobs in hand: they are retried instead."""
        try:
            return self.process(jobs)
        except Exception as exc:  # noqa: BLE001
            log.exception("batch failed")
            return [(job.job_id, Outcome.RETRY, f"worker error: {exc!r}") for job in jobs]

    def process(self, jobs: list[ClaimedJob]) -> list[tuple[str, Outcome, str]]:
        """Run the model on a batch; returns an outcome per job. One bad job never fails the others."""
        outcomes: list[tuple[str, Outcome, str]] = []
        decoded: list[tuple[ClaimedJob, Any]] = []
        for job in jobs:
            try:
                decoded.append((job, orjson.loads(job.payload)["data"]))
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                outcomes.append((job.job_id, Outcome.FAILED, f"invalid input: {exc}"))
        together = self._parse_together(decoded)
        if together is not None:
            return outcomes + self._run_group(*together)
        # Some job does not fit: check each on its own, and batch those whose non-batch
        # dimensions agree (dynamic-shape models).
        groups: dict[tuple, list[tuple[ClaimedJob, dict[str, np.ndarray]]]] = defaultdict(list)
        for job, data in decoded:
            try:
                arrays = parse_input(data, self.model.signature, self.settings.max_rows_per_job)
            except InputError as exc:
                outcomes.append((job.job_id, Outcome.FAILED, f"invalid input: {exc}"))
                continue
            groups[tuple((name, arr.shape[1:]) for name, arr in arrays.items())].append((job, arrays))
        for group in groups.values():
            members = [(job, len(next(iter(arrays.values())))) for job, arrays in group]
            feeds = {name: np.concatenate([arrays[name] for _, arrays in group]) for name in group[0][1]}
            outcomes += self._run_group(members, feeds)
        return outcomes

    def _parse_together(self, decoded: list[tuple[ClaimedJob, Any]]) -> tuple[list[tuple[ClaimedJob, int]], dict[str, np.ndarray]] | None:
        """The common case, checked in one numpy pass: a single-input model and rows that all fit."""
        limit = self.settings.max_rows_per_job
        if not decoded or len(self.model.signature.inputs) != 1:
            return None
        if not all(isinstance(data, list) and 0 < len(data) <= limit for _, data in decoded):
            return None
        rows = [row for _, data in decoded for row in data]
        try:
            feeds = parse_input(rows, self.model.signature, len(rows))
        except InputError:
            return None
        return [(job, len(data)) for job, data in decoded], feeds

    def _run_group(self, members: list[tuple[ClaimedJob, int]], feeds: dict[str, np.ndarray]) -> list[tuple[str, Outcome, str]]:
        """One model call for jobs whose rows are stacked in `feeds`; (job, row count) in order."""
        try:
            outputs = self.model.run(feeds)
        except Exception as exc:  # noqa: BLE001 - the model may raise anything; isolate the culprit
            if len(members) == 1:
                log.warning("model failed on job %s: %s", members[0][0].job_id, exc)
                return [(members[0][0].job_id, Outcome.RETRY, f"model error: {exc}")]
            outcomes, start = [], 0
            for job, rows in members:
                single = {name: arr[start : start + rows] for name, arr in feeds.items()}
                outcomes += self._run_group([(job, rows)], single)
                start += rows
            return outcomes
        outcomes, start = [], 0
        for job, rows in members:
            try:
                result = orjson.dumps(self.model.results(outputs, start, start + rows)).decode()
                outcomes.append((job.job_id, Outcome.COMPLETED, result))
            except Exception as exc:  # noqa: BLE001 - e.g. outputs without a batch dimension
                outcomes.append((job.job_id, Outcome.FAILED, f"model output does not map to this job: {exc!r}"))
            start += rows
        return outcomes

    # -- background: heartbeat and recovery ----------------------------------------------------

    def _heartbeat_loop(self) -> None:
        next_recovery = 0.0
        interval = self.settings.heartbeat_interval_seconds
        while not self._closed.is_set():
            try:
                self.queue.heartbeat(self.worker_id)
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self.settings.recovery_interval_seconds
                    counts = self.queue.recover(self.worker_id)
                    if counts and (counts.requeued or counts.failed or counts.timed_out):
                        log.warning("recovery: %s", counts)
            except UNAVAILABLE as exc:
                log.debug("heartbeat failed: %s", exc)
            except Exception:  # noqa: BLE001 - a heartbeat bug must not silently stop heartbeats
                log.exception("heartbeat failed")
            self._closed.wait(interval)

    def health(self) -> dict[str, Any]:
        """Liveness: the loop turned recently; readiness: Redis answered the last call."""
        stale_after = self.settings.job_timeout_seconds + 30
        return {
            "alive": time.monotonic() - self.last_tick < stale_after,
            "ready": self.redis_ok and not self.stopping.is_set(),
            "worker_id": self.worker_id,
            "processed": self.processed,
        }

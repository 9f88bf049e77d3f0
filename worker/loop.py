"""The worker loop: claim a micro-batch, run the model once, record every result in one round trip.
Under a backlog, Redis claims the next batch and records the last one while the model runs."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from jobqueue import logs, tracing
from jobqueue.connection import CLUSTER_BUSY, REFUSED, UNAVAILABLE, sync_client
from jobqueue.job_input import is_tensors, read_stored
from jobqueue.keys import StoreKeys
from jobqueue.model_signature import BatchPart, convert_batch
from jobqueue.models import ModelConfig, load_models
from jobqueue.objectstore import ObjectRejected, StoreUnavailable, object_store
from jobqueue.protocol import ClaimedBatch, ClaimedJob, WorkerQueue
from jobqueue.settings import PRIORITIES, Settings
from jobqueue.shards import TagConflict, load_tags
from jobqueue.states import Outcome
from worker.deletion_cost import DeletionCost
from worker.model import ModelAborted, ModelTimeout, OnnxModel, OutputNotPerRow
from worker.objects import ObjectJobs, is_object_job

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("asyncinfer.worker")

# One blocking wait (on the normal list: BLMOVE takes one source); high and low jobs reaching an idle
# worker are found by the claim after it, so they start within this. The stop flag is checked as often.
BLOCK_TIMEOUT_S = 0.1
PAUSED_POLL_S = 0.5  # how often a paused model's worker looks whether it was resumed
BATCH_LOOK_S = 0.001  # while filling a batch, how long to wait before looking for more jobs
MAX_BACKOFF_S = 5.0  # longest pause between attempts to reach Redis again
CLUSTER_BUSY_BACKOFF_S = 0.5  # ... and to run a call again that a Cluster slot's move refused
# A model split into shards (jobqueue/shards.py): the worker runs up to this many batches in one shard
# before it looks at the others (a turn), and blocks on an empty shard at least this long
SHARD_TURN_BATCHES = 4
MIN_SHARD_BLOCK_S = 0.02
RECONCILE_INTERVAL_S = 5.0  # how often the worker compares what Redis says it holds with what it knows
# Claim the next batch ahead only after a full batch that took at most this long: a job claimed ahead
# then waits at most one short batch in this worker, not in the queue where another worker could take it.
# A slow model gains nothing from it anyway: Redis's share of its time per batch is small.
CLAIM_AHEAD_MAX_BATCH_S = 0.05

OutcomeList = list[tuple[str, Outcome, str]]
# an outcome with the run it is for (the claim's started_at): sent again after a lost reply, a requeuing
# outcome then never requeues a later run of the job that a claim ahead started meanwhile (finish.lua)
RecordedList = list[tuple[str, Outcome, str, str]]


def new_worker_id() -> str:
    """Host name first (the pod name in Kubernetes) so an operator can tell whose jobs these are."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def model_config(settings: Settings) -> ModelConfig:
    """The model this process serves: MODEL_NAME, or the default model."""
    models = load_models(settings)
    name = settings.model_name or next(iter(models))
    if name not in models:
        raise SystemExit(f"MODEL_NAME {name!r} is not configured (known: {', '.join(models)})")
    return models[name]


def first_shard(worker_id: str, shards: int) -> int:
    """The shard a worker starts on: workers of one model start on different shards (then go round)."""
    return zlib.crc32(worker_id.encode()) % shards


def model_shards(settings: Settings, config: ModelConfig) -> list[StoreKeys]:
    """The model's shards; on a Cluster their tags come from the registry (chosen there by the first
    process to need them), read before anything else: a worker holds nothing yet, so it just waits."""
    if not settings.redis_cluster:
        return [StoreKeys(settings.key_prefix)]
    registry = sync_client(settings, slot_key=StoreKeys(settings.key_prefix).shard_registry)
    delay = 0.1
    try:
        while True:
            try:
                return load_tags(settings, registry, [config]).model_keys(config.name)
            except TagConflict as exc:
                raise SystemExit(f"asyncinfer-worker: {exc}") from None
            except (*UNAVAILABLE, *REFUSED) as exc:
                log.warning("the Cluster does not answer yet (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        registry.close()


class Worker:
    def __init__(self, settings: Settings, model: OnnxModel | None = None, worker_id: str | None = None) -> None:
        self.settings = settings
        self.model = model or OnnxModel(model_config(settings))
        self.config = self.model.config
        self.model.progress = self._progress
        self.worker_id = worker_id or new_worker_id()
        # one queue per shard of the model (one on a standalone Redis), each on the server of its keys;
        # the loop works on one at a time (`queue`) and goes round them (`_next_shard`)
        self.queues = [
            WorkerQueue(sync_client(settings, slot_key=keys.job("")), settings, self.model.name, self.model.version, keys)
            for keys in model_shards(settings, self.config)
        ]
        self.queue = self.queues[first_shard(self.worker_id, len(self.queues))]
        self.client = self.queues[0].client
        self._turn_batches = 0  # batches run in the current shard's turn
        self._empty_shards = 0  # shards found empty one after the other (a burst ends after a round of them)
        # no shard had jobs waiting when the current one was chosen (always, with one): an empty claim
        # then blocks on it for a while rather than looking at the others again at once
        self._all_idle = len(self.queues) == 1
        self.stopping = threading.Event()
        self._closed = threading.Event()  # set once the loop has left: ends the heartbeat
        self.redis_ok = False
        self.last_tick = time.monotonic()
        self.processed = 0
        self._unrecorded: RecordedList = []  # outcomes Redis has not taken yet
        self._adopt = False  # Redis may list ids under us that this process does not know it holds
        self._next_reconcile = time.monotonic() + RECONCILE_INTERVAL_S
        self._unrecorded_traces: list[tracing.BatchTrace] = []  # their batches' spans, emitted once recorded
        self._batch_ids: list[str] = []  # the batch being run, for `_progress`
        self._ahead_ids: list[str] = []  # the batch claimed ahead of it (set on the I/O thread), for `_progress`
        self._trace: tracing.BatchTrace | None = None  # the running batch's spans
        self._batch_outcomes: RecordedList = []  # what the batch just run came to
        self._ahead_claimed_at = 0.0
        self._extended_at = 0.0  # when its jobs' backstop deadlines were last set (claim or extend)
        self._last_batch_s = float("inf")  # how long the last batch took to run (claiming ahead needs it short)
        self._io: ThreadPoolExecutor | None = None  # the I/O threads: Redis calls overlapped with the model
        self._latest_claim: Future[ClaimedBatch] | None = None  # the last claim ahead submitted
        self._background = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self.deletion_cost = DeletionCost(settings)  # idle-first scale-in; off outside a cluster
        store = object_store(settings)
        # a model's objects are scheduled for deletion in its first shard (the API does the same)
        self.objects = ObjectJobs(settings, store, self.client, self.model, self.queues[0].store.objects) if store else None

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self, burst: bool = False) -> None:
        """Process jobs until `stop()`; with `burst`, also stop once the queue is empty."""
        try:
            self.client.ping()  # the start-up line below means "model loaded and Redis connected"
            self.redis_ok = True
        except (*UNAVAILABLE, *REFUSED) as exc:
            log.warning("redis not reachable yet (%s); the loop keeps trying", exc)
        log.info(
            "worker %s serving model %s (version %s, providers %s) from %s",
            self.worker_id, self.model.name, self.model.version, ",".join(self.model.providers), ", ".join(q.keys.base for q in self.queues),
        )  # fmt: skip
        self._background.start()
        self.deletion_cost.start()
        backoff = 0.1
        while True:
            self.last_tick = time.monotonic()
            try:
                if self._unrecorded:
                    self._record()
                if self.stopping.is_set():
                    break
                if len(self.queues) > 1 and not self._adopt and self._turn_over():
                    self._next_shard()
                if time.monotonic() >= self._next_reconcile:
                    self._adopt = True
                    self._next_reconcile = time.monotonic() + RECONCILE_INTERVAL_S
                self._extended_at = time.monotonic()  # a claim sets deadlines from no earlier than now
                jobs, paused, suspects = self._collect_batch(burst)
                self.redis_ok = True
                backoff = 0.1
                self.deletion_cost.holding(bool(jobs))
                if jobs:
                    self._empty_shards = 0
                    self._run_batches(jobs, suspects)
                    self.deletion_cost.holding(False)
                    self._pause_for_object_store()
                elif burst and self._empty_shards >= len(self.queues):
                    break
                elif paused:
                    self.stopping.wait(PAUSED_POLL_S)
            except (*UNAVAILABLE, *REFUSED) as exc:
                moving = isinstance(exc, CLUSTER_BUSY)  # a Cluster slot being moved: refused before it ran
                self.redis_ok = moving
                (log.info if moving else log.warning)("redis unavailable or refusing (%s); retrying in %.1fs", exc, backoff)
                if self._unrecorded:
                    time.sleep(backoff)  # outcomes in hand: keep trying even while stopping
                else:
                    self.stopping.wait(backoff)
                # a move ends within seconds: look again soon rather than backing off to MAX_BACKOFF_S
                backoff = min(backoff * 2, CLUSTER_BUSY_BACKOFF_S if moving else MAX_BACKOFF_S)
                # a reply may have been lost: look at what Redis says we hold (a refused call ran nothing)
                self._adopt = self._adopt or not moving
                if moving:
                    self._turn_batches = SHARD_TURN_BATCHES  # the other shards meanwhile (if any)
        self._leave()

    def stop(self) -> None:
        """Stop claiming; the loop finishes and records what it holds, then returns."""
        self.stopping.set()
        self.deletion_cost.stop()  # a drain writes no new cost: the terminating pod is no longer ranked

    def release_held(self) -> None:
        """Give every held job back to the queue unrun (drain timeout, second signal)."""
        for queue in self.queues:
            held = queue.held(self.worker_id)
            if held:
                counts = queue.finish(self.worker_id, [(job_id, Outcome.RELEASE, "") for job_id in held])
                log.warning("released %d held job(s) back to the queue", counts.requeued)

    def _leave(self) -> None:
        try:
            for queue in self.queues:
                if not queue.held(self.worker_id):
                    queue.deregister(self.worker_id)
        except (*UNAVAILABLE, *REFUSED):
            pass  # our heartbeat runs out and recovery takes over whatever is left
        self._closed.set()
        if self._io is not None:
            self._io.shutdown()
        self.deletion_cost.close()  # a patch in flight finishes before the process exits
        log.info("worker %s stopped after %d jobs", self.worker_id, self.processed)

    # -- claiming ------------------------------------------------------------------------------

    def _collect_batch(self, burst: bool) -> tuple[list[ClaimedJob], bool, bool]:
        """(jobs, model paused?, a suspect group?); a suspect group is run as claimed, nothing added to it."""
        size = self.config.max_batch_size
        orphans = self.queue.held(self.worker_id) if self._adopt else []
        batch = self.queue.claim(self.worker_id, max(size - len(orphans), 0), moved=orphans)
        self._adopt = False
        jobs = list(batch.jobs)
        if not jobs:
            if burst or batch.paused:
                self._empty_shards += 1
                return [], batch.paused, False
            if not self._all_idle:  # several shards, and the others may have jobs: look there first
                self._empty_shards += 1
                return [], False, False
            # Every shard was empty (or there is one): block on this one, for a share of the time with several.
            moved = self.queue.wait_for_job(self.worker_id, max(BLOCK_TIMEOUT_S / len(self.queues), MIN_SHARD_BLOCK_S))
            batch = self.queue.claim(self.worker_id, size - 1 if moved else size, moved=[moved] if moved else [])
            jobs = list(batch.jobs)
            if not jobs:
                self._empty_shards += 1
                return [], batch.paused, False
        if batch.suspects:
            return jobs, False, True
        # Holding jobs: wait up to MAX_BATCH_WAIT_MS for more, so the model runs on a fuller batch (a
        # GPU model wants that wait; a latency-bound service sets it to 0 and runs what it has).
        deadline = time.monotonic() + self.config.max_batch_wait_ms / 1000
        while len(jobs) < size and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, BATCH_LOOK_S))
            jobs += self.queue.claim(self.worker_id, size - len(jobs), held_in_batch=len(jobs)).jobs
        return jobs, False, False

    def _run_batches(self, jobs: list[ClaimedJob], suspects: bool) -> None:
        """Run `jobs`; then, while the queue keeps a backlog, the batches after it back to back with Redis
        overlapped: an I/O thread claims batch k+1 while the model runs batch k, and another records batch
        k while the model runs batch k+1, so a drained job costs the larger of Redis's and Python's time,
        not their sum. One batch claimed ahead and one record in flight at most; a suspect group, a partial
        or slow batch never claims ahead (see `_may_claim_ahead`; bisection needs a suspect group held
        alone). A stop runs what is held, records it and returns."""
        from concurrent.futures import wait  # after the start-up line, like the I/O thread itself

        recording: Future[None] | None = None
        ahead: Future[ClaimedBatch] | None = None
        try:
            while jobs:
                ahead = self._claim_ahead() if self._may_claim_ahead(jobs, suspects) else None
                self._run_batch(jobs)
                if recording is not None:
                    wait([recording])  # one record in flight; a failed one left its outcomes in _unrecorded
                self._unrecorded += self._batch_outcomes
                if self._trace is not None:
                    self._unrecorded_traces.append(self._trace)
                if recording is not None:
                    failed, recording = recording, None
                    failed.result()  # its Redis error, if any, goes to the loop, which records everything again
                if ahead is None:
                    self._record()
                    return
                # it runs beside the claim ahead (and the one after), whose ids it does not take for orphans
                recording = self._executor().submit(self._record, ahead)
                batch = ahead.result()
                self._extended_at, self._ahead_ids = self._ahead_claimed_at, []
                jobs, suspects = list(batch.jobs), batch.suspects
            if recording is not None:  # the claim ahead found the queue empty
                recording.result()
        except BaseException:
            # Leave nothing running on the I/O thread: the loop retries a failed record (`_unrecorded`),
            # and adopts a claim whose reply it never read (`_adopt`, set on a Redis error).
            in_flight: list[Future[Any]] = [f for f in (recording, ahead) if f is not None]
            wait(in_flight)
            self._ahead_ids = []
            raise

    def _turn_over(self) -> bool:
        """The current shard's turn ends after SHARD_TURN_BATCHES batches or once it was found empty;
        never with outcomes unrecorded (they go to this shard)."""
        return not self._unrecorded and (self._turn_batches >= SHARD_TURN_BATCHES or self._empty_shards > 0)

    def _next_shard(self) -> None:
        """Go round the shards, so none starves: the next one in turn that has jobs waiting at the
        highest priority any shard has waiting (priorities hold across shards under load); the next in
        turn when all are empty."""
        n = len(self.queues)
        current = self.queues.index(self.queue)
        order = [self.queues[(current + i) % n] for i in range(1, n + 1)]  # the current one last
        lengths = [self._pending_lengths(queue) for queue in order]
        chosen = order[0]
        for level in range(len(PRIORITIES)):
            waiting = [queue for queue, lens in zip(order, lengths, strict=True) if lens[level]]
            if waiting:
                chosen = waiting[0]
                break
        self.queue, self._turn_batches = chosen, 0
        self._all_idle = not any(any(lens) for lens in lengths)
        if not self._all_idle:
            self._empty_shards = 0  # jobs are waiting somewhere: not a round of empty shards

    @staticmethod
    def _pending_lengths(queue: WorkerQueue) -> list[int]:
        """A shard's pending lengths; none for a shard whose slot a Cluster is moving (its keys may be
        half-way: it is looked at again next turn)."""
        try:
            return queue.pending_lengths()
        except CLUSTER_BUSY:
            return [0] * len(PRIORITIES)

    def _may_claim_ahead(self, jobs: list[ClaimedJob], suspects: bool) -> bool:
        return (
            len(jobs) >= self.config.max_batch_size  # a full batch: a backlog is likely
            and self._last_batch_s <= CLAIM_AHEAD_MAX_BATCH_S
            and not suspects
            and not self._adopt  # adopting (held ids we do not know) happens in `_collect_batch`, alone
            and not self.stopping.is_set()
            and time.monotonic() < self._next_reconcile
            and not (self.objects is not None and self.objects.pause_s)
            and (len(self.queues) == 1 or self._turn_batches + 1 < SHARD_TURN_BATCHES)  # the batch about to run counts
        )

    def _claim_ahead(self) -> Future[ClaimedBatch]:
        self._ahead_claimed_at = time.monotonic()  # the claim sets deadlines from no earlier than this

        def claim() -> ClaimedBatch:
            batch = self.queue.claim(self.worker_id, self.config.max_batch_size)
            self._ahead_ids = [job.job_id for job in batch.jobs]
            return batch

        self._latest_claim = self._executor().submit(claim)
        return self._latest_claim

    def _executor(self) -> ThreadPoolExecutor:
        if self._io is None:
            from concurrent.futures import ThreadPoolExecutor

            # Two: a claim and a record in flight together keep Redis busy while Python packs one and
            # parses the other (one thread left Redis idle in between: drain A/B, one 1.04x the plain
            # loop, two 1.78x; docs/performance.md).
            self._io = ThreadPoolExecutor(2, thread_name_prefix="redis-io")
        return self._io

    def _run_batch(self, jobs: list[ClaimedJob]) -> None:
        """Run one batch into `_batch_outcomes`. A suspect group (half of a batch that died) runs as one
        batch too: if it dies again, recovery halves it again (bisection), so a culprit costs O(log n)
        model calls, not one per job."""
        started = time.monotonic()
        self._turn_batches += 1
        self._batch_ids = [job.job_id for job in jobs]
        self._trace = tracing.BatchTrace(self.model.name, self.worker_id, jobs) if tracing.TRACER is not None else None
        runs = {job.job_id: job.started_at for job in jobs}
        self._batch_outcomes = [
            (job_id, outcome, payload, runs[job_id]) for job_id, outcome, payload in self._process_safely(jobs)
        ]
        self._last_batch_s = time.monotonic() - started

    def _pause_for_object_store(self) -> None:
        if self.objects is not None and self.objects.pause_s:  # the object store is down: back off as for Redis
            log.warning("object store unavailable; next claim in %.1fs", self.objects.pause_s)
            self.stopping.wait(self.objects.pause_s)

    def _record(self, ahead: Future[ClaimedBatch] | None = None) -> None:
        """Record `_unrecorded` (in one finish call) and emit its batch's spans. `ahead`: the claim ahead
        submitted before this record; the ids it (and the claim after it) took are held and known, not
        ids to adopt."""
        from jobqueue import metrics  # imported after the start-up line (prometheus_client is slow to import)

        write_started = time.time_ns()
        counts = self.queue.finish(self.worker_id, self._unrecorded)
        if self._unrecorded_traces:
            trace_ids: dict[str, str] = {}
            for trace in self._unrecorded_traces:
                trace.emit(self._unrecorded, write_started, time.time_ns())
                trace_ids.update(trace.trace_ids())
            metrics.observe_ended(self.model.name, counts.ended, counts.finished_at, trace_ids)
        else:
            metrics.observe_ended(self.model.name, counts.ended, counts.finished_at)
        self.processed += counts.completed + counts.failed
        self._unrecorded, self._unrecorded_traces = [], []
        known = 0
        if ahead is not None:
            if ahead.exception() is not None:  # (waits for it)
                self._adopt = True  # what that claim took, if anything, is held but unknown
                return
            known = len(ahead.result().jobs)
            latest = self._latest_claim
            if latest is not None and latest is not ahead:  # the next claim ahead may have run before this
                known += self._claimed(latest)
        self._adopt = self._adopt or counts.still_held > known

    def _claimed(self, claim: Future[ClaimedBatch]) -> int:
        """How many ids a claim ahead may hold for this worker: a bound while its reply is not read."""
        if claim.done() and claim.exception() is None:
            return len(claim.result().jobs)
        return self.config.max_batch_size

    # -- inference -----------------------------------------------------------------------------

    def _process_safely(self, jobs: list[ClaimedJob]) -> OutcomeList:
        """A bug here must not crash-loop the worker with jobs in hand: they are retried instead."""
        try:
            return self.process(jobs)
        except ModelAborted:
            return [(job.job_id, Outcome.RELEASE, "") for job in jobs]
        except Exception as exc:
            log.exception("batch failed")
            return [(job.job_id, Outcome.RETRY, f"worker error: {exc!r}") for job in jobs]

    def process(self, jobs: list[ClaimedJob]) -> OutcomeList:
        """Run the model on a batch; returns an outcome per job. Every job's input is checked as if
        alone: the tensors the API converted (`job_input`) are used as they are while they fit the
        model, JSON input is converted here (`convert_batch` converts alike jobs together only where
        that is provably the same); then jobs whose rows have the same shapes share one model call."""
        outcomes: OutcomeList = []
        signature, max_rows = self.model.signature, self.settings.max_rows_per_job
        if self.objects is not None:  # an object job runs alone: its input streams through the model in chunks
            outcomes += [self.objects.run(job) for job in jobs if is_object_job(job)]
            jobs = [job for job in jobs if not is_object_job(job)]
        tensor_jobs: list[ClaimedJob] = []
        json_jobs: list[ClaimedJob] = []
        for job in jobs:
            (tensor_jobs if is_tensors(job.payload) else json_jobs).append(job)
        stored = read_stored([job.payload for job in tensor_jobs], signature, max_rows)
        outcomes += [(tensor_jobs[index].job_id, Outcome.FAILED, f"invalid input: {exc}") for index, exc in stored.errors.items()]
        # (job, JSON data, its text) to convert: JSON records, and tensors the model no longer takes as they are
        decoded: list[tuple[ClaimedJob, Any, str | None]] = [
            (tensor_jobs[index], data, None) for index, data in stored.to_convert.items()
        ]
        for job in json_jobs:
            try:
                decoded.append((job, orjson.loads(job.payload)["data"], job.payload))
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                outcomes.append((job.job_id, Outcome.FAILED, f"invalid input: {exc}"))
        parts, errors = convert_batch([(data, raw) for _, data, raw in decoded], signature, max_rows)
        outcomes += [(decoded[index][0].job_id, Outcome.FAILED, f"invalid input: {exc}") for index, exc in errors.items()]
        converted = [job for job, _, _ in decoded] + tensor_jobs  # what BatchPart indices point at
        parts += [replace(part, indices=[len(decoded) + index for index in part.indices]) for part in stored.parts]
        groups: dict[tuple[Any, ...], list[BatchPart]] = defaultdict(list)
        for part in parts:
            groups[tuple((name, arr.shape[1:], arr.dtype.str) for name, arr in part.arrays.items())].append(part)
        for same in groups.values():
            members = [(converted[index], rows) for part in same for index, rows in zip(part.indices, part.rows, strict=True)]
            feeds = {name: _stack([part.arrays[name] for part in same]) for name in same[0].arrays}
            outcomes += self._run_group(members, feeds)
        return self.objects.offload_large(outcomes) if self.objects is not None else outcomes

    def _run_group(self, members: list[tuple[ClaimedJob, int]], feeds: dict[str, np.ndarray]) -> OutcomeList:
        """One model call for jobs whose rows are stacked in `feeds`; (job, row count) in order."""
        from jobqueue import metrics

        try:
            call_started, call_started_ns = time.perf_counter(), time.time_ns()
            outputs = self.model.run(feeds, self.settings.job_timeout_seconds)
            call_seconds = time.perf_counter() - call_started
            trace = self._trace
            if trace is None:
                metrics.observe_batch(self.model.name, len(members), call_seconds)
            else:
                ids = [job.job_id for job, _ in members]
                trace.model_call(ids, call_started_ns, time.time_ns())
                metrics.observe_batch(self.model.name, len(members), call_seconds, trace.exemplar_trace_id(ids))
        except ModelTimeout as exc:
            if len(members) == 1:
                log.warning(
                    "job %s: %s",
                    members[0][0].job_id,
                    exc,
                    extra=logs.job_ids(members[0][0].job_id, self.model.name, members[0][0].traceparent),
                )
                return [(members[0][0].job_id, Outcome.FAILED, str(exc))]
            # Which job hangs is unknown: each half runs as a suspect group next time, with its own
            # timeout; only the half that hangs again is halved again (bisection).
            log.warning("a batch of %d jobs hung (%s); isolating its halves", len(members), exc)
            return [
                (job.job_id, Outcome.ISOLATE, group)
                for (job, _), group in zip(members, suspect_groups(len(members)), strict=True)
            ]
        except OutputNotPerRow as exc:
            return [(job.job_id, Outcome.FAILED, f"model output does not map to jobs: {exc}") for job, _ in members]
        except ModelAborted:
            raise
        except Exception as exc:  # the model may raise anything; isolate the culprit
            if len(members) == 1:
                log.warning(
                    "model failed on job %s: %s",
                    members[0][0].job_id,
                    exc,
                    extra=logs.job_ids(members[0][0].job_id, self.model.name, members[0][0].traceparent),
                )
                return [(members[0][0].job_id, Outcome.RETRY, f"model error: {exc}")]
            # Bisect: rerun each half; only a half that raises again is split again, so one culprit
            # among n jobs costs O(log n) calls and the innocent halves complete in one call each.
            half = len(members) // 2
            split = sum(rows for _, rows in members[:half])
            first = {name: arr[:split] for name, arr in feeds.items()}
            second = {name: arr[split:] for name, arr in feeds.items()}
            return self._run_group(members[:half], first) + self._run_group(members[half:], second)
        outcomes, start = [], 0
        for job, rows in members:
            result = orjson.dumps(self.model.results(outputs, start, start + rows), option=orjson.OPT_SERIALIZE_NUMPY).decode()
            outcomes.append((job.job_id, Outcome.COMPLETED, result))
            start += rows
        return outcomes

    def _progress(self) -> None:
        """Before each model call: the loop is alive (liveness), and once a batch has run for
        JOB_TIMEOUT_SECONDS its jobs' backstop deadlines move forward. A batch of many calls (input
        shapes, fixed-batch chunks, a rerun job by job) each within the timeout is making progress;
        recovery must not fail it. Every call ends within the timeout (the watchdog), so no job goes
        more than 2x JOB_TIMEOUT_SECONDS without a fresh deadline, inside the backstop."""
        self.last_tick = time.monotonic()
        if self.last_tick - self._extended_at < self.settings.job_timeout_seconds:
            return
        self._extended_at = self.last_tick
        try:
            self.queue.extend(self.worker_id, self._batch_ids + self._ahead_ids)
        except (*UNAVAILABLE, *REFUSED) as exc:  # the backstop only fires after 2x the timeout: try at the next call
            log.debug("could not extend the batch's deadlines: %s", exc)

    # -- background: heartbeat and recovery ----------------------------------------------------

    def _heartbeat_loop(self) -> None:
        next_recovery = 0.0
        interval = self.settings.heartbeat_interval_seconds
        while not self._closed.is_set():
            try:
                for queue in self.queues:
                    queue.heartbeat(self.worker_id)
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self.settings.recovery_interval_seconds
                    for queue in self.queues:
                        counts = queue.recover(self.worker_id)
                        if counts and (counts.requeued or counts.failed or counts.timed_out):
                            log.warning("recovery: %s", counts)
                    self._sweep_objects()
            except (*UNAVAILABLE, *REFUSED) as exc:
                log.debug("heartbeat failed: %s", exc)
            except Exception:  # a heartbeat bug must not silently stop heartbeats
                log.exception("heartbeat failed")
            self._closed.wait(interval)

    def _sweep_objects(self) -> None:
        """Delete the objects (uploads, results) whose jobs have expired; the next sweep retries a failure."""
        if self.objects is None:
            return
        try:
            deleted = self.objects.sweep()
            if deleted:
                log.info("deleted %d expired object(s)", deleted)
        except (StoreUnavailable, ObjectRejected) as exc:
            log.warning("object sweep: %s", exc)

    def health(self) -> dict[str, Any]:
        """Liveness: the loop turned recently; readiness: Redis answered the last call."""
        stale_after = self.settings.job_timeout_seconds + 30
        return {
            "alive": time.monotonic() - self.last_tick < stale_after,
            "ready": self.redis_ok and not self.stopping.is_set(),
            "worker_id": self.worker_id,
            "model": self.model.name,
            "processed": self.processed,
        }


def suspect_groups(n: int) -> list[str]:
    """The suspect group of each of n jobs whose batch hung: its half, or "1" (alone) for a half of one."""
    half = (n + 1) // 2
    token = uuid.uuid4().hex[:12]
    return [("1" if size == 1 else f"{token}/{part}") for part, size in (("a", half), ("b", n - half)) for _ in range(size)]


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

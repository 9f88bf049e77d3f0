"""A worker's side of object storage (issue #26): object inputs streamed through the model in chunks,
results written as objects, and the sweep that deletes what the service created once it expires.

An object job runs alone (its result never depends on other jobs). Its input is read as a stream, a
chunk of MAX_BATCH_SIZE rows at a time, and its outputs go to memory-mapped files on local disk, so a
worker's memory does not grow with the object. The result object's key is fixed by the job id and is
registered for deletion before it is written: a run killed mid-write leaves at most an unfinished
multipart upload (never visible) and the re-run writes the same key once.
"""

from __future__ import annotations

import logging
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import redis

from jobqueue.model_signature import InputError, parse_input
from jobqueue.objectstore import (
    NpyHeader,
    ObjectRef,
    ObjectRejected,
    ObjectStore,
    StoreUnavailable,
    check_against,
    read_npy_header,
    schedule_deletion,
    single_input,
    sniff,
    sweep,
)
from jobqueue.protocol import ClaimedJob
from jobqueue.settings import Settings
from jobqueue.states import Outcome
from worker.model import ModelAborted, ModelTimeout, OnnxModel, OutputNotPerRow

log = logging.getLogger("asyncinfer.worker")

OBJECT_PAYLOAD_START = '{"input_url":'  # how the API stores an object job's payload (orjson, this key alone)
NO_ROW_LIMIT = 1 << 62
FIRST_PAUSE_S, MAX_PAUSE_S = (
    0.5,
    5.0,
)  # the worker's pause after the store failed, doubling (as for Redis)  # a JSON object's rows are bounded by MAX_OBJECT_BYTES, not MAX_ROWS_PER_JOB

Result = tuple[str, Outcome, str]


def is_object_job(job: ClaimedJob) -> bool:
    return job.payload.startswith(OBJECT_PAYLOAD_START)


class ObjectJobs:
    def __init__(self, settings: Settings, store: ObjectStore, client: redis.Redis, model: OnnxModel, objects_key: str) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.model = model
        self.objects_key = objects_key  # the model's objects ZSET (jobqueue/keys.py), on `client`'s server
        self.pause_s = 0.0  # > 0 while the store is down: how long the loop waits before its next claim

    def _store_answered(self, ok: bool) -> None:
        self.pause_s = 0.0 if ok else min(max(self.pause_s * 2, FIRST_PAUSE_S), MAX_PAUSE_S)

    # -- results ---------------------------------------------------------------------------------

    def _delete_at_ms(self) -> int:
        """Past any end of the job that is writing now (its backstop) plus the finished record's life."""
        s = self.settings
        return int((time.time() + s.job_timeout_seconds * 2 + s.worker_ttl_seconds + s.job_ttl_seconds) * 1000)

    def _register(self, ref: ObjectRef) -> None:
        schedule_deletion(self.client, self.objects_key, ref, self._delete_at_ms())

    def offload_large(self, outcomes: list[Result]) -> list[Result]:
        """Completed results over INLINE_RESULT_MAX_BYTES go to the store; Redis keeps their reference."""
        limit = self.settings.inline_result_max_bytes
        kept: list[Result] = []
        for job_id, outcome, payload in outcomes:
            if outcome is not Outcome.COMPLETED or len(payload) <= limit:
                kept.append((job_id, outcome, payload))
                continue
            ref = self.store.result_ref(job_id, ".json")
            try:
                self._register(ref)
                self.store.put(ref, payload.encode(), "application/json")
            except (StoreUnavailable, ObjectRejected) as exc:  # its result cannot be kept: run it again later
                self._store_answered(False)
                kept.append((job_id, Outcome.RETRY, f"result object: {exc}"))
                continue
            self._store_answered(True)
            kept.append((job_id, Outcome.COMPLETED, ref.url))
        return kept

    # -- object inputs ---------------------------------------------------------------------------

    def run(self, job: ClaimedJob) -> Result:
        """One object job's outcome: FAILED for an object that cannot be used, RETRY when the store is
        down or the model raised (the attempt rules of every job), COMPLETED with the result object."""
        try:
            ref = ObjectRef.parse(orjson.loads(job.payload)["input_url"])
        except (ValueError, KeyError) as exc:  # the API stored it: only a foreign writer gets here
            return (job.job_id, Outcome.FAILED, f"invalid input object: {exc}")
        try:
            if not self.store.permits(ref):
                raise ObjectRejected(f"{ref.url} is outside the buckets and prefixes this service reads")
            with tempfile.TemporaryDirectory(prefix="asyncinfer-object-") as scratch:
                result = self._run(job.job_id, ref, Path(scratch))
            self._store_answered(True)
            return (job.job_id, Outcome.COMPLETED, result)
        except ObjectRejected as exc:
            log.warning("job %s: input object rejected: %s", job.job_id, exc)
            return (job.job_id, Outcome.FAILED, f"invalid input object: {exc}")
        except StoreUnavailable as exc:  # a retried attempt, and the worker pauses before claiming again
            log.warning("job %s: %s", job.job_id, exc)
            self._store_answered(False)
            return (job.job_id, Outcome.RETRY, str(exc))
        except (ModelTimeout, OutputNotPerRow) as exc:
            return (job.job_id, Outcome.FAILED, str(exc))
        except ModelAborted:
            raise
        except Exception as exc:  # the model may raise anything: retried as any job would be
            log.warning("model failed on object job %s: %s", job.job_id, exc)
            return (job.job_id, Outcome.RETRY, f"model error: {exc}")

    def _run(self, job_id: str, ref: ObjectRef, scratch: Path) -> str:
        size = self.store.head(ref)
        if size > self.settings.max_object_bytes:
            raise ObjectRejected(f"{ref.url} is {size} bytes, over MAX_OBJECT_BYTES ({self.settings.max_object_bytes})")
        with self.store.open(ref) as stream:
            kind = sniff(stream.peek(8)[:8])
            if kind == "json":
                return self._run_json(job_id, ref, stream.read(size + 1))
            if kind == "npy":
                header = read_npy_header(stream, ref.url)
                spec = single_input(self.model.signature, ref.url)
                check_against(header, spec, ref.url)
                return self._run_arrays(job_id, {spec.name: (stream, header)}, ref, scratch)
        # .npz: a zip's index is at its end, so it is downloaded to local disk, then streamed member by member
        path = scratch / "input.npz"
        self.store.download(ref, path)
        try:
            with zipfile.ZipFile(path) as archive:
                sources: dict[str, tuple[IO[bytes], NpyHeader]] = {}
                names = {info.filename.removesuffix(".npy") for info in archive.infolist()}
                wanted = [spec.name for spec in self.model.signature.inputs]
                if set(wanted) != names:
                    raise ObjectRejected(f"{ref.url}: expected exactly the model inputs {wanted} as arrays, got {sorted(names)}")
                for spec in self.model.signature.inputs:
                    member = archive.open(f"{spec.name}.npy")
                    header = read_npy_header(member, f"{ref.url}[{spec.name}]")
                    check_against(header, spec, f"{ref.url}[{spec.name}]")
                    sources[spec.name] = (member, header)
                return self._run_arrays(job_id, sources, ref, scratch)
        except zipfile.BadZipFile as exc:
            raise ObjectRejected(f"{ref.url} is not a valid .npz file: {exc}") from None

    def _run_json(self, job_id: str, ref: ObjectRef, body: bytes) -> str:
        try:
            data = orjson.loads(body)["data"]
            arrays = parse_input(data, self.model.signature, NO_ROW_LIMIT, body)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ObjectRejected(f"{ref.url} is neither .npy, .npz nor a JSON body with data: {exc}") from None
        except InputError as exc:
            raise ObjectRejected(f"{ref.url}: {exc.msg}") from None
        rows = len(next(iter(arrays.values())))
        per_output: list[list[Any]] = [[] for _ in self.model.output_names]
        step = self.settings.max_batch_size
        for start in range(0, rows, step):
            outputs = self.model.run(
                {name: arr[start : start + step] for name, arr in arrays.items()}, self.settings.job_timeout_seconds
            )
            for collected, values in zip(per_output, outputs, strict=True):
                collected.extend(values)
        result = orjson.dumps(self.model.results(per_output, 0, rows), option=orjson.OPT_SERIALIZE_NUMPY)
        out = self.store.result_ref(job_id, ".json")
        self._register(out)
        log.info("job %s: writing result object %s", job_id, out.url)
        self.store.put(out, result, "application/json")
        return out.url

    def _run_arrays(self, job_id: str, sources: dict[str, tuple[IO[bytes], NpyHeader]], ref: ObjectRef, scratch: Path) -> str:
        rows = {header.shape[0] for _, header in sources.values()}
        if len(rows) != 1:
            raise ObjectRejected(f"{ref.url}: every input must have the same number of rows, got {sorted(rows)}")
        total = rows.pop()
        specs = {spec.name: spec for spec in self.model.signature.inputs}
        outputs: list[np.memmap[Any, Any]] = []
        done = 0
        for feeds in _chunks(sources, total, self.settings.max_batch_size, ref):
            feeds = {name: arr.astype(specs[name].dtype, copy=False) for name, arr in feeds.items()}
            results = self.model.run_tensors(feeds, self.settings.job_timeout_seconds)
            if not outputs:
                outputs = [
                    _output_file(scratch, name, out, total) for name, out in zip(self.model.output_names, results, strict=True)
                ]
            for target, out in zip(outputs, results, strict=True):
                target[done : done + len(out)] = out
            done += len(next(iter(feeds.values())))
        for target in outputs:
            target.flush()
        archive = scratch / "result.npz"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED, allowZip64=True) as npz:
            for name in self.model.output_names:
                npz.write(scratch / f"out-{name}.npy", f"{name}.npy")
        out = self.store.result_ref(job_id, ".npz")
        self._register(out)
        log.info("job %s: writing result object %s (%d rows, %d bytes)", job_id, out.url, total, archive.stat().st_size)
        self.store.upload(archive, out, "application/octet-stream")
        return out.url

    # -- cleanup ---------------------------------------------------------------------------------

    def sweep(self) -> int:
        return sweep(self.client, self.objects_key, self.store, int(time.time() * 1000))


def _chunks(
    sources: dict[str, tuple[IO[bytes], NpyHeader]], total: int, step: int, ref: ObjectRef
) -> Iterator[dict[str, np.ndarray]]:
    """Every input's next `step` rows, read in lockstep from the streams."""
    for start in range(0, total, step):
        count = min(step, total - start)
        chunk = {}
        for name, (stream, header) in sources.items():
            want = count * header.row_bytes
            data = stream.read(want)
            if len(data) != want:
                raise ObjectRejected(f"{ref.url}: input {name!r} ends at row {start + len(data) // max(header.row_bytes, 1)} "
                                     f"of the {total} its header promises (a truncated or corrupt .npy)")  # fmt: skip
            chunk[name] = np.frombuffer(data, dtype=header.dtype).reshape(count, *header.shape[1:])
        yield chunk


def _output_file(scratch: Path, name: str, first: np.ndarray, total: int) -> np.memmap[Any, Any]:
    if not isinstance(first, np.ndarray) or first.ndim == 0:
        raise OutputNotPerRow(f"output {name!r} is not a tensor with one row per input row: object inputs need tensor outputs")
    return np.lib.format.open_memmap(scratch / f"out-{name}.npy", mode="w+", dtype=first.dtype, shape=(total, *first.shape[1:]))

"""The ONNX Runtime session: runs one batch under a watchdog and splits the outputs per job."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from jobqueue.model_signature import ModelSignature
from jobqueue.models import ModelConfig, read_model

log = logging.getLogger("asyncinfer.worker")


class ModelTimeout(Exception):
    """The watchdog aborted the call: it ran past JOB_TIMEOUT_SECONDS."""


class ModelAborted(Exception):
    """The call was aborted from outside (drain deadline, second signal)."""


class OutputNotPerRow(Exception):
    """An output's first dimension is not the batch: it cannot be handed out by position."""


def available_providers(wanted: Sequence[str]) -> list[str]:
    """The wanted execution providers this runtime has, in order; each missing one is logged once."""
    have = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in have]
    for missing in (p for p in wanted if p not in have):
        log.warning("execution provider %s is not in this ONNX Runtime build; skipped", missing)
    return chosen or ["CPUExecutionProvider"]


class Watchdog:
    """One thread for every model call of a process (a thread started per call costs more than a
    small batch's inference): it runs the armed callback once the armed deadline passes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: tuple[Callable[[], None], float] | None = None
        self._idle = True  # the thread sleeps until armed (no deadline to wake for)
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    def arm(self, on_expiry: Callable[[], None], timeout_s: float) -> None:
        with self._cond:
            self._armed = (on_expiry, time.monotonic() + timeout_s)
            if self._idle:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:  # no wake-up: the thread finds nothing armed when its wait ends
            self._armed = None

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._armed is None:
                    self._idle = True
                    self._cond.wait()
                    continue
                self._idle = False
                on_expiry, deadline = self._armed
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._armed = None
                on_expiry()


class OnnxModel:
    """Runs any ONNX model whose inputs have a leading batch dimension."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.name
        self.signature: ModelSignature
        self.signature, self.version = read_model(config)
        options = ort.SessionOptions()
        # Between two calls this process decodes JSON and talks to Redis: intra-op threads that spin
        # waiting for the next call would take the CPU that work needs (on the bench's MLP they
        # doubled the worker's CPU per job).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if config.inference_threads > 0:
            options.intra_op_num_threads = config.inference_threads
            options.inter_op_num_threads = 1
        self.providers = available_providers(config.inference_providers)
        self.session = ort.InferenceSession(config.path, options, providers=self.providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._fixed_batch = self.signature.inputs[0].fixed_batch
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        self._current: ort.RunOptions | None = None
        self._aborted = False
        # called before each model call (a fixed-batch model takes several per batch): the worker
        # shows it is making progress
        self.progress: Callable[[], None] | None = None

    def abort(self) -> None:
        """Abort the call in progress, if any (from another thread); later calls fail at once."""
        with self._lock:
            self._aborted = True
            if self._current is not None:
                self._current.terminate = True

    def run(self, feeds: dict[str, np.ndarray], timeout_s: float) -> list[list[Any]]:
        """Run one batch; returns each output as a list with one entry per input row."""
        rows = len(next(iter(feeds.values())))
        if self._fixed_batch is None:
            if self.progress:
                self.progress()
            return [
                self._per_row(name, out, rows) for name, out in zip(self.output_names, self._call(feeds, timeout_s), strict=True)
            ]
        # A model exported with a fixed batch size: run in chunks of it, padding the last chunk.
        size = self._fixed_batch
        per_output: list[list[Any]] = [[] for _ in self.output_names]
        for start in range(0, rows, size):
            chunk = {name: arr[start : start + size] for name, arr in feeds.items()}
            short = size - len(next(iter(chunk.values())))
            if short:
                chunk = {name: np.concatenate([arr, np.repeat(arr[-1:], short, axis=0)]) for name, arr in chunk.items()}
            if self.progress:
                self.progress()
            outs = self._call(chunk, timeout_s)
            for name, collected, out in zip(self.output_names, per_output, outs, strict=True):
                collected.extend(self._per_row(name, out, size)[: size - short])
        return per_output

    def run_tensors(self, feeds: dict[str, np.ndarray], timeout_s: float) -> list[Any]:
        """One call on a chunk of an object input, outputs as the model returns them (no per-row lists:
        an object job's rows go to files, not JSON). A fixed-batch model takes chunks of its batch."""
        if self._fixed_batch is not None:
            raise OutputNotPerRow(f"this model takes a fixed batch of {self._fixed_batch}: send its inputs as JSON")
        if self.progress:
            self.progress()
        return self._call(feeds, timeout_s)

    def _call(self, feeds: dict[str, np.ndarray], timeout_s: float) -> list[Any]:
        """One session.run under a watchdog thread that sets RunOptions.terminate at the deadline."""
        run_options = ort.RunOptions()
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            run_options.terminate = True

        with self._lock:
            if self._aborted:
                raise ModelAborted("worker is exiting")
            self._current = run_options
        self._watchdog.arm(expire, timeout_s)
        try:
            return list(self.session.run(self.output_names, feeds, run_options))
        except Exception:
            if fired.is_set():
                raise ModelTimeout(f"model call exceeded JOB_TIMEOUT_SECONDS ({timeout_s:g}s) and was aborted") from None
            if self._aborted:
                raise ModelAborted("worker is exiting") from None
            raise
        finally:
            self._watchdog.disarm()
            with self._lock:
                self._current = None

    @staticmethod
    def _per_row(name: str, output: Any, rows: int) -> list[Any]:
        if isinstance(output, np.ndarray) and output.ndim == 0:
            raise OutputNotPerRow(f"output {name!r} is a scalar: it is not one value per input row")
        values = _rows(output)
        if len(values) != rows:
            raise OutputNotPerRow(
                f"output {name!r} has {len(values)} entries for {rows} input rows: its first dimension is not the batch"
            )
        return values

    def results(self, outputs: Sequence[list[Any]], start: int, stop: int) -> Any:
        """The result of one job whose rows are [start, stop): a dict per row, a list for several rows.

        `prediction` is the first output; `class_name` its label when the model has labels; every
        other output keeps its own name (the iris model: `probabilities`).
        """
        labels = self.signature.labels
        per_row = []
        for row in range(start, stop):
            prediction = outputs[0][row]
            result: dict[str, Any] = {"prediction": prediction}
            if labels is not None and isinstance(prediction, int) and 0 <= prediction < len(labels):
                result["class_name"] = labels[prediction]
            for name, values in zip(self.output_names[1:], outputs[1:], strict=True):
                result.setdefault(name, values[row])
            per_row.append(result)
        return per_row[0] if stop - start == 1 else per_row


def _rows(output: Any) -> list[Any]:
    """One JSON-ready value per batch row (numpy arrays become lists; sequences stay per element)."""
    if isinstance(output, np.ndarray):
        if output.dtype.kind == "O":
            return [str(v) if isinstance(v, bytes) else v for v in output.tolist()]
        return list(output.tolist())
    return [_jsonable(item) for item in output]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value

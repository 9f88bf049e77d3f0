"""The ONNX Runtime session and the turning of model outputs into per-job results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from jobqueue.model_signature import ModelSignature, read_signature


class OnnxModel:
    """Runs any ONNX model whose inputs have a leading batch dimension."""

    def __init__(self, model_path: str, labels_path: str = "", threads: int = 0) -> None:
        self.signature: ModelSignature = read_signature(model_path, labels_path)
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._fixed_batch = self.signature.inputs[0].fixed_batch

    def run(self, feeds: dict[str, np.ndarray]) -> list[list[Any]]:
        """Run one batch; returns each output as a list with one entry per input row."""
        rows = len(next(iter(feeds.values())))
        if self._fixed_batch is None:
            return [_rows(out) for out in self.session.run(self.output_names, feeds)]
        # A model exported with a fixed batch size: run in chunks of it, padding the last chunk.
        size = self._fixed_batch
        per_output: list[list[Any]] = [[] for _ in self.output_names]
        for start in range(0, rows, size):
            chunk = {name: arr[start : start + size] for name, arr in feeds.items()}
            short = size - len(next(iter(chunk.values())))
            if short:
                chunk = {name: np.concatenate([arr, np.repeat(arr[-1:], short, axis=0)]) for name, arr in chunk.items()}
            for collected, out in zip(per_output, self.session.run(self.output_names, chunk)):
                collected.extend(_rows(out)[: size - short])
        return per_output

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
            for name, values in zip(self.output_names[1:], outputs[1:]):
                result.setdefault(name, values[row])
            per_row.append(result)
        return per_row[0] if stop - start == 1 else per_row


def _rows(output: Any) -> list[Any]:
    """One JSON-ready value per batch row (numpy arrays become lists; sequences stay per element)."""
    if isinstance(output, np.ndarray):
        if output.dtype.kind == "O":
            return [str(v) if isinstance(v, bytes) else v for v in output.tolist()]
        return output.tolist()
    return [_jsonable(item) for item in output]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value

"""A compute-bound model for the bench: an MLP 256 -> 1024 -> 1024 -> 10 whose call costs milliseconds,
and ONNX Runtime's own throughput on it (no queue, no Redis), to compare the worker against."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYERS = (256, 1024, 1024, 10)
SEED = 23  # weights and inputs are the same in every run
PROBE_BATCHES = (1, 8, 32, 128)


def build(path: Path) -> Path:
    """Write the MLP (ReLU between layers; outputs `label`, the argmax, and `scores`) to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    nodes, weights = [], []
    current = "X"
    for layer, (fan_in, fan_out) in enumerate(zip(LAYERS, LAYERS[1:], strict=False)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        nodes += [
            helper.make_node("MatMul", [current, f"w{layer}"], [f"mm{layer}"]),
            helper.make_node("Add", [f"mm{layer}", f"b{layer}"], [f"z{layer}"]),
        ]
        current = f"z{layer}"
        if fan_out != LAYERS[-1]:
            nodes.append(helper.make_node("Relu", [current], [f"a{layer}"]))
            current = f"a{layer}"
    nodes += [
        helper.make_node("Identity", [current], ["scores"]),
        helper.make_node("ArgMax", [current], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", LAYERS[0]])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", LAYERS[-1]]),
        ],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def rows(n: int) -> list[list[float]]:
    """n input rows as a job sends them (4 decimals: a realistic JSON body, not 17-digit floats)."""
    return np.round(np.random.default_rng(SEED + 1).standard_normal((n, LAYERS[0])), 4).tolist()


@dataclass
class Probe:
    """ONNX Runtime alone, with the worker's session options (INFERENCE_THREADS=0: ONNX Runtime's own
    thread count; no spinning between calls)."""

    call_ms: dict[int, float]  # batch size -> median ms per call
    rows_per_s: float  # at the bench's batch size
    cpu_us_per_row: float  # CPU time (all of ONNX Runtime's threads) per row at that size

    def fit(self) -> tuple[float, float]:
        """(fixed ms per call, ms per row) from the smallest and largest probed batch."""
        small, large = min(self.call_ms), max(self.call_ms)
        per_row = (self.call_ms[large] - self.call_ms[small]) / (large - small)
        return max(self.call_ms[small] - small * per_row, 0.0), per_row


def probe(path: Path, batch: int, seconds: float) -> Probe:
    """Median call time at each of PROBE_BATCHES, and rows/s at `batch` over about `seconds`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as worker/model.py sets it
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    data = np.asarray(rows(max(*PROBE_BATCHES, batch)), dtype=np.float32)
    call_ms = {}
    for size in PROBE_BATCHES:
        feeds = {"X": data[:size]}
        session.run(None, feeds)  # warm-up
        times = []
        for _ in range(max(5, 40 // size)):
            started = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - started) * 1000)
        call_ms[size] = statistics.median(times)
    feeds = {"X": data[:batch]}
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        calls += 1
    cpu_s = time.process_time() - cpu_started
    return Probe(call_ms, calls * batch / (time.perf_counter() - started), cpu_s / (calls * batch) * 1e6)

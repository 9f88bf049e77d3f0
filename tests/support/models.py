"""ONNX models built with onnx.helper at test time: each exercises one way a model can hurt a batch.

Every builder writes one file and returns its path; nothing is checked in. The opset is pinned so the
same graph is built whatever onnx version the venv holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17  # Reduce* still take `axes` as an attribute here
IR_VERSION = 8  # what ONNX Runtime 1.1x+ reads for opset 17
LOOP_STATE = 32  # side of the matrix each Loop iteration multiplies: a little real work per iteration


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def identity_model(path: Path, elem_type: int, width: int = 1) -> Path:
    """input x [N, width] of `elem_type` -> Identity -> y: every result must be exactly its own input."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, ["N", width])],
        [helper.make_tensor_value_info("y", elem_type, ["N", width])],
    )
    return _save(graph, path)


def batch_mean_model(path: Path) -> Path:
    """x FLOAT [N, 2] -> ReduceMean over axis 0, keepdims -> y declared [M, 2]: the declared shape looks
    per-row (dynamic first dimension), but at run time one row comes back for the whole batch."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)],
        "batch_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 2])],
    )
    return _save(graph, path)


def fixed_one_output_model(path: Path) -> Path:
    """x FLOAT [N, 2] (dynamic batch) -> ReduceMean over axis 0 -> y declared [1, 2]: the declared output
    shape already says it is not per row, so a worker must refuse to load it."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)],
        "fixed_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    return _save(graph, path)


def loop_model(path: Path, width: int | str = 1) -> Path:
    """x INT64 [N, width] -> y = x, iterations = trip count (one per value), where a Loop runs max(x) times.

    Each iteration multiplies a LOOP_STATE x LOOP_STATE matrix, so the call's duration grows with the
    largest input of the batch: a huge value hangs the whole call (the poison input); the watchdog has
    to stop it through RunOptions.terminate. `iterations` shows how many times the loop ran for a job.
    """
    weights = (np.eye(LOOP_STATE, dtype=np.float32) * 0.5 + 0.01).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["count_in", "one"], ["count_out"]),
            helper.make_node("MatMul", ["state_in", "w"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.INT64, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [LOOP_STATE, LOOP_STATE]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.INT64, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [LOOP_STATE, LOOP_STATE]),
        ],
        initializer=[
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
            helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten().tolist()),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["trips"], keepdims=0),  # all axes: a scalar
            helper.make_node("Loop", ["trips", "", "zero", "state0"], ["count", "state"], body=body),
            helper.make_node("Reshape", ["count", "one_by_one"], ["count_2d"]),
            helper.make_node("Shape", ["x"], ["x_shape"]),
            helper.make_node("Expand", ["count_2d", "x_shape"], ["iterations"]),
            helper.make_node("Identity", ["x"], ["y"]),
        ],
        "loop_by_input",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", width])],
        [
            helper.make_tensor_value_info("y", TensorProto.INT64, ["N", width]),
            helper.make_tensor_value_info("iterations", TensorProto.INT64, ["N", width]),
        ],
        initializer=[
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("state0", TensorProto.FLOAT, [LOOP_STATE, LOOP_STATE], [0.1] * LOOP_STATE * LOOP_STATE),
            helper.make_tensor("one_by_one", TensorProto.INT64, [2], [1, 1]),
        ],
    )
    return _save(graph, path)


def loop_iterations_per_second(path: Path, probe_trips: int = 20_000) -> float:
    """How many Loop iterations this machine runs per second right now (to size a "takes ~N s" input)."""
    import onnxruntime as ort  # heavy: only the tests that need it pay for it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    session.run(None, {"x": np.array([[probe_trips]], dtype=np.int64)})
    return probe_trips / (time.perf_counter() - started)

"""Small ONNX models for the Open Inference Protocol tests, built with onnx.helper (no training, exact values)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime release we support


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def build_int64_model(path: Path) -> Path:
    """Two INT64 inputs, two INT64 outputs: `y` = x (identity, so any int64 value must come back exactly)
    and `shifted` = x + shift (a second output, returned under its own name)."""
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 3])
    shift = helper.make_tensor_value_info("shift", TensorProto.INT64, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 3])
    shifted = helper.make_tensor_value_info("shifted", TensorProto.INT64, ["batch", 3])
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Add", ["x", "shift"], ["shifted"])]
    return _save(helper.make_graph(nodes, "int64", [x, shift], [y, shifted]), path)


def build_identity_model(path: Path, elem_type: int, width: int = 2, name: str = "identity") -> Path:
    """One input `value` [batch, width] of `elem_type`, echoed as output `echo` (strings, FP16, BOOL...)."""
    value = helper.make_tensor_value_info("value", elem_type, ["batch", width])
    echo = helper.make_tensor_value_info("echo", elem_type, ["batch", width])
    return _save(helper.make_graph([helper.make_node("Identity", ["value"], ["echo"])], name, [value], [echo]), path)


def build_zipmap_model(path: Path) -> Path:
    """A scikit-learn classifier with string labels and skl2onnx's default ZipMap: `output_label` is a
    string tensor, `output_probability` a sequence of {class: probability} maps (not a tensor)."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    names = np.array(["setosa", "versicolor", "virginica"])[target]
    classifier = LogisticRegression(max_iter=500, random_state=0).fit(features, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_onnx(classifier, features[:1], target_opset=OPSET).SerializeToString())
    return path

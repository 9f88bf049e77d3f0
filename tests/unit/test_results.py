"""Turning model outputs into job results, for the iris model and for generic models (no Redis)."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from jobqueue.models import ModelConfig
from tests.conftest import MODEL_PATH
from worker.model import OnnxModel


def test_iris_result_shape():
    model = OnnxModel(ModelConfig(name="iris", path=MODEL_PATH))
    outputs = model.run({"X": np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)}, 10)
    one = model.results(outputs, 0, 1)
    assert set(one) == {"prediction", "class_name", "probabilities"}
    assert one["class_name"] == "setosa" and isinstance(one["prediction"], int)
    both = model.results(outputs, 0, 2)
    assert [r["class_name"] for r in both] == ["setosa", "virginica"]


def test_regressor_without_labels_and_fixed_batch_model(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])  # exported with batch size 1
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)], "g", [x], [y])
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model_proto.ir_version = 8
    path = tmp_path / "reg.onnx"
    onnx.save(model_proto, path)
    model = OnnxModel(ModelConfig(name="reg", path=str(path)))
    outputs = model.run({"x": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)}, 10)
    assert model.results(outputs, 1, 2) == {"prediction": [5.0]}
    assert [r["prediction"] for r in model.results(outputs, 0, 3)] == [[2.0], [5.0], [8.0]]


def test_missing_execution_providers_are_skipped_with_one_line(caplog):
    from worker.model import available_providers

    with caplog.at_level("WARNING"):
        chosen = available_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert [r.getMessage() for r in caplog.records] == [
        "execution provider CUDAExecutionProvider is not in this ONNX Runtime build; skipped"
    ]

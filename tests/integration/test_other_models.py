"""Any ONNX model, not just iris: regressors, string labels, ZipMap outputs, integer and multi-input models."""

from __future__ import annotations

import uuid

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from jobqueue.states import JobStatus
from tests.support.queue import SyncJobs
from worker.loop import Worker

X, Y = load_iris(return_X_y=True)
X = X.astype(np.float32)
ROW = X[100].tolist()


def run_jobs(settings, redis_client, model_path, payloads) -> list:
    settings = settings.model_copy(update={"model_path": str(model_path)})
    queue = SyncJobs(redis_client, settings, model=model_path.stem)
    ids = [queue.enqueue(str(uuid.uuid4()), orjson.dumps({"data": data}).decode()).job_id for data in payloads]
    Worker(settings).run(burst=True)
    return [queue.get(job_id) for job_id in ids]


def completed_results(records) -> list:
    assert all(r.status is JobStatus.COMPLETED for r in records), [(r.status, r.error) for r in records]
    return [orjson.loads(r.result) for r in records]


def test_regressor(tmp_path, settings, redis_client):
    path = tmp_path / "reg.onnx"
    path.write_bytes(to_onnx(LinearRegression().fit(X[:, :3], X[:, 3]), X[:1, :3]).SerializeToString())
    [one, many] = completed_results(run_jobs(settings, redis_client, path, [[ROW[:3]], [ROW[:3], X[0, :3].tolist()]]))
    assert isinstance(one["prediction"], list) and abs(one["prediction"][0] - 2.5) < 0.6  # a virginica petal width
    assert len(many) == 2 and "class_name" not in one


def test_string_labels_with_zipmap(tmp_path, settings, redis_client):
    names = np.array(["setosa", "versicolor", "virginica"])[Y]
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(to_onnx(LogisticRegression(max_iter=500).fit(X, names), X[:1]).SerializeToString())
    [result] = completed_results(run_jobs(settings, redis_client, path, [[ROW]]))
    assert result["prediction"] == "virginica"
    probabilities = result["output_probability"]  # a ZipMap output: one {class: p} per row
    assert set(probabilities) == {"setosa", "versicolor", "virginica"}


def test_int64_and_multi_input_model(tmp_path, settings, redis_client):
    a = helper.make_tensor_value_info("a", TensorProto.INT64, ["n", 2])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, ["n", 2])
    out = helper.make_tensor_value_info("sum", TensorProto.INT64, ["n", 2])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "add", [a, b], [out]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    path = tmp_path / "add.onnx"
    onnx.save(model, path)
    records = run_jobs(
        settings, redis_client, path, [{"a": [[1, 2]], "b": [[10, 20]]}, {"a": [[1, 2], [3, 4]], "b": [[1, 1], [1, 1]]}, [[1, 2]]]
    )
    assert [r.status for r in records] == [JobStatus.COMPLETED, JobStatus.COMPLETED, JobStatus.FAILED]
    assert orjson.loads(records[0].result) == {"prediction": [11, 22]}
    assert [r["prediction"] for r in orjson.loads(records[1].result)] == [[2, 3], [4, 5]]
    assert "several inputs" in records[2].error


@pytest.mark.parametrize("rows", [1, 3])
def test_model_with_fixed_batch_of_two(tmp_path, settings, redis_client, rows):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "neg", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    data = [[float(i)] * 4 for i in range(rows)]
    [result] = completed_results(run_jobs(settings, redis_client, path, [data]))
    got = [result["prediction"]] if rows == 1 else [r["prediction"] for r in result]
    assert got == [[-float(i)] * 4 for i in range(rows)]

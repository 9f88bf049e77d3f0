"""Input checking against a model signature, for models of several shapes and dtypes (no Redis)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from jobqueue.model_signature import InputError, parse_input, read_signature
from tests.conftest import MODEL_PATH


def make_model(tmp_path, inputs, outputs, nodes, metadata=None, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.fixture
def iris():
    return read_signature(MODEL_PATH)


def test_reads_iris_signature(iris):
    assert iris.name == "iris" and iris.version == "1"
    assert [(s.name, s.elem_type, s.shape[1:]) for s in iris.inputs] == [("X", "float", (4,))]
    assert [o.name for o in iris.outputs] == ["label", "probabilities"]
    assert iris.labels == ("setosa", "versicolor", "virginica")


def test_valid_rows_become_float32(iris):
    arrays = parse_input([[5.1, 3.5, 1.4, 0.2], [1, 2, 3, 4]], iris, 10)
    assert arrays["X"].dtype == np.float32 and arrays["X"].shape == (2, 4)


@pytest.mark.parametrize(
    ("data", "loc", "words"),
    [
        ([[1, 2, 3]], ("body", "data"), "4 values"),
        ([[1, 2, 3, float("inf")]], ("body", "data", 0, 3), "finite"),
        ([[1, 2, 3, 4]] * 11, ("body", "data"), "at most 10"),
        ("abc", ("body", "data"), "non-empty list"),
        ([[None, 1, 2, 3]], ("body", "data", 0, 0), "null at data[0][0]; expected a number"),
        ({"X": [[1, 2, 3, 4]], "Y": [[1]]}, ("body", "data"), "unknown ['Y']"),
        ([[1, 2, 3, 4], [1, 2, 3, 4, 5]], ("body", "data", 1), "data[1] has 5 values where 4 were expected: rows are ragged"),
        ([[1, 2, 3, 4], [1, 2, 3, "4"]], ("body", "data", 1, 3), 'string "4" at data[1][3]'),
        ([[1, 2, 3, 4], [1, 2, 3, [4]]], ("body", "data", 1, 3), "a list at data[1][3]"),
        ([[1, 2, 3, 4], 5], ("body", "data", 1), "wrap it in a list"),
        ([1, 2, 3, 4], ("body", "data"), "wrap it in a list"),
    ],
)
def test_rejections_name_the_field(iris, data, loc, words):
    with pytest.raises(InputError) as caught:
        parse_input(data, iris, 10)
    assert caught.value.loc == loc and words in caught.value.msg


def test_labels_file_overrides_metadata(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert read_signature(MODEL_PATH, str(labels)).labels == ("a", "b", "c")
    labels.write_text(json.dumps(["x", "y", "z"]))
    assert read_signature(MODEL_PATH, str(labels)).labels == ("x", "y", "z")


def test_int_model_rejects_fractions_and_accepts_integers(tmp_path):
    path = make_model(
        tmp_path,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["n", 3])],
        [helper.make_node("Identity", ["ids"], ["out"])],
    )
    signature = read_signature(path)
    assert parse_input([[1, 2, 3]], signature, 5)["ids"].dtype == np.int64
    with pytest.raises(InputError, match="integers"):
        parse_input([[1, 2.5, 3]], signature, 5)
    with pytest.raises(InputError, match="numbers"):
        parse_input([["1", 2, 3]], signature, 5)


def test_image_like_rank4_model(tmp_path):
    path = make_model(
        tmp_path,
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 1, 2, 2])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 1])],
        [helper.make_node("Flatten", ["img"], ["f"]), helper.make_node("ReduceSum", ["f"], ["s"], keepdims=1)],
    )
    signature = read_signature(path)
    assert signature.example_data() == [[[[1, 1], [1, 1]]]]
    parse_input([[[[1, 2], [3, 4]]]], signature, 5)
    with pytest.raises(InputError, match="shape"):
        parse_input([[1, 2, 3, 4]], signature, 5)


def test_multi_input_model_takes_an_object(tmp_path):
    path = make_model(
        tmp_path,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 2])],
        [helper.make_node("Add", ["a", "b"], ["sum"])],
    )
    signature = read_signature(path)
    arrays = parse_input({"a": [[1, 2]], "b": [[3, 4]]}, signature, 5)
    assert set(arrays) == {"a", "b"}
    with pytest.raises(InputError, match="several inputs"):
        parse_input([[1, 2]], signature, 5)
    with pytest.raises(InputError, match="same number of rows"):
        parse_input({"a": [[1, 2]], "b": [[3, 4], [5, 6]]}, signature, 5)


def _tensor(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def test_booleans_are_not_numbers(iris):
    with pytest.raises(InputError, match="booleans"):
        parse_input([[True, 1.0, 2.0, 3.0]], iris, 10)
    with pytest.raises(InputError, match="booleans"):
        parse_input([[True, False, True, True]], iris, 10)


def test_string_input_refuses_numbers(tmp_path):
    path = make_model(tmp_path, [_tensor("s", TensorProto.STRING, ["n", 1])], [_tensor("o", TensorProto.STRING, ["n", 1])],
                      [helper.make_node("Identity", ["s"], ["o"])])  # fmt: skip
    signature = read_signature(path)
    assert parse_input([["a"], ["b"]], signature, 10)["s"].tolist() == [["a"], ["b"]]
    with pytest.raises(InputError, match="takes strings"):
        parse_input([["a"], [1]], signature, 10)
    with pytest.raises(InputError, match="takes strings"):
        parse_input([[1]], signature, 10)


def test_int64_values_are_exact_whatever_else_the_job_holds(tmp_path):
    path = make_model(tmp_path, [_tensor("x", TensorProto.INT64, ["n", 1])], [_tensor("y", TensorProto.INT64, ["n", 1])],
                      [helper.make_node("Identity", ["x"], ["y"])])  # fmt: skip
    signature = read_signature(path)
    big = 2**53 + 1
    assert parse_input([[big], [1.0], [-(2**63)]], signature, 10)["x"].tolist() == [[big], [1], [-(2**63)]]
    assert parse_input([[big], [1]], signature, 10)["x"].tolist() == [[big], [1]]
    with pytest.raises(InputError, match="integers"):
        parse_input([[1.5]], signature, 10)
    with pytest.raises(InputError, match="range"):
        parse_input([[2**63]], signature, 10)


def test_outputs_that_are_not_per_row_are_named(tmp_path):
    from jobqueue.model_signature import batch_mismatch

    x = _tensor("x", TensorProto.FLOAT, ["n", 2])
    reduced = make_model(tmp_path, [x], [_tensor("m", TensorProto.FLOAT, [1, 2])],
                         [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1)], name="reduced.onnx")  # fmt: skip
    assert "fixed first dimension 1" in batch_mismatch(read_signature(reduced))
    per_row = make_model(
        tmp_path, [x], [_tensor("y", TensorProto.FLOAT, ["n", 2])], [helper.make_node("Neg", ["x"], ["y"])], name="ok.onnx"
    )
    assert batch_mismatch(read_signature(per_row)) is None


def test_signature_is_read_without_the_weights(tmp_path):
    """A model with 64 MB of weights costs the reader far less than the weights."""
    import tracemalloc

    from onnx import numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 4_000_000), dtype=np.float32), "W")
    path = make_model(tmp_path, [_tensor("x", TensorProto.FLOAT, ["n", 4])], [_tensor("y", TensorProto.FLOAT, ["n", 4_000_000])],
                      [helper.make_node("MatMul", ["x", "W"], ["y"])], name="big.onnx")  # fmt: skip
    model = onnx.load(path)
    model.graph.initializer.append(weights)
    onnx.save(model, path)
    assert path.stat().st_size > 60_000_000
    tracemalloc.start()
    signature = read_signature(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [s.name for s in signature.inputs] == ["x"]  # W is a weight, not an input
    assert peak < 5_000_000, f"reading the signature allocated {peak} bytes"


def test_header_reader_agrees_with_onnx(tmp_path):
    """jobqueue.onnx_header reads the same names, types, shapes and metadata as the onnx package."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from jobqueue.onnx_header import read_header

    x, y = load_iris(return_X_y=True)
    zipmap = tmp_path / "zipmap.onnx"
    zipmap.write_bytes(to_onnx(LogisticRegression(max_iter=300).fit(x, y), x[:1].astype(np.float32)).SerializeToString())
    neg = make_model(tmp_path, [helper.make_tensor_value_info("x", TensorProto.INT64, [-1, 3, "w"])],
                     [helper.make_tensor_value_info("y", TensorProto.INT64, [-1, 3, "w"])], [helper.make_node("Neg", ["x"], ["y"])],
                     metadata={"version": "7", "note": "é"}, name="neg.onnx")  # fmt: skip
    for path in (MODEL_PATH, zipmap, neg):
        model = onnx.load(path)
        header = read_header(path)
        assert header.graph_name == model.graph.name and header.metadata == {p.key: p.value for p in model.metadata_props}
        for mine, theirs in zip(header.inputs + header.outputs, list(model.graph.input) + list(model.graph.output), strict=True):
            assert mine.name == theirs.name and mine.kind == theirs.type.WhichOneof("value")
            if mine.kind == "tensor_type":
                assert mine.elem_type == TensorProto.DataType.Name(theirs.type.tensor_type.elem_type).lower()
                dims = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in theirs.type.tensor_type.shape.dim
                ]
                assert list(mine.dims) == dims
    with pytest.raises(ValueError, match="not an ONNX model"):
        (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff")
        read_header(tmp_path / "junk.onnx")


def test_booleans_are_found_whatever_the_raw_text_hint(iris):
    """The JSON text lets the check skip its walk only when it holds no true/false token."""
    with pytest.raises(InputError, match="booleans"):
        parse_input([[True, 1.0, 2.0, 3.0]], iris, 10, raw=b'{"data": [[true, 1.0, 2.0, 3.0]]}')
    assert parse_input([[1, 2, 3, 4]], iris, 10, raw='{"data": [[1, 2, 3, 4]]}')["X"].tolist() == [[1, 2, 3, 4]]

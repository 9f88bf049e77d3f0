"""The OIP wire format (api/oip.py), no HTTP: datatypes, JSON and binary request parsing, the mapping of
a job's stored result back to output tensors, and response building. Request bodies are encoded and
responses decoded by tritonclient, an independent implementation of the same protocol."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.utils import triton_to_np_dtype

from api import oip
from jobqueue.model_signature import ModelSignature, TensorSpec, read_signature
from tests.conftest import MODEL_PATH

IRIS = read_signature(MODEL_PATH)
IRIS_IN = IRIS.inputs[0].name  # "X", skl2onnx's name


def triton_body(inputs: list[tuple[str, np.ndarray, str, bool]], **kwargs) -> tuple[bytes, int | None]:
    """A request body as tritonclient encodes it: (name, array, datatype, binary?) per input."""
    tensors = []
    for name, array, datatype, binary in inputs:
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    body, json_size = triton.InferenceServerClient.generate_request_body(tensors, **kwargs)
    return body, json_size


def signature(inputs: list[TensorSpec], outputs: list[TensorSpec], labels: tuple[str, ...] | None = None) -> ModelSignature:
    return ModelSignature("m", "1", tuple(inputs), tuple(outputs), labels)


def spec(name: str, elem_type: str, shape: tuple, dtype: str | None) -> TensorSpec:
    return TensorSpec(name, elem_type, shape, np.dtype(dtype) if dtype else None)


# -- datatypes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "elem_type, datatype",
    [
        ("bool", "BOOL"),
        ("uint8", "UINT8"),
        ("uint16", "UINT16"),
        ("uint32", "UINT32"),
        ("uint64", "UINT64"),
        ("int8", "INT8"),
        ("int16", "INT16"),
        ("int32", "INT32"),
        ("int64", "INT64"),
        ("float16", "FP16"),
        ("float", "FP32"),
        ("double", "FP64"),
        ("string", "BYTES"),
    ],
)
def test_onnx_elem_types_map_to_oip_datatypes(elem_type, datatype):
    dtype = "O" if elem_type == "string" else ("f4" if elem_type == "float" else "f8" if elem_type == "double" else elem_type)
    assert oip.datatype_of(spec("t", elem_type, ("n",), dtype)) == datatype
    if datatype != "BYTES":
        # the numpy side agrees with tritonclient's own table
        assert oip.numpy_dtype(datatype) == np.dtype(triton_to_np_dtype(datatype))
        assert triton.np_to_triton_dtype(oip.numpy_dtype(datatype)) == datatype
        assert oip.datatype_of_numpy(oip.numpy_dtype(datatype)) == datatype
    assert oip.datatype_of_numpy(np.dtype("U3")) == "BYTES"


def test_non_tensor_outputs_are_bytes_and_unknown_datatypes_are_refused():
    zipmap = spec("output_probability", "sequence_type", (), None)
    assert oip.datatype_of(zipmap) == "BYTES" and oip.metadata_shape(zipmap) == [-1]
    with pytest.raises(oip.OIPError, match="'FP8' is not supported"):
        oip.numpy_dtype("FP8")


def test_model_metadata_of_iris():
    meta = oip.model_metadata("iris", "abc123", IRIS)
    assert meta == {
        "name": "iris",
        "versions": ["abc123"],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": IRIS_IN, "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }


# -- requests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_fp32_request_round_trip(binary):
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    body, json_size = triton_body([(IRIS_IN, rows, "FP32", binary)], request_id="r-1")
    request = oip.parse_infer_request(body, json_size)
    assert request.id == "r-1" and request.binary_output  # tritonclient asks for binary outputs by default
    [tensor] = request.inputs
    assert tensor.datatype == "FP32" and tensor.array.dtype == np.float32
    np.testing.assert_array_equal(tensor.array, rows)
    data, batch = oip.job_data(request, IRIS)
    assert batch == 2
    # the job input is JSON rows whose values read back as exactly the same float32s
    np.testing.assert_array_equal(np.array(orjson.loads(orjson.dumps(data)), dtype=np.float32), rows)


@pytest.mark.parametrize("binary", [False, True])
def test_int64_request_keeps_every_bit(binary):
    x = np.array([[2**62 + 1, -(2**63), 2**63 - 1], [0, -1, 9_007_199_254_740_993]], dtype=np.int64)
    shift = np.array([[1], [2]], dtype=np.int64)
    body, json_size = triton_body([("x", x, "INT64", binary), ("shift", shift, "INT64", binary)])
    request = oip.parse_infer_request(body, json_size)
    ints = signature([spec("x", "int64", ("n", 3), "i8"), spec("shift", "int64", ("n", 1), "i8")], [])
    data, batch = oip.job_data(request, ints)
    assert batch == 2 and set(data) == {"x", "shift"}  # several inputs: the object form
    assert orjson.loads(orjson.dumps(data))["x"] == x.tolist()  # 2**53 + 1 and the int64 extremes survive JSON


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_request_round_trip(binary):
    words = np.array([["héllo", ""], ["a,b", "x" * 300]], dtype=np.object_)
    body, json_size = triton_body([("value", words, "BYTES", binary)])
    request = oip.parse_infer_request(body, json_size)
    assert request.inputs[0].array.tolist() == [[w.encode() for w in row] for row in words.tolist()]
    text = signature([spec("value", "string", ("n", 2), "O")], [])
    data, _ = oip.job_data(request, text)
    assert data == words.tolist()  # a one-input model: the list form


def test_bytes_elements_encode_and_decode():
    elements = [b"", b"\x00\xff", "é".encode()]
    raw = oip.encode_bytes_elements(np.array(elements, dtype=object))
    assert raw[:4] == (0).to_bytes(4, "little") and raw[4:8] == (2).to_bytes(4, "little")
    assert oip.decode_bytes_elements(raw) == elements
    with pytest.raises(oip.OIPError, match="length prefix"):
        oip.decode_bytes_elements(raw + b"\x01\x00")
    with pytest.raises(oip.OIPError, match="claims 5 bytes but only 1 remain"):
        oip.decode_bytes_elements((5).to_bytes(4, "little") + b"x")


def test_nested_json_data_is_read_row_major():
    nested = [[1, [2, 3], 4], [[[5]], 6, 7, 8]]
    body = orjson.dumps({"inputs": [{"name": IRIS_IN, "shape": [2, 4], "datatype": "FP32", "data": nested}]})
    [tensor] = oip.parse_infer_request(body).inputs
    assert tensor.array.tolist() == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    # nesting just inside the JSON parser's depth limit is refused as a 400, not a RecursionError
    deep = b'{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ' + b"[" * 1020 + b"1" + b"]" * 1020 + b"}]}"
    with pytest.raises(oip.OIPError, match="has 1 elements, but its shape needs 4"):
        oip.parse_infer_request(deep)


def json_request(inputs: list[dict], **extra) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


IRIS_INPUT = {"name": IRIS_IN, "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"{nope", None, "malformed JSON"),
        (json_request([]), None, "inputs must be a non-empty list"),
        (json_request([{**IRIS_INPUT, "datatype": "FP99"}]), None, r"inputs\[0\] \('X'\).datatype: datatype 'FP99'"),
        (json_request([{**IRIS_INPUT, "shape": [1, -4]}]), None, r"inputs\[0\] \('X'\).shape must be a list of non-negative"),
        # no element, yet numpy would refuse to lay it out (a 500 once)
        (json_request([{**IRIS_INPUT, "shape": [1, 0, 2**63 - 1], "data": []}]), None, r"\('X'\).shape .* larger than"),
        (json_request([{**IRIS_INPUT, "shape": [0] * 70, "data": []}]), None, r"\('X'\).shape has 70 dimensions"),
        (
            json_request([{**IRIS_INPUT, "data": [1, 2, 3]}]),
            None,
            r"inputs\[0\] \('X'\).data has 3 elements, but its shape needs 4",
        ),
        (json_request([{**IRIS_INPUT, "data": [1, 2, "3", 4]}]), None, r"\('X'\).data: FP32 elements must be numbers"),
        (json_request([{**IRIS_INPUT, "datatype": "INT64", "data": [1, 2, 3.5, 4]}]), None, "INT64 elements must be integers"),
        (json_request([{**IRIS_INPUT, "datatype": "INT8", "data": [1, 2, 300, 4]}]), None, "out of range for INT8"),
        (json_request([IRIS_INPUT, IRIS_INPUT]), None, r"inputs\[1\].name 'X' appears twice"),
        (json_request([{k: v for k, v in IRIS_INPUT.items() if k != "data"}]), None, r"\('X'\).data is missing"),
        # binary: the bytes the JSON header promises are not there
        (json_request([{**IRIS_INPUT, "parameters": {"binary_data_size": 16}, "data": None}]), None, "has both data"),
        (
            json_request([{k: v for k, v in IRIS_INPUT.items() if k != "data"} | {"parameters": {"binary_data_size": 16}}]),
            None,
            r"binary_data_size is 16 but only 0 bytes .* \(is Inference-Header-Content-Length set\?\)",
        ),
        (
            json_request([IRIS_INPUT], outputs=[{"name": "x", "parameters": {"classification": 2}}]),
            None,
            "classification extension is not supported",
        ),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(body, header_length, message):
    with pytest.raises(oip.OIPError, match=message) as caught:
        oip.parse_infer_request(body, header_length)
    assert caught.value.status == 400


def test_binary_size_must_match_shape_and_every_byte_must_be_claimed():
    head = json_request([{"name": IRIS_IN, "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}])
    with pytest.raises(oip.OIPError, match=r"binary_data_size is 12 bytes, but its shape and datatype FP32 need 16"):
        oip.parse_infer_request(head + bytes(12), len(head))
    head = json_request([{"name": IRIS_IN, "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}])
    with pytest.raises(oip.OIPError, match="3 bytes after the JSON header are not claimed"):
        oip.parse_infer_request(head + bytes(19), len(head))
    for bad in ("12x", "-1", "\u00b2", ""):  # "²" passes str.isdigit but not int()
        with pytest.raises(oip.OIPError, match="Inference-Header-Content-Length must be an integer"):
            oip.parse_header_length(bad, 100)
    with pytest.raises(oip.OIPError, match="between 0 and the body length"):
        oip.parse_header_length("101", 100)


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({**IRIS_INPUT, "datatype": "FP64"}, r"inputs\[0\] \('X'\).datatype is FP64, the model expects FP32"),
        ({**IRIS_INPUT, "shape": [1, 2, 2]}, r"inputs\[0\] \('X'\).shape \[1, 2, 2\] has 3 dimensions, the model expects 2"),
        ({**IRIS_INPUT, "shape": [2, 2]}, r"inputs\[0\] \('X'\).shape \[2, 2\] does not match the model's \[-1, 4\] on axis 1"),
        ({**IRIS_INPUT, "shape": [0, 4], "data": []}, "the batch dimension must be at least 1"),
        ({**IRIS_INPUT, "name": "petals"}, r"unknown input 'petals'; the model's inputs are \['X'\]"),
    ],
)
def test_requests_that_do_not_fit_the_model_name_the_field(tensor, message):
    request = oip.parse_infer_request(json_request([tensor]))
    with pytest.raises(oip.OIPError, match=message):
        oip.job_data(request, IRIS)


def test_requested_outputs_must_exist_and_be_recoverable():
    request = oip.parse_infer_request(json_request([IRIS_INPUT], outputs=[{"name": "probs"}]))
    with pytest.raises(oip.OIPError, match=r"outputs\[0\].name: unknown output 'probs'"):
        oip.job_data(request, IRIS)
    shadowed = signature([IRIS.inputs[0]], [spec("label", "int64", ("n",), "i8"), spec("prediction", "float", ("n",), "f4")])
    request = oip.parse_infer_request(json_request([IRIS_INPUT], outputs=[{"name": "prediction"}]))
    with pytest.raises(oip.OIPError, match="shadowed"):
        oip.job_data(request, shadowed)


# -- results and responses ---------------------------------------------------------------------------


def test_oip_outputs_from_the_workers_result_format():
    one = {"prediction": 0, "class_name": "setosa", "probabilities": [0.9, 0.08, 0.02]}
    [label, probabilities] = oip.oip_outputs(one, IRIS, 1)
    assert (label.name, label.datatype, label.array.tolist()) == ("label", "INT64", [0])
    assert probabilities.datatype == "FP32" and probabilities.array.shape == (1, 3)
    several = [one, {"prediction": 2, "class_name": "virginica", "probabilities": [0.0, 0.1, 0.9]}]
    [label, probabilities] = oip.oip_outputs(several, IRIS, 2)
    assert label.array.tolist() == [0, 2] and probabilities.array.dtype == np.float32
    np.testing.assert_array_equal(probabilities.array[1], np.array([0.0, 0.1, 0.9], dtype=np.float32))
    with pytest.raises(ValueError, match="does not have 3 row"):
        oip.oip_outputs(several, IRIS, 3)


def test_non_tensor_outputs_come_back_as_json_text():
    outputs = [spec("output_label", "string", ("n",), "O"), spec("output_probability", "sequence_type", (), None)]
    zipmap = signature([IRIS.inputs[0]], outputs)
    result = [
        {"prediction": "setosa", "output_probability": {"setosa": 0.9, "virginica": 0.1}},
        {"prediction": "virginica", "output_probability": {"setosa": 0.2, "virginica": 0.8}},
    ]
    [label, probabilities] = oip.oip_outputs(result, zipmap, 2)
    assert label.datatype == "BYTES" and label.array.tolist() == ["setosa", "virginica"]
    assert probabilities.datatype == "BYTES" and probabilities.array.shape == (2,)
    assert orjson.loads(probabilities.array[1]) == {"setosa": 0.2, "virginica": 0.8}


@pytest.mark.parametrize("binary", [False, True])
def test_response_round_trip_through_tritonclient(binary):
    tensors = [
        oip.OutputTensor("label", "INT64", np.array([2**62 + 3, -5], dtype=np.int64)),
        oip.OutputTensor("probabilities", "FP32", np.array([[0.1, 0.2, 0.7], [1 / 3, 0.5, 1e-30]], dtype=np.float32)),
        oip.OutputTensor("words", "BYTES", np.array(["é", ""], dtype=object)),
        oip.OutputTensor("flags", "BOOL", np.array([[True, False]])),
        oip.OutputTensor("half", "FP16", np.array([0.5, 65504], dtype=np.float16)),
    ]
    request = oip.parse_infer_request(json_request([IRIS_INPUT], id="abc", parameters={"binary_data_output": binary}))
    body, header_length = oip.build_response("iris", "v1", request, tensors)
    assert (header_length is not None) == binary
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    response = result.get_response()
    assert response["model_name"] == "iris" and response["model_version"] == "v1" and response["id"] == "abc"
    for tensor in tensors:
        got = result.as_numpy(tensor.name)
        if tensor.datatype == "BYTES":
            assert [g.decode() if isinstance(g, bytes) else g for g in got.tolist()] == tensor.array.tolist()
        else:
            assert got.dtype == tensor.array.dtype
            np.testing.assert_array_equal(got, tensor.array)


def test_per_output_binary_choice_overrides_the_request_default():
    tensors = [
        oip.OutputTensor("label", "INT64", np.array([1])),
        oip.OutputTensor("probabilities", "FP32", np.zeros((1, 3), np.float32)),
    ]
    request = oip.parse_infer_request(
        json_request(
            [IRIS_INPUT],
            parameters={"binary_data_output": True},
            outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}, {"name": "label"}],
        )
    )
    body, header_length = oip.build_response("iris", "v1", request, tensors)
    head = orjson.loads(body[:header_length])
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "label"]  # the request's order
    assert head["outputs"][0]["data"] == [0.0, 0.0, 0.0] and "data" not in head["outputs"][1]
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 8} and body[header_length:] == (1).to_bytes(8, "little")


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),  # orjson writes no wider integers
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)
TENSOR_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from([IRIS_IN, "x", ""]) | JSON_VALUES,
        # small dimensions, and any the wire carries (orjson reads up to 2**64 - 1): a zero beside a huge one
        "shape": st.lists(st.integers(-1, 5) | st.integers(0, 2**64 - 1), max_size=4) | JSON_VALUES,
        "datatype": st.sampled_from(sorted(oip.OIP_TO_NUMPY)) | JSON_VALUES,
        "data": JSON_VALUES,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 40) | JSON_VALUES}),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    inputs=st.lists(TENSOR_FIELDS, max_size=3) | JSON_VALUES,
    outputs=st.none() | st.lists(st.fixed_dictionaries({"name": st.text(max_size=5)}), max_size=2) | JSON_VALUES,
    tail=st.binary(max_size=40),
    use_header=st.booleans(),
)
def test_any_request_is_decoded_or_refused_with_a_400(inputs, outputs, tail, use_header):
    head = orjson.dumps({"inputs": inputs, "outputs": outputs})
    body = head + tail if use_header else head
    try:
        request = oip.parse_infer_request(body, len(head) if use_header else None)
        oip.job_data(request, IRIS)
    except oip.OIPError as exc:
        assert exc.status == 400 and str(exc)

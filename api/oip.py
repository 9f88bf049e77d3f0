"""The Open Inference Protocol (KServe V2 REST) wire format, free of HTTP and Redis: datatypes, request
parsing (JSON and Triton's binary tensor extension), the mapping between OIP tensors and our job
input/result, and response building.

Binary tensor extension, in short: the body is a JSON header of `Inference-Header-Content-Length`
bytes followed by raw tensors in the order of the inputs that carry `parameters.binary_data_size`;
tensors are little-endian, row-major; BOOL is one byte per element; a BYTES element is a 4-byte
little-endian length followed by its bytes. The response uses the same layout for outputs asked for
as binary (`parameters.binary_data` on a requested output, or `binary_data_output` on the request).

Non-tensor model outputs (a skl2onnx ZipMap's list of {class: probability} maps, say) have no OIP
datatype: they are returned as BYTES with one element per row, the row's value as JSON text.
"""

from __future__ import annotations

import io
import math
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from jobqueue.model_signature import ModelSignature, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "onnx_onnxv1"  # Triton's name for ONNX models, so Triton-aware tools recognise ours
BYTES_PREFIX = 4  # a BYTES element's length prefix: uint32, little-endian
MAX_DIMENSIONS = 32  # numpy's limit before 2.0, and far beyond any model's inputs

# ONNX tensor element type (TensorProto name, lower-case, as ModelSignature spells it) -> OIP datatype.
ONNX_TO_OIP: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "bfloat16": "BF16",  # named in metadata; numpy has no bfloat16, so infer refuses it
}

# OIP datatype -> numpy dtype of its binary form (little-endian whatever the host's byte order).
OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# Keys of the worker's per-row result that are not output names (see worker/model.py `results`).
PREDICTION_KEY = "prediction"
CLASS_NAME_KEY = "class_name"


class OIPError(ValueError):
    """A request the protocol refuses; the message names the offending field. `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- datatypes -------------------------------------------------------------------------------------


def datatype_of(spec: TensorSpec) -> str:
    """The OIP datatype of a model input or output; BYTES (JSON text per row) for non-tensor values."""
    if spec.dtype is None:
        return "BYTES"
    return ONNX_TO_OIP.get(spec.elem_type, spec.elem_type.upper())


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for an OIP datatype (object for BYTES); OIPError for an unknown or unsupported one."""
    try:
        return OIP_TO_NUMPY[datatype]
    except KeyError:
        raise OIPError(f"datatype {datatype!r} is not supported; use one of {sorted(OIP_TO_NUMPY)}") from None


def datatype_of_numpy(dtype: np.dtype) -> str:
    """The OIP datatype for a numpy dtype (strings and bytes are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    for datatype, candidate in OIP_TO_NUMPY.items():
        if candidate.kind == dtype.kind and candidate.itemsize == dtype.itemsize and datatype != "BYTES":
            return datatype
    raise OIPError(f"numpy dtype {dtype} has no OIP datatype")


def metadata_shape(spec: TensorSpec) -> list[int]:
    """A tensor's shape for model metadata: fixed dimensions as they are, dynamic ones as -1."""
    if spec.dtype is None:
        return [-1]  # one JSON element per row
    return [dim if isinstance(dim, int) and dim > 0 else -1 for dim in spec.shape]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    """`$metadata_tensor` of the model metadata response."""
    return {"name": spec.name, "datatype": datatype_of(spec), "shape": metadata_shape(spec)}


def model_metadata(name: str, version: str, signature: ModelSignature) -> dict[str, Any]:
    """The model metadata response body."""
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [tensor_metadata(spec) for spec in signature.inputs],
        "outputs": [tensor_metadata(spec) for spec in signature.outputs],
    }


# -- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputTensor:
    """One decoded request input; `array` has the request's shape (BYTES: an object array of bytes)."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client named; `binary` None means "as the request's default says"."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output
    binary_output: bool = False  # the request's `binary_data_output` parameter
    parameters: dict[str, Any] = field(default_factory=dict)

    def wants_binary(self, output_name: str) -> bool:
        """Whether an output goes back as binary: its own `binary_data`, else the request's default."""
        for requested in self.outputs or ():
            if requested.name == output_name and requested.binary is not None:
                return requested.binary
        return self.binary_output


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The JSON header's length from `Inference-Header-Content-Length`, or None when the header is absent."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or int(value) > body_length:  # isdigit alone takes "²"
        raise OIPError(f"{HEADER_LENGTH} must be an integer between 0 and the body length ({body_length}), got {value!r}")
    return int(value)


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = obj.get("parameters", {})
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise OIPError(f"{where}.parameters must be an object")
    return parameters


def _bool_parameter(parameters: dict[str, Any], key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise OIPError(f"{where}.parameters.{key} must be true or false")
    return value


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request: the JSON object, then any binary tensors after it.

    `header_length` is `Inference-Header-Content-Length` (None: the whole body is JSON). Every refusal is
    an OIPError naming the field, e.g. `inputs[0] ('x').shape`.
    """
    head, tail = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        parsed = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        hint = "" if header_length is not None else f" (binary tensors need the {HEADER_LENGTH} header)"
        raise OIPError(f"malformed JSON in the request body: {exc}{hint}") from None
    if not isinstance(parsed, dict):
        raise OIPError("the request body must be a JSON object with 'inputs'")

    request_id = parsed.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OIPError("id must be a string")
    parameters = _parameters(parsed, "request")
    binary_output = bool(_bool_parameter(parameters, "binary_data_output", "request"))

    raw_inputs = parsed.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise OIPError("inputs must be a non-empty list of tensors")
    inputs: list[InputTensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, used = _parse_input(raw, index, tail, offset)
        if any(seen.name == tensor.name for seen in inputs):
            raise OIPError(f"inputs[{index}].name {tensor.name!r} appears twice")
        inputs.append(tensor)
        offset += used
    if offset != len(tail):
        raise OIPError(
            f"{len(tail) - offset} bytes after the JSON header are not claimed by any input's binary_data_size"
            f" ({HEADER_LENGTH} or binary_data_size is wrong)"
        )
    return InferRequest(
        id=request_id,
        inputs=tuple(inputs),
        outputs=_parse_outputs(parsed.get("outputs")),
        binary_output=binary_output,
        parameters=parameters,
    )


def _parse_outputs(raw_outputs: Any) -> tuple[RequestedOutput, ...] | None:
    if raw_outputs is None:
        return None
    if not isinstance(raw_outputs, list):
        raise OIPError("outputs must be a list of {name, parameters?}")
    outputs = []
    for index, raw in enumerate(raw_outputs):
        where = f"outputs[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise OIPError(f"{where} must be an object with a string name")
        parameters = _parameters(raw, where)
        if parameters.get("classification"):
            raise OIPError(f"{where}.parameters.classification: the classification extension is not supported")
        outputs.append(RequestedOutput(raw["name"], _bool_parameter(parameters, "binary_data", where)))
    return tuple(outputs)


def _parse_input(raw: Any, index: int, tail: bytes, offset: int) -> tuple[InputTensor, int]:
    """One `$request_input`; returns it and how many bytes of the binary tail it used."""
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise OIPError(f"{where} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise OIPError(f"{where}.name must be a non-empty string")
    where = f"{where} ({name!r})"
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise OIPError(f"{where}.shape must be a list of non-negative integers, got {shape!r}")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise OIPError(f"{where}.datatype must be a string such as 'FP32'")
    try:
        dtype = numpy_dtype(datatype)
    except OIPError as exc:
        raise OIPError(f"{where}.datatype: {exc}") from None
    _check_layout(shape, dtype, where)
    count = math.prod(shape)

    binary_size = _parameters(raw, where).get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
            raise OIPError(f"{where}.parameters.binary_data_size must be a non-negative integer")
        if "data" in raw:
            raise OIPError(f"{where} has both data and parameters.binary_data_size; send one")
        if offset + binary_size > len(tail):
            raise OIPError(
                f"{where}.parameters.binary_data_size is {binary_size} but only {len(tail) - offset} bytes of binary"
                f" data are left after the JSON header" + ("" if tail else f" (is {HEADER_LENGTH} set?)")
            )
        chunk = tail[offset : offset + binary_size]
        array = _decode_binary(chunk, datatype, dtype, count, where)
        return InputTensor(name, datatype, array.reshape(shape)), binary_size
    if "data" not in raw:
        raise OIPError(f"{where}.data is missing (or send the tensor as binary with parameters.binary_data_size)")
    array = _decode_json(raw["data"], datatype, dtype, count, where)
    return InputTensor(name, datatype, array.reshape(shape)), 0


def _check_layout(shape: list[int], dtype: np.dtype, where: str) -> None:
    """Refuse a shape numpy cannot lay out, before it tries: it checks every dimension, even in a
    tensor with no element (`[1, 0, 2**63 - 1]`), and its ValueError would be a 500."""
    if len(shape) > MAX_DIMENSIONS:
        raise OIPError(f"{where}.shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS} are supported")
    if math.prod(dim for dim in shape if dim) * dtype.itemsize > sys.maxsize:
        raise OIPError(f"{where}.shape {shape} describes a tensor larger than this server can address")


def _decode_binary(chunk: bytes, datatype: str, dtype: np.dtype, count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        elements = decode_bytes_elements(chunk, where)
        if len(elements) != count:
            raise OIPError(f"{where}: binary data holds {len(elements)} BYTES elements, shape needs {count}")
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise OIPError(
            f"{where}.parameters.binary_data_size is {len(chunk)} bytes, but its shape and datatype {datatype}"
            f" need {expected} ({count} x {dtype.itemsize})"
        )
    if datatype == "BOOL":
        flags: np.ndarray = np.frombuffer(chunk, dtype=np.uint8) != 0
        return flags
    values: np.ndarray = np.frombuffer(chunk, dtype=dtype)
    return values


def decode_bytes_elements(chunk: bytes, where: str = "BYTES tensor") -> list[bytes]:
    """Split a binary BYTES tensor into its elements (each a uint32 little-endian length, then bytes)."""
    elements, position, end = [], 0, len(chunk)
    while position < end:
        if position + BYTES_PREFIX > end:
            raise OIPError(f"{where}: BYTES data ends inside an element's 4-byte length prefix")
        length = int.from_bytes(chunk[position : position + BYTES_PREFIX], "little")
        position += BYTES_PREFIX
        if position + length > end:
            raise OIPError(f"{where}: a BYTES element claims {length} bytes but only {end - position} remain")
        elements.append(bytes(chunk[position : position + length]))
        position += length
    return elements


def encode_bytes_elements(elements: Any) -> bytes:
    """The binary form of a BYTES tensor: every element (bytes or str) length-prefixed, row-major."""
    parts = []
    for element in np.asarray(elements, dtype=object).ravel():
        raw = element if isinstance(element, bytes) else str(element).encode()
        parts.append(len(raw).to_bytes(BYTES_PREFIX, "little"))
        parts.append(raw)
    return b"".join(parts)


def _flatten(data: Any) -> list[Any]:
    """Row-major elements of JSON tensor data, flat or nested (the spec allows both). Iterative: a
    deeply nested body must be a 400, not a RecursionError."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _decode_json(data: Any, datatype: str, dtype: np.dtype, count: int, where: str) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise OIPError(f"{where}.data has {len(flat)} elements, but its shape needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in flat):
            raise OIPError(f"{where}.data: BYTES elements must be strings in JSON")
        array = np.empty(count, dtype=object)
        array[:] = [item.encode() for item in flat]
        return array
    if datatype == "BOOL":
        if not all(isinstance(item, bool) for item in flat):
            raise OIPError(f"{where}.data: BOOL elements must be true or false")
        return np.array(flat, dtype=bool)
    # bool is an int subclass in Python: refuse it for numbers, as JSON does
    if dtype.kind in "iu":
        if not all(isinstance(item, int) and not isinstance(item, bool) for item in flat):
            raise OIPError(f"{where}.data: {datatype} elements must be integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise OIPError(f"{where}.data: a value is out of range for {datatype} [{info.min}, {info.max}]")
        return np.array(flat, dtype=dtype)
    if not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in flat):
        raise OIPError(f"{where}.data: {datatype} elements must be numbers")
    with np.errstate(over="ignore"):
        return np.array(flat, dtype=dtype)


# -- OIP request -> job input ------------------------------------------------------------------------


def job_data(request: InferRequest, signature: ModelSignature) -> tuple[Any, int]:
    """The job input `data` for an inference request, and its row count (the batch dimension).

    A one-input model gets the list form (rows), a multi-input model the object form keyed by input
    name: the same shapes a `/predict` client sends, so the job is validated and run like any other.
    """
    batch = checked_inputs(request, signature)
    rows = {
        tensor.name: _to_json_rows(tensor, f"inputs[{index}] ({tensor.name!r})") for index, tensor in enumerate(request.inputs)
    }
    if len(signature.inputs) == 1:
        return rows[signature.inputs[0].name], batch
    return {spec.name: rows[spec.name] for spec in signature.inputs}, batch


def checked_inputs(request: InferRequest, signature: ModelSignature) -> int:
    """The request's inputs and requested outputs checked against the model (OIPError naming the
    field); returns the row count (the batch dimension)."""
    specs = {spec.name: spec for spec in signature.inputs}
    given = {tensor.name for tensor in request.inputs}
    unknown = sorted(given - set(specs))
    if unknown:
        raise OIPError(f"unknown input {unknown[0]!r}; the model's inputs are {list(specs)}")
    missing = [name for name in specs if name not in given]
    if missing:
        raise OIPError(f"input {missing[0]!r} is missing; the model's inputs are {list(specs)}")
    batch: int | None = None
    for index, tensor in enumerate(request.inputs):
        spec = specs[tensor.name]
        where = f"inputs[{index}] ({tensor.name!r})"
        want = datatype_of(spec)
        if tensor.datatype != want:
            raise OIPError(f"{where}.datatype is {tensor.datatype}, the model expects {want}")
        _check_shape(tensor.array.shape, spec, where)
        if batch is not None and tensor.array.shape[0] != batch:
            raise OIPError(f"{where}.shape: batch size {tensor.array.shape[0]} differs from the other inputs' {batch}")
        batch = tensor.array.shape[0]
    assert batch is not None  # inputs is non-empty: parse_infer_request checked it
    if request.outputs is not None:
        known = [spec.name for spec in signature.outputs]
        for index, requested in enumerate(request.outputs):
            if requested.name not in known:
                raise OIPError(f"outputs[{index}].name: unknown output {requested.name!r}; the model's outputs are {known}")
            position = known.index(requested.name)
            if result_key(position, signature.outputs[position], signature) is None:
                raise OIPError(
                    f"outputs[{index}].name: output {requested.name!r} cannot be returned: its name is"
                    f" shadowed by the worker's result key {requested.name!r}"
                )
    return batch


def _check_shape(shape: tuple[int, ...], spec: TensorSpec, where: str) -> None:
    want = metadata_shape(spec)
    if len(shape) != len(want):
        raise OIPError(f"{where}.shape {list(shape)} has {len(shape)} dimensions, the model expects {len(want)}: {want}")
    if shape[0] < 1:
        raise OIPError(f"{where}.shape: the batch dimension must be at least 1")
    # the batch dimension may differ from a model's fixed batch size: the worker pads and chunks
    for axis in range(1, len(shape)):
        if want[axis] != -1 and shape[axis] != want[axis]:
            raise OIPError(f"{where}.shape {list(shape)} does not match the model's {want} on axis {axis}")


def _to_json_rows(tensor: InputTensor, where: str) -> list[Any]:
    """The tensor as nested JSON rows. FP32 values become the doubles that read back exactly as the same
    float32; BYTES become text (string model inputs travel as JSON text)."""
    if tensor.datatype != "BYTES":
        rows: list[Any] = tensor.array.tolist()
        return rows
    try:
        text = np.array([element.decode() for element in tensor.array.ravel()], dtype=object)
    except UnicodeDecodeError:
        raise OIPError(f"{where}: BYTES elements must be UTF-8 text for a string model input") from None
    text_rows: list[Any] = text.reshape(tensor.array.shape).tolist()
    return text_rows


def input_file(request: InferRequest, signature: ModelSignature) -> tuple[bytes, str]:
    """The request's inputs (checked with `checked_inputs`) as the worker reads an input object: an
    .npy for a one-input model, else an .npz with one array per input; returns (bytes, "npy" | "npz")."""
    arrays = {tensor.name: tensor.array for tensor in request.inputs}
    out = io.BytesIO()
    if len(signature.inputs) == 1:
        np.save(out, arrays[signature.inputs[0].name], allow_pickle=False)
        return out.getvalue(), "npy"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:  # what np.savez writes, one .npy per input
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, array, allow_pickle=False)
            archive.writestr(f"{name}.npy", member.getvalue())
    return out.getvalue(), "npz"


# -- job result -> OIP outputs -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray  # BYTES: an object array of str or bytes


def result_key(index: int, spec: TensorSpec, signature: ModelSignature) -> str | None:
    """Where the worker's per-row result keeps output `index`, or None when its name is shadowed by one
    of the worker's own keys (an output named `prediction`, or `class_name` beside labels)."""
    if index == 0:
        return PREDICTION_KEY
    if spec.name == PREDICTION_KEY or (spec.name == CLASS_NAME_KEY and signature.labels is not None):
        return None
    return spec.name


def oip_outputs(result: Any, signature: ModelSignature, rows: int) -> list[OutputTensor]:
    """Turn a job's stored result back into one tensor per model output, in the signature's order.

    The worker stores a dict per row (a bare dict for one row): the first output under `prediction`,
    others under their own names (see worker/model.py). Shadowed outputs (see `result_key`) are left out.
    """
    per_row = [result] if isinstance(result, dict) else result
    if not isinstance(per_row, list) or len(per_row) != rows or not all(isinstance(row, dict) for row in per_row):
        raise ValueError(f"the stored result does not have {rows} row(s) of outputs")
    tensors = []
    for index, spec in enumerate(signature.outputs):
        key = result_key(index, spec, signature)
        if key is None:
            continue
        values = [row.get(key) for row in per_row]
        tensors.append(_output_tensor(spec, values))
    return tensors


def oip_outputs_of_arrays(arrays: Mapping[str, np.ndarray], signature: ModelSignature, rows: int) -> list[OutputTensor]:
    """The model's outputs from a result object of an array input (.npz, one array per output name,
    as the model returned them): one tensor per output, in the signature's order."""
    tensors = []
    for spec in signature.outputs:
        if spec.dtype is None or spec.name not in arrays:
            raise ValueError(f"the result object has no tensor for output {spec.name!r}")
        array = arrays[spec.name]
        if array.shape[:1] != (rows,):
            raise ValueError(f"output {spec.name!r} has shape {list(array.shape)}, not {rows} row(s)")
        tensors.append(OutputTensor(spec.name, datatype_of(spec), array))
    return tensors


def _output_tensor(spec: TensorSpec, values: list[Any]) -> OutputTensor:
    if spec.dtype is None:  # sequence/map output: one JSON text per row
        texts = np.empty(len(values), dtype=object)
        texts[:] = [orjson.dumps(value).decode() for value in values]
        return OutputTensor(spec.name, "BYTES", texts)
    datatype = datatype_of(spec)
    if datatype == "BYTES":
        array = np.array(values, dtype=object)
        return OutputTensor(spec.name, datatype, array)
    # JSON has no NaN: orjson stored it as null, which numpy reads back as NaN for floats
    return OutputTensor(spec.name, datatype, np.array(values, dtype=numpy_dtype(datatype)))


# -- responses ---------------------------------------------------------------------------------------


def _json_data(tensor: OutputTensor) -> Any:
    flat = tensor.array.ravel()
    if tensor.datatype == "BYTES":
        return [item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in flat]
    if tensor.datatype == "FP16":
        return flat.astype(np.float32)  # orjson serialises float32 arrays, not float16
    return flat


def _binary_data(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        return encode_bytes_elements(tensor.array)
    if tensor.datatype == "BOOL":
        return tensor.array.astype(np.uint8).tobytes()
    return np.ascontiguousarray(tensor.array, dtype=numpy_dtype(tensor.datatype)).tobytes()


def select_outputs(tensors: list[OutputTensor], request: InferRequest) -> list[OutputTensor]:
    """The outputs the request named, in its order; all of them when it named none."""
    if request.outputs is None:
        return tensors
    by_name = {tensor.name: tensor for tensor in tensors}
    selected = []
    for index, requested in enumerate(request.outputs):
        if requested.name not in by_name:
            raise OIPError(
                f"outputs[{index}].name: output {requested.name!r} cannot be returned (its name is shadowed by"
                " the worker's result keys 'prediction'/'class_name')"
            )
        selected.append(by_name[requested.name])
    return selected


def build_response(
    model_name: str, model_version: str, request: InferRequest, tensors: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The inference response body, and the JSON header's length when binary outputs follow it (for
    `Inference-Header-Content-Length`; None for a pure JSON body)."""
    outputs, binary_parts = [], []
    for tensor in select_outputs(tensors, request):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if request.wants_binary(tensor.name):
            raw = _binary_data(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return header, None
    return header + b"".join(binary_parts), len(header)

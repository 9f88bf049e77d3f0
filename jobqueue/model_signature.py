"""What a model accepts and returns, read from the ONNX file itself, and the check of a job's input.

The API validates requests with it while no worker runs (workers scale to zero); the worker applies the
same check to every payload it claims, so one bad job fails alone instead of breaking its batch.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto
from onnx.helper import tensor_dtype_to_np_dtype

# Where a model may keep its class names: skl2onnx-style metadata, or one of these keys.
LABEL_METADATA_KEYS = ("labels", "classes", "class_names")


class InputError(ValueError):
    """A request's input does not fit the model; `loc` names the offending field."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: str  # ONNX name: "float", "int64", "string", ...
    shape: tuple[int | str | None, ...]  # ints are fixed; str/None are dynamic (first = batch)
    dtype: np.dtype | None = None  # None for non-tensor values (sequences, maps)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.elem_type, "shape": list(self.shape)}

    @property
    def fixed_batch(self) -> int | None:
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None


@dataclass(frozen=True)
class ModelSignature:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "inputs": [spec.as_dict() for spec in self.inputs],
            "outputs": [spec.as_dict() for spec in self.outputs],
            "labels": list(self.labels) if self.labels is not None else None,
        }

    def example_data(self) -> Any:
        """A valid `data` value (all-ones rows, or iris-like values for a 4-feature float model)."""
        examples = {spec.name: [_example_row(spec)] for spec in self.inputs}
        return next(iter(examples.values())) if len(examples) == 1 else examples


def _example_row(spec: TensorSpec) -> Any:
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]]
    if dims == [4] and spec.elem_type in ("float", "double"):
        return [5.1, 3.5, 1.4, 0.2]
    fill: Any = "" if spec.elem_type == "string" else (True if spec.elem_type == "bool" else 1)
    value: Any = fill
    for dim in reversed(dims):
        value = [value] * dim
    return value


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        return TensorSpec(value_info.name, kind or "unknown", ())
    tensor = value_info.type.tensor_type
    elem = TensorProto.DataType.Name(tensor.elem_type).lower()
    dims: list[int | str | None] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    dtype = np.dtype(object) if elem == "string" else np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type))
    return TensorSpec(value_info.name, elem, tuple(dims), dtype)


def _read_labels(labels_path: str, metadata: dict[str, str]) -> tuple[str, ...] | None:
    if labels_path:
        text = Path(labels_path).read_text()
        try:
            labels = json.loads(text)
        except json.JSONDecodeError:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
        return tuple(str(label) for label in labels)
    for key in LABEL_METADATA_KEYS:
        if key in metadata:
            return tuple(str(label) for label in json.loads(metadata[key]))
    return None


# ModelProto field 7 is the graph; GraphProto fields 1 (nodes), 5 (initializers) and 15 (sparse
# initializers) hold the weights and constants: a signature needs none of them.
MODEL_GRAPH_FIELD = 7
GRAPH_HEAVY_FIELDS = {1, 5, 15}
GRAPH_INITIALIZER_FIELD = 5
TENSOR_NAME_FIELD = 8


def _varint(buf: mmap.mmap | bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start of the whole field, end) of each protobuf field in [start, end)."""
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}: not an ONNX model")
        yield number, wire, field_start, pos


def _load_without_weights(model_path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, set[str]]:
    """The model with its graph's nodes and weights left out, read through a memory map: a model of
    hundreds of MB costs the API a few KB (only the graph's name, inputs, outputs and metadata).
    Also returns the initializers' names (pre-IR4 models list their weights as graph inputs)."""
    initializer_names: set[str] = set()
    with open(model_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        kept = bytearray()
        for number, wire, field_start, field_end in _fields(buf, 0, len(buf)):
            if number != MODEL_GRAPH_FIELD or wire != 2:
                kept += buf[field_start:field_end]
                continue
            _, body_start = _varint(buf, _varint(buf, field_start)[1])  # skip tag, then length
            graph = bytearray()
            for sub, _, sub_start, sub_end in _fields(buf, body_start, field_end):
                if sub not in GRAPH_HEAVY_FIELDS:
                    graph += buf[sub_start:sub_end]
                elif sub == GRAPH_INITIALIZER_FIELD:
                    initializer_names.add(_tensor_name(buf, sub_start, sub_end))
            kept += bytes([MODEL_GRAPH_FIELD << 3 | 2]) + _encode_varint(len(graph)) + graph
    model = onnx.ModelProto()
    model.ParseFromString(bytes(kept))
    return model, initializer_names


def _tensor_name(buf: mmap.mmap | bytes, start: int, end: int) -> str:
    """The `name` (field 8) of a TensorProto field, read without copying its data."""
    _, body_start = _varint(buf, _varint(buf, start)[1])
    for number, wire, field_start, field_end in _fields(buf, body_start, end):
        if number == TENSOR_NAME_FIELD and wire == 2:
            _, name_start = _varint(buf, _varint(buf, field_start)[1])
            return bytes(buf[name_start:field_end]).decode()
    return ""


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_signature(model_path: str | os.PathLike, labels_path: str = "") -> ModelSignature:
    """Read the model's inputs, outputs, labels and version without loading weights for inference."""
    model, initializers = _load_without_weights(model_path)
    graph = model.graph
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    signature = ModelSignature(
        name=metadata.get("name") or graph.name or Path(model_path).stem,
        version=metadata.get("version") or str(model.model_version or 1),
        inputs=tuple(_spec(vi) for vi in graph.input if vi.name not in initializers),
        outputs=tuple(_spec(vi) for vi in graph.output),
        labels=_read_labels(labels_path, metadata),
        metadata=metadata,
    )
    for spec in signature.inputs:
        if spec.dtype is None or not spec.shape:
            raise ValueError(f"input {spec.name!r}: only tensors with a leading batch dimension are supported")
    return signature


def _leaves(rows: Any) -> Iterator[Any]:
    """Every scalar in nested lists (depth-first), for type checks numpy would paper over."""
    stack = [rows]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def _coerce(rows: Any, spec: TensorSpec, loc: tuple[str | int, ...]) -> np.ndarray:
    """One job's rows as an array of the input's dtype, converted on their own: what other jobs send
    can never change this job's values (numpy would promote a mixed batch to float64 and round
    int64 values above 2^53)."""
    if not isinstance(rows, list) or not rows:
        raise InputError(loc, "must be a non-empty list of rows")
    try:
        raw = np.array(rows)
    except ValueError:
        raise InputError(loc, "rows are ragged: every row must have the same shape") from None
    kind = raw.dtype.kind
    if spec.elem_type == "string":
        # numpy turns numbers into strings silently; a string input takes JSON strings only
        if kind != "U" or not all(type(v) is str for v in _leaves(rows)):
            raise InputError(loc, f"input {spec.name!r} takes strings")
        return raw.astype(object)
    if kind == "O":
        raise InputError(loc, "rows are ragged or mix types: every row must have the same shape")
    if spec.elem_type == "bool":
        if kind != "b":
            raise InputError(loc, f"input {spec.name!r} takes booleans (true/false)")
        return raw
    if kind not in "iufb" or (kind != "b" and any(type(v) is bool for v in _leaves(rows))):
        what = "booleans" if kind in "iufb" else _json_kind(kind)
        raise InputError(loc, f"input {spec.name!r} takes numbers, got {what}")
    if kind == "b":
        raise InputError(loc, f"input {spec.name!r} takes numbers, got booleans")
    assert spec.dtype is not None
    if spec.dtype.kind in "iu":
        if kind == "f":
            integral = np.isfinite(raw) & (raw == np.round(raw))
            if not integral.all():
                raise InputError(loc + _first_bad(raw, integral), f"input {spec.name!r} takes integers ({spec.elem_type})")
            # exact: from the JSON values themselves, not from their float64 rounding
            try:
                return np.array([int(v) for v in _leaves_in_order(rows)], dtype=spec.dtype).reshape(raw.shape)
            except OverflowError:
                raise InputError(loc, f"value out of range for {spec.elem_type}") from None
        info = np.iinfo(spec.dtype)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise InputError(loc, f"value out of range for {spec.elem_type}")
        return raw.astype(spec.dtype)
    with np.errstate(over="ignore"):
        arr = raw.astype(spec.dtype)
    finite = np.isfinite(arr)
    if not finite.all():
        raise InputError(loc + _first_bad(arr, finite), f"values must be finite numbers (in {spec.elem_type} range)")
    return arr


def _leaves_in_order(rows: Any) -> list[Any]:
    out: list[Any] = []

    def walk(item: Any) -> None:
        if isinstance(item, list):
            for sub in item:
                walk(sub)
        else:
            out.append(item)

    walk(rows)
    return out


def _json_kind(kind: str) -> str:
    return {"U": "strings", "b": "booleans"}.get(kind, "non-numeric values")


def _first_bad(arr: np.ndarray, ok: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~ok)[0]) if arr.ndim else ()


def _check_shape(arr: np.ndarray, spec: TensorSpec, loc: tuple[str | int, ...]) -> None:
    want = spec.shape[1:]
    got = arr.shape[1:]
    if len(got) != len(want):
        example = "x".join(str(d if isinstance(d, int) else "?") for d in want) or "scalar"
        raise InputError(loc, f"each row must have shape [{example}] for input {spec.name!r}, got {list(got) or 'scalar'}")
    for axis, (g, w) in enumerate(zip(got, want)):
        if isinstance(w, int) and w > 0 and g != w:
            raise InputError(loc, f"each row must have {w} values on axis {axis + 1} for input {spec.name!r}, got {g}")


def parse_input(data: Any, signature: ModelSignature, max_rows: int) -> dict[str, np.ndarray]:
    """Check `data` against the model and return one array per model input.

    `data` is a list of rows for a single-input model, or an object mapping each input name to its rows.
    """
    loc: tuple[str | int, ...] = ("body", "data")
    if isinstance(data, dict):
        names = [spec.name for spec in signature.inputs]
        missing, unknown = set(names) - set(data), set(data) - set(names)
        if missing or unknown:
            raise InputError(loc, f"expected exactly the model inputs {names}; missing {sorted(missing)}, unknown {sorted(unknown)}")
        pairs = [(spec, data[spec.name], loc + (spec.name,)) for spec in signature.inputs]
    elif len(signature.inputs) == 1:
        pairs = [(signature.inputs[0], data, loc)]
    else:
        names = [spec.name for spec in signature.inputs]
        raise InputError(loc, f"this model has several inputs: send an object keyed by {names}")

    arrays: dict[str, np.ndarray] = {}
    for spec, rows, field_loc in pairs:
        if isinstance(rows, list) and len(rows) > max_rows:
            raise InputError(field_loc, f"at most {max_rows} rows per job (MAX_ROWS_PER_JOB), got {len(rows)}")
        arr = _coerce(rows, spec, field_loc)
        _check_shape(arr, spec, field_loc)
        arrays[spec.name] = arr
    counts = {len(arr) for arr in arrays.values()}
    if len(counts) > 1:
        raise InputError(loc, "every input must have the same number of rows")
    return arrays


def batch_mismatch(signature: ModelSignature) -> str | None:
    """Why the model's outputs cannot be split per input row, when its declared shapes already say
    so (a scalar, or a fixed first dimension that is not the batch); None when they may be."""
    batch = signature.inputs[0].fixed_batch if signature.inputs else None
    for spec in signature.outputs:
        if spec.dtype is None:
            continue  # sequences and maps: checked on every call instead
        if not spec.shape:
            return f"output {spec.name!r} is a scalar, not one value per input row"
        first = spec.shape[0]
        if isinstance(first, int) and first > 0 and first != batch:
            return f"output {spec.name!r} has a fixed first dimension {first}, not the batch dimension"
    return None

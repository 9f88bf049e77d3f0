"""Reads what a signature needs from an ONNX file (graph name, inputs, outputs, metadata), nothing else.

A small protobuf wire-format reader over a memory map: the nodes and weights are skipped without
being read, so a model of hundreds of MB costs a few KB, and neither the API nor a worker pays for
importing the `onnx` package at start-up (its protobuf stack is a third of a worker's cold start).
Field numbers are those of onnx.proto (ModelProto, GraphProto, ValueInfoProto, TypeProto, ...).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

# ModelProto
MODEL_VERSION, MODEL_GRAPH, MODEL_METADATA = 5, 7, 14
# GraphProto
GRAPH_NAME, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 2, 5, 11, 12
# ValueInfoProto, TypeProto, TypeProto.Tensor, TensorShapeProto(.Dimension), TensorProto, StringStringEntryProto
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_KINDS = {1: "tensor_type", 4: "sequence_type", 5: "map_type", 8: "sparse_tensor_type", 9: "optional_type"}
TENSOR_ELEM_TYPE, TENSOR_SHAPE = 1, 2
SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 1, 2
INITIALIZER_NAME = 8
ENTRY_KEY, ENTRY_VALUE = 1, 2
LENGTH_DELIMITED = 2

# TensorProto.DataType values and their ONNX names (lower case, as the signature shows them)
ELEM_TYPES = {
    1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool",
    10: "float16", 11: "double", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
    17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4",
}  # fmt: skip


@dataclass(frozen=True)
class ValueInfo:
    name: str
    kind: str  # "tensor_type", "sequence_type", "map_type", ...
    elem_type: str | None = None  # tensors only
    dims: tuple[int | str | None, ...] = ()


@dataclass
class ModelHeader:
    graph_name: str = ""
    model_version: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    initializer_names: set[str] = field(default_factory=set)


Buffer = mmap.mmap | bytes


def _varint(buf: Buffer, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field in [start, end); for length-delimited
    fields start/end bound the payload, for varints start is the value itself."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, pos
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        elif wire == LENGTH_DELIMITED:
            length, pos = _varint(buf, pos)
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            yield number, wire, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}: not an ONNX model")
    if pos != end:
        raise ValueError("truncated protobuf field: not an ONNX model")


def _text(buf: Buffer, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode()


def _signed(value: int) -> int:
    """An int64 varint as the signed value protobuf means (negative numbers take ten bytes)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _value_info(buf: Buffer, start: int, end: int) -> ValueInfo:
    name, kind, elem = "", "unknown", None
    dims: tuple[int | str | None, ...] = ()
    for number, wire, s, e in _fields(buf, start, end):
        if number == VALUE_NAME and wire == LENGTH_DELIMITED:
            name = _text(buf, s, e)
        elif number == VALUE_TYPE and wire == LENGTH_DELIMITED:
            for type_number, type_wire, ts, te in _fields(buf, s, e):
                if type_number in TYPE_KINDS and type_wire == LENGTH_DELIMITED:
                    kind = TYPE_KINDS[type_number]
                    if type_number == 1:
                        elem, dims = _tensor_type(buf, ts, te)
    return ValueInfo(name, kind, elem, dims)


def _tensor_type(buf: Buffer, start: int, end: int) -> tuple[str, tuple[int | str | None, ...]]:
    elem = "undefined"
    dims: list[int | str | None] = []
    for number, wire, s, e in _fields(buf, start, end):
        if number == TENSOR_ELEM_TYPE and wire == 0:
            elem = ELEM_TYPES.get(s, f"type{s}")
        elif number == TENSOR_SHAPE and wire == LENGTH_DELIMITED:
            for dim_number, dim_wire, ds, de in _fields(buf, s, e):
                if dim_number != SHAPE_DIM or dim_wire != LENGTH_DELIMITED:
                    continue
                dim: int | str | None = None
                for n, w, vs, ve in _fields(buf, ds, de):
                    if n == DIM_VALUE and w == 0:
                        dim = _signed(vs)
                    elif n == DIM_PARAM and w == LENGTH_DELIMITED:
                        dim = _text(buf, vs, ve) or None
                dims.append(dim)
    return elem, tuple(dims)


def _initializer_name(buf: Buffer, start: int, end: int) -> str:
    for number, wire, s, e in _fields(buf, start, end):
        if number == INITIALIZER_NAME and wire == LENGTH_DELIMITED:
            return _text(buf, s, e)  # stops before the tensor's data, which follows the name
    return ""


def read_header(path: str | os.PathLike[str]) -> ModelHeader:
    """The parts of an ONNX model a signature needs. Raises ValueError for a file that is not one."""
    header = ModelHeader()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path} is empty: not an ONNX model")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                _read(buf, header)
            except IndexError:
                raise ValueError(f"{path}: truncated or not an ONNX model") from None
    if not header.inputs and not header.outputs:
        raise ValueError(f"{path}: no graph inputs or outputs found: not an ONNX model")
    return header


def _read(buf: mmap.mmap, header: ModelHeader) -> None:
    for number, wire, start, end in _fields(buf, 0, len(buf)):
        if number == MODEL_VERSION and wire == 0:
            header.model_version = _signed(start)
        elif number == MODEL_METADATA and wire == LENGTH_DELIMITED:
            entry = {n: _text(buf, s, e) for n, w, s, e in _fields(buf, start, end) if w == LENGTH_DELIMITED}
            header.metadata[entry.get(ENTRY_KEY, "")] = entry.get(ENTRY_VALUE, "")
        elif number == MODEL_GRAPH and wire == LENGTH_DELIMITED:
            for sub, sub_wire, s, e in _fields(buf, start, end):
                if sub_wire != LENGTH_DELIMITED:
                    continue
                if sub == GRAPH_NAME:
                    header.graph_name = _text(buf, s, e)
                elif sub == GRAPH_INPUT:
                    header.inputs.append(_value_info(buf, s, e))
                elif sub == GRAPH_OUTPUT:
                    header.outputs.append(_value_info(buf, s, e))
                elif sub == GRAPH_INITIALIZER:
                    header.initializer_names.add(_initializer_name(buf, s, e))

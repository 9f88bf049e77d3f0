"""How a job's checked input is kept in its record: the arrays the API converted, as raw bytes.

The API checks every input against the model and converts it exactly, job by job
(`model_signature.parse_input`). It keeps those arrays rather than the JSON numbers they came from, so a
worker reads a batch's tensors back with one `np.frombuffer` per input (`read_stored`) instead of parsing
and converting the numbers again: for 256 float inputs ~2 us of worker CPU per job instead of ~40, and
the record is a quarter smaller. An input with no fixed-size binary form (strings) keeps its JSON
(`{"data": ...}`), as does every record written before this format; a worker reads all of them.

Layout: `TENSORS_PREFIX`, a JSON header `[[name, dtype, shape], ...]`, a newline, then each array's
C-order bytes one after the other, carried as latin-1 text (one character per byte). Redis stores it and
redis-py's decoded replies return it byte for byte, and `str.encode("latin-1")` gets the bytes back at
memory speed, where base64 would cost the worker ~5 us per KB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from jobqueue.model_signature import BatchPart, ModelSignature, parse_input, tensors_fit

TENSORS_PREFIX = "tensors:"  # never the start of JSON text, so old and new records tell themselves apart
BINARY_KINDS = "biufc"  # numpy kinds with a fixed-size binary form: booleans, integers, floats, complex
_DTYPES: dict[str, np.dtype[Any]] = {}  # header text -> dtype: a worker sees the same few, job after job


def checked_payload(data: Any, signature: ModelSignature, max_rows: int, raw: str | bytes | None = None) -> str:
    """The record's input for `data` checked against the model: its tensors when every input has a binary
    form, else its JSON. Raises `InputError` naming the field, as `parse_input` does."""
    arrays = parse_input(data, signature, max_rows, raw)
    return encode_tensors(arrays) or orjson.dumps({"data": data}).decode()


def encode_tensors(arrays: dict[str, np.ndarray]) -> str | None:
    """The arrays in the record's layout; None when one of them has no binary form."""
    header, chunks = [], []
    for name, arr in arrays.items():
        dtype = arr.dtype
        if dtype.kind not in BINARY_KINDS:
            return None
        header.append((name, dtype.str, arr.shape))
        chunks.append(arr.tobytes())  # C order, whatever the array's own layout
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return TENSORS_PREFIX + orjson.dumps(header).decode() + "\n" + body.decode("latin-1")


def is_tensors(payload: str) -> bool:
    return payload.startswith(TENSORS_PREFIX)


def decode_tensors(payload: str) -> dict[str, np.ndarray]:
    """The arrays of a record in `encode_tensors`' layout (read-only views of one buffer). Raises
    ValueError when the text is not that layout (a record written by something else, or damaged)."""
    try:
        end = payload.index("\n", len(TENSORS_PREFIX))
        header = orjson.loads(payload[len(TENSORS_PREFIX) : end])
        body = payload[end + 1 :].encode("latin-1")
        arrays, offset = {}, 0
        for name, dtype_text, shape in header:
            dtype = _DTYPES.get(dtype_text)
            if dtype is None:
                dtype = np.dtype(dtype_text)
                if dtype.kind not in BINARY_KINDS:
                    raise ValueError(f"dtype {dtype_text!r} has no binary form")
                _DTYPES[dtype_text] = dtype
            if not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError(f"shape {shape!r}")
            count = math.prod(shape)
            arrays[str(name)] = np.frombuffer(body, dtype, count, offset).reshape(shape)
            offset += count * dtype.itemsize
    except (ValueError, TypeError) as exc:  # orjson's and the encoders' errors are ValueErrors too
        raise ValueError(f"stored input is not a tensor record: {exc}") from None
    if offset != len(body):
        raise ValueError(f"stored input is not a tensor record: {len(body) - offset} bytes left over")
    return arrays


def as_model_takes(arrays: dict[str, np.ndarray], signature: ModelSignature, max_rows: int) -> dict[str, np.ndarray] | None:
    """The stored arrays keyed by the model's input names when the model takes them as they are; None
    when it does not (see `as_data`). One array for a one-input model goes by position, as the list form
    a client sends does: a new version that renamed its input still takes it."""
    if len(arrays) == 1 and len(signature.inputs) == 1:
        arrays = {signature.inputs[0].name: next(iter(arrays.values()))}
    return arrays if tensors_fit(arrays, signature, max_rows) else None


def as_data(arrays: dict[str, np.ndarray], signature: ModelSignature) -> Any:
    """The arrays as the JSON `data` they stand for: for a worker whose model no longer takes them as they
    are (a new version with other types or shapes), which checks and converts them again as any JSON
    input, value by value. One array for a one-input model: the list form; else keyed by name."""
    if len(arrays) == 1 and len(signature.inputs) == 1:
        return next(iter(arrays.values())).tolist()
    return {name: arr.tolist() for name, arr in arrays.items()}


@dataclass
class StoredBatch:
    """A batch's tensor records read back (`read_stored`): `parts` ready for the model, the values of
    jobs the model no longer takes as stored (`to_convert`, JSON data by position), unreadable records
    (`errors`, by position)."""

    parts: list[BatchPart] = field(default_factory=list)
    to_convert: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, ValueError] = field(default_factory=dict)


def read_stored(payloads: list[str], signature: ModelSignature, max_rows: int) -> StoredBatch:
    """Tensor records of one batch, read as the model takes them. Records with the same header (names,
    dtypes, shapes: a stream of alike jobs) are read together, one `np.frombuffer` per input over their
    bodies joined, so a job costs a string slice rather than its own arrays; the first record of each
    header is checked whole, and any record that does not match it is read alone. A job's values are its
    own bytes either way: nothing is converted, so a batch mate cannot change them."""
    out = StoredBatch()
    by_header: dict[str, list[int]] = {}
    for index, payload in enumerate(payloads):
        end = payload.find("\n", len(TENSORS_PREFIX))
        by_header.setdefault(payload[:end] if end > 0 else "", []).append(index)
    for members in by_header.values():
        first = payloads[members[0]]
        alike = [index for index in members if len(payloads[index]) == len(first)]  # same header, same body size
        stacked = _read_alike([payloads[index] for index in alike], signature, max_rows) if len(alike) > 1 else None
        if stacked is None:
            alike = []
        else:
            out.parts.append(BatchPart(alike, [len(next(iter(stacked.values()))) // len(alike)] * len(alike), stacked))
        if len(alike) < len(members):
            read = set(alike)
            for index in members:
                if index not in read:
                    _read_alone(index, payloads[index], signature, max_rows, out)
    return out


def _read_alone(index: int, payload: str, signature: ModelSignature, max_rows: int, out: StoredBatch) -> None:
    try:
        stored = decode_tensors(payload)
    except ValueError as exc:
        out.errors[index] = exc
        return
    arrays = as_model_takes(stored, signature, max_rows)
    if arrays is None:  # the model changed since the API checked them: convert the values again
        out.to_convert[index] = as_data(stored, signature)
    else:
        out.parts.append(BatchPart([index], [len(next(iter(arrays.values())))], arrays))


def _read_alike(payloads: list[str], signature: ModelSignature, max_rows: int) -> dict[str, np.ndarray] | None:
    """The records' arrays stacked, when the first one is one the model takes as it is and every one
    decodes in the same layout; None sends each to `_read_alone` (which words what is wrong)."""
    try:
        sample = decode_tensors(payloads[0])
    except ValueError:
        return None
    arrays = as_model_takes(sample, signature, max_rows)
    if arrays is None:
        return None
    start = payloads[0].index("\n", len(TENSORS_PREFIX)) + 1
    try:
        body = "".join([payload[start:] for payload in payloads]).encode("latin-1")
    except UnicodeEncodeError:
        return None
    count = len(payloads)
    try:
        return _stack_bodies(body, count, arrays)
    except ValueError:  # a layout numpy cannot view (a zero-size row): each is read alone
        return None


def _stack_bodies(body: bytes, count: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if len(arrays) == 1:
        ((name, arr),) = arrays.items()
        return {name: np.frombuffer(body, arr.dtype).reshape(count * len(arr), *arr.shape[1:])}
    # several inputs: each record is one row of a structured array, one field per input
    layout = np.dtype([(f"f{i}", arr.dtype, arr.shape) for i, arr in enumerate(arrays.values())])
    records = np.frombuffer(body, layout)
    return {
        name: np.ascontiguousarray(records[f"f{i}"]).reshape(count * len(arr), *arr.shape[1:])
        for i, (name, arr) in enumerate(arrays.items())
    }

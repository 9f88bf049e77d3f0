"""What a model accepts and returns, read from the ONNX file itself, and the check of a job's input.

The API validates requests with it while no worker runs (workers scale to zero); the worker applies the
same check to every payload it claims, so one bad job fails alone instead of breaking its batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobqueue.onnx_header import ValueInfo, read_header

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


NUMPY_DTYPES = {
    "float": np.float32, "double": np.float64, "float16": np.float16, "bool": np.bool_, "string": object,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "complex64": np.complex64, "complex128": np.complex128,
}  # fmt: skip


def _spec(value_info: ValueInfo) -> TensorSpec:
    if value_info.kind != "tensor_type" or value_info.elem_type is None:
        return TensorSpec(value_info.name, value_info.kind, ())
    numpy_type = NUMPY_DTYPES.get(value_info.elem_type)
    dtype = np.dtype(numpy_type) if numpy_type is not None else None
    return TensorSpec(value_info.name, value_info.elem_type, value_info.dims, dtype)


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


def read_signature(model_path: str | os.PathLike[str], labels_path: str = "") -> ModelSignature:
    """Read the model's inputs, outputs, labels and version without loading weights for inference."""
    header = read_header(model_path)
    metadata = header.metadata
    signature = ModelSignature(
        name=metadata.get("name") or header.graph_name or Path(model_path).stem,
        version=metadata.get("version") or str(header.model_version or 1),
        # pre-IR4 models list their weights as graph inputs too
        inputs=tuple(_spec(vi) for vi in header.inputs if vi.name not in header.initializer_names),
        outputs=tuple(_spec(vi) for vi in header.outputs),
        labels=_read_labels(labels_path, metadata),
        metadata=metadata,
    )
    for spec in signature.inputs:
        if spec.dtype is None or not spec.shape:
            raise ValueError(
                f"input {spec.name!r} ({spec.elem_type}): only tensors of a numpy type with a leading batch dimension are supported"
            )
    return signature


def _leaves(rows: Any) -> Iterator[Any]:
    """Every scalar in nested lists, in order, for type checks numpy would paper over (iterative:
    a deeply nested body must not hit the recursion limit)."""
    stack = [iter([rows])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _coerce(rows: Any, spec: TensorSpec, loc: tuple[str | int, ...], may_hold_booleans: bool = True) -> np.ndarray:
    """One job's rows as an array of the input's dtype, converted on their own: what other jobs send
    can never change this job's values (numpy would promote a mixed batch to float64 and round
    int64 values above 2^53)."""
    if not isinstance(rows, list) or not rows:
        raise InputError(loc, "must be a non-empty list of rows")
    try:
        raw = np.array(rows)
    except ValueError:
        raise _located(rows, spec, loc) or InputError(loc, "rows are ragged: every row must have the same shape") from None
    kind = raw.dtype.kind
    if spec.elem_type == "string":
        # numpy turns numbers into strings silently; a string input takes JSON strings only
        if kind != "U" or not all(type(v) is str for v in _leaves(rows)):
            raise _located(rows, spec, loc) or InputError(loc, f"input {spec.name!r} takes strings")
        return raw.astype(object)
    if kind == "O":
        raise _located(rows, spec, loc) or InputError(loc, "rows are ragged or mix types: every row must have the same shape")
    if spec.elem_type == "bool":
        if kind != "b":
            raise _located(rows, spec, loc) or InputError(loc, f"input {spec.name!r} takes booleans (true/false)")
        return raw
    if kind not in "iufb" or (kind != "b" and may_hold_booleans and any(type(v) is bool for v in _leaves(rows))):
        what = "booleans" if kind in "iufb" else _json_kind(kind)
        raise _located(rows, spec, loc) or InputError(loc, f"input {spec.name!r} takes numbers, got {what}")
    if kind == "b":
        raise _located(rows, spec, loc) or InputError(loc, f"input {spec.name!r} takes numbers, got booleans")
    assert spec.dtype is not None
    if spec.dtype.kind in "iu":
        if kind == "f":
            integral = np.isfinite(raw) & (raw == np.round(raw))
            if not integral.all():
                index = _first_bad(raw, integral)
                value = _describe(raw[index].item())
                raise InputError(
                    loc + index, f"{value} at {_path(loc + index)}; input {spec.name!r} takes integers ({spec.elem_type})"
                )
            # exact: from the JSON values themselves, not from their float64 rounding
            try:
                return np.array([int(v) for v in _leaves(rows)], dtype=spec.dtype).reshape(raw.shape)
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
        at = loc + _first_bad(arr, finite)
        raise InputError(at, f"values must be finite numbers in {spec.elem_type} range: the value at {_path(at)} is not")
    return arr


def _path(loc: tuple[str | int, ...]) -> str:
    """`("body", "data", "x", 17, 3)` as a reader writes it: `data.x[17][3]`."""
    text = ""
    for part in loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "string " + json.dumps(value[:40] + ("..." if len(value) > 40 else ""))
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _expected(spec: TensorSpec) -> tuple[str, type | tuple[type, ...]]:
    """What one value of the input is, in words, and the JSON (Python) types that are one."""
    if spec.elem_type == "string":
        return f"a string (input {spec.name!r} takes strings)", str
    if spec.elem_type == "bool":
        return f"true or false (input {spec.name!r} takes booleans)", bool
    return f"a number (input {spec.name!r} takes numbers)", (int, float)


def _located(rows: list[Any], spec: TensorSpec, loc: tuple[str | int, ...]) -> InputError | None:
    """The first value or row that makes `rows` unfit, by its place (`data[17][3]`), or None if none
    is found. Runs only once a job is already refused, so its walk costs nothing on valid input; it
    goes no deeper than the model's rank, whatever the nesting of the body."""
    expected, types = _expected(spec)
    rank = len(spec.shape) - 1
    # Each axis's length: fixed by the model, else set by the first row that reaches it.
    lengths: list[int | None] = [d if isinstance(d, int) and d > 0 else None for d in spec.shape[1:]]

    def check(value: Any, axis: int, at: tuple[str | int, ...]) -> InputError | None:
        if axis == rank:
            if isinstance(value, types) and (spec.elem_type == "bool" or type(value) is not bool):
                return None
            unlike = "; booleans are not numbers" if type(value) is bool and spec.elem_type != "bool" else ""
            return InputError(at, f"{_describe(value)} at {_path(at)}; expected {expected}{unlike}")
        if not isinstance(value, list):
            if axis == 0 and isinstance(value, types) and type(value) is not bool:
                return InputError(
                    at,
                    f"{_describe(value)} at {_path(at)} where a row was expected; {_path(loc)} is a list of rows: to send one row, wrap it in a list ([[...]])",
                )
            return InputError(at, f"{_describe(value)} at {_path(at)}; expected a list of {lengths[axis] or 'several'} values")
        want = lengths[axis]
        if want is None:
            lengths[axis] = len(value)
        elif len(value) != want:
            return InputError(
                at,
                f"{_path(at)} has {len(value)} values where {want} were expected: rows are ragged, every row must have the same shape",
            )
        for i, item in enumerate(value):
            found = check(item, axis + 1, (*at, i))
            if found is not None:
                return found
        return None

    for index, row in enumerate(rows):
        found = check(row, 0, (*loc, index))
        if found is not None:
            return found
    return None


def _json_kind(kind: str) -> str:
    return {"U": "strings", "b": "booleans"}.get(kind, "non-numeric values")


def _first_bad(arr: np.ndarray, ok: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~ok)[0]) if arr.ndim else ()


def _check_shape(arr: np.ndarray, spec: TensorSpec, loc: tuple[str | int, ...]) -> None:
    want = spec.shape[1:]
    got = arr.shape[1:]
    if len(got) != len(want):
        example = "x".join(str(d if isinstance(d, int) else "?") for d in want) or "scalar"
        msg = f"each row must have shape [{example}] for input {spec.name!r}, got {list(got) or 'scalar'}"
        if len(got) + 1 == len(want):  # the classic: one row sent bare, as `[5.1, 3.5, ...]`
            msg += f"; {_path(loc)} is a list of rows: to send one row, wrap it in a list ([[...]])"
        raise InputError(loc, msg)
    for axis, (g, w) in enumerate(zip(got, want, strict=True)):
        if isinstance(w, int) and w > 0 and g != w:
            raise InputError(loc, f"each row must have {w} values on axis {axis + 1} for input {spec.name!r}, got {g}")


def check_row_shape(shape: tuple[int, ...], spec: TensorSpec, loc: tuple[str | int, ...]) -> None:
    """`_check_shape` for an array known only by its shape (an .npy header)."""
    _check_shape(np.empty((0, *shape[1:]), dtype=np.uint8), spec, loc)


def parse_input(data: Any, signature: ModelSignature, max_rows: int, raw: str | bytes | None = None) -> dict[str, np.ndarray]:
    """Check `data` against the model and return one array per model input.

    `data` is a list of rows for a single-input model, or an object mapping each input name to its rows.
    """
    # `raw`: the JSON text `data` came from. Without a `true`/`false` token in it there is no boolean
    # to look for, which spares a walk over every value (a third of the check's time).
    may_hold_booleans = raw is None or (
        b"true" in raw or b"false" in raw if isinstance(raw, bytes) else "true" in raw or "false" in raw
    )
    loc: tuple[str | int, ...] = ("body", "data")
    if isinstance(data, dict):
        names = [spec.name for spec in signature.inputs]
        missing, unknown = set(names) - set(data), set(data) - set(names)
        if missing or unknown:
            raise InputError(
                loc, f"expected exactly the model inputs {names}; missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
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
        arr = _coerce(rows, spec, field_loc, may_hold_booleans)
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


# Above this magnitude a float64 no longer holds every integer: a JSON integer converted through a
# batch's float64 array could round differently from the same job's own int64 array.
EXACT_FLOAT64_INT = 2.0**53


@dataclass(frozen=True)
class BatchPart:
    """Jobs of a batch converted by one call per input: `arrays` holds their rows stacked in order."""

    indices: list[int]  # the jobs' positions in the batch
    rows: list[int]  # each job's row count
    arrays: dict[str, np.ndarray]


def convert_batch(
    items: list[tuple[Any, str | bytes | None]], signature: ModelSignature, max_rows: int
) -> tuple[list[BatchPart], dict[int, InputError]]:
    """`parse_input` for many jobs at once, given (data, raw JSON) per job: the converted jobs as parts
    (several jobs, or one), and each rejected job's InputError by position.

    Jobs whose rows have the same leading shape and first value type are converted together, one
    numpy call per input for the whole group. The shared conversion is used only where it provably
    equals converting each job alone (plain numbers, no booleans, integers within float64's exact
    range, every value in range and finite); any other group, or a group with a bad job in it, is
    converted job by job, so a job's values and errors never depend on the jobs that shared its batch.
    """
    parts: list[BatchPart] = []
    errors: dict[int, InputError] = {}

    def alone(index: int) -> None:
        data, raw = items[index]
        try:
            arrays = parse_input(data, signature, max_rows, raw=raw)
        except InputError as exc:
            errors[index] = exc
            return
        parts.append(BatchPart([index], [len(next(iter(arrays.values())))], arrays))

    groups: dict[tuple[Any, ...], list[tuple[int, tuple[list[Any], ...]]]] = {}
    for index, (data, raw) in enumerate(items):
        per_input = _batchable_inputs(data, raw, signature, max_rows)
        if per_input is None:
            alone(index)
            continue
        key = tuple(map(_leading_layout, per_input))
        members = groups.get(key)
        if members is None:
            groups[key] = [(index, per_input)]
        else:
            members.append((index, per_input))
    for members in groups.values():
        arrays = _convert_group([per_input for _, per_input in members], signature)
        if arrays is None:  # something only a job-by-job check can word exactly
            for index, _ in members:
                alone(index)
            continue
        parts.append(BatchPart([index for index, _ in members], [len(per_input[0]) for _, per_input in members], arrays))
    return parts, errors


def parse_batch(
    items: list[tuple[Any, str | bytes | None]], signature: ModelSignature, max_rows: int
) -> list[dict[str, np.ndarray] | InputError]:
    """`convert_batch` job by job: each job's arrays (its slice of its part) or its InputError."""
    parts, errors = convert_batch(items, signature, max_rows)
    results: list[dict[str, np.ndarray] | InputError | None] = [errors.get(index) for index in range(len(items))]
    for part in parts:
        start = 0
        for index, count in zip(part.indices, part.rows, strict=True):
            results[index] = {name: arr[start : start + count] for name, arr in part.arrays.items()}
            start += count
    return [result for result in results if result is not None]  # every index was filled above


def _batchable_inputs(
    data: Any, raw: str | bytes | None, signature: ModelSignature, max_rows: int
) -> tuple[list[Any], ...] | None:
    """The job's rows per input, in the model's order, when it may join a shared conversion; None
    sends it down its own path (anything unusual, including all that path rejects before converting)."""
    if raw is None or _mentions_boolean(raw.decode() if isinstance(raw, bytes) else raw):
        return None  # a boolean among numbers is an error numpy's shared array would hide
    inputs = signature.inputs
    if type(data) is list and len(inputs) == 1:
        return (data,) if 0 < len(data) <= max_rows else None
    if type(data) is not dict or len(data) != len(inputs) or not all(spec.name in data for spec in inputs):
        return None
    per_input = tuple(data[spec.name] for spec in inputs)
    counts = {len(rows) if type(rows) is list else -1 for rows in per_input}
    return per_input if len(counts) == 1 and 0 < next(iter(counts)) <= max_rows else None


def _mentions_boolean(raw: str) -> bool:
    """Whether `true` or `false` occurs in the text: found by their first letter (a fast memchr; the
    usual payload has one `t`, in "data"), not by a substring search over the whole body."""
    for letter, word in (("t", "true"), ("f", "false")):
        at = raw.find(letter)
        while at != -1:
            if raw.startswith(word, at):
                return True
            at = raw.find(letter, at + 1)
    return False


def _leading_layout(rows: list[Any]) -> tuple[Any, ...]:
    """The lengths along the first row's first elements and the type of its first value: jobs alike
    in this usually stack into one regular array (the shared conversion checks that they do)."""
    value = rows[0]
    if type(value) is list and value and type(value[0]) is not list:  # the usual row of values: no loop
        return (len(value), type(value[0]))
    shape: list[int] = []
    while type(value) is list and value:
        shape.append(len(value))
        value = value[0]
    return (*shape, type(value))


def _convert_group(jobs: list[tuple[list[Any], ...]], signature: ModelSignature) -> dict[str, np.ndarray] | None:
    """The group's rows stacked, one conversion per input, or None when that conversion could differ
    from a job's own (then every job of the group is converted alone)."""
    arrays = {}
    for position, spec in enumerate(signature.inputs):
        arr = _convert_numbers([row for per_input in jobs for row in per_input[position]], spec)
        if arr is None or not _shape_fits(arr, spec):
            return None
        arrays[spec.name] = arr
    return arrays


def _convert_numbers(rows: list[Any], spec: TensorSpec) -> np.ndarray | None:
    """`_coerce`'s result for rows of plain JSON numbers (no booleans: the caller saw to that) when
    every job's slice of it would pass `_coerce` with the same values; None otherwise."""
    if spec.dtype is None or spec.dtype.kind in "bOUS":
        return None  # booleans and strings: rare, and checked per job
    try:
        raw = np.array(rows)
    except ValueError:
        return None
    if raw.size == 0 or raw.dtype.kind not in "if":
        return None
    if spec.dtype.kind in "iu":
        if raw.dtype.kind != "i":
            return None  # floats for an integer input: the job's own path converts them exactly
        info = np.iinfo(spec.dtype)
        if raw.min() < info.min or raw.max() > info.max:
            return None
        return raw.astype(spec.dtype)
    if raw.dtype.kind == "f" and not np.abs(raw).max() <= EXACT_FLOAT64_INT:  # also catches NaN
        return None
    with np.errstate(over="ignore"):
        arr = raw.astype(spec.dtype)
    return arr if np.isfinite(arr).all() else None


def tensors_fit(arrays: dict[str, np.ndarray], signature: ModelSignature, max_rows: int) -> bool:
    """Whether arrays the API converted (`job_input`) are what the model takes as they are: exactly its
    inputs, each of its dtype and row shape, the same 1..max_rows rows in each. False sends them back
    through `parse_input` (the model may have changed since the API checked them)."""
    if len(arrays) != len(signature.inputs):
        return False
    rows = set()
    for spec in signature.inputs:
        arr = arrays.get(spec.name)
        if arr is None or arr.dtype != spec.dtype or arr.ndim == 0 or not _shape_fits(arr, spec):
            return False
        rows.add(len(arr))
    return len(rows) == 1 and 0 < rows.pop() <= max_rows


def _shape_fits(arr: np.ndarray, spec: TensorSpec) -> bool:
    want = spec.shape[1:]
    got = arr.shape[1:]
    return len(got) == len(want) and all(not (isinstance(w, int) and w > 0) or g == w for g, w in zip(got, want, strict=True))

"""parse_batch: converting a batch's inputs together gives every job exactly what converting it alone
gives (values, dtypes, errors), whatever else shares the batch (no Redis)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.model_signature import InputError, ModelSignature, TensorSpec, parse_batch, parse_input

MAX_ROWS = 6


def model(*inputs: tuple[str, str, str, tuple[Any, ...]]) -> ModelSignature:
    """(name, ONNX elem type, numpy dtype, shape) per input."""
    specs = tuple(TensorSpec(name, elem, shape, np.dtype(dtype)) for name, elem, dtype, shape in inputs)
    return ModelSignature("m", "1", specs, (TensorSpec("y", "float", ("n",), np.dtype("float32")),))


MODELS = {
    "float32 x4": model(("X", "float", "float32", ("n", 4))),
    "int64 x3": model(("ids", "int64", "int64", ("n", 3))),
    "uint8 x2": model(("pixels", "uint8", "uint8", ("n", 2))),
    "float16 x2": model(("h", "float16", "float16", ("n", 2))),
    "double, dynamic width": model(("d", "double", "float64", ("n", "w"))),
    "float32 2x2": model(("m", "float", "float32", ("n", 2, 2))),
    "bool x2": model(("flags", "bool", "bool", ("n", 2))),
    "string x1": model(("text", "string", "object", ("n", 1))),
    "two inputs": model(("a", "float", "float32", ("n", 2)), ("b", "int32", "int32", ("n", 1))),
}

# Leaves that probe every rule: integers either side of 2^53 and of each integer range, floats with
# fractions, huge, NaN and infinite, booleans, strings and nulls.
INTEGERS = st.one_of(
    st.integers(-300, 300),
    st.integers(2**53 - 2, 2**53 + 2).map(lambda v: v if v % 2 else -v),
    st.integers(-(2**64), 2**70),
    # just above a float32 halfway point: rounded to float64 first, they land on it and round to even
    st.builds(
        lambda k, d, sign: sign * (2**k + 2 ** (k - 24) + d), st.integers(54, 62), st.integers(1, 3), st.sampled_from([1, -1])
    ),
)
FLOATS = st.one_of(st.floats(-1e3, 1e3), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5).map(float))
LEAVES = st.one_of(INTEGERS, FLOATS, st.booleans(), st.sampled_from(["", "a", "true"]), st.none())
# Most jobs are alike (so that groups form); the rest mix anything in.
KINDS = st.sampled_from(["small ints", "small ints", "floats", "floats", "big ints", "bools", "strings", "any"])
KIND_LEAVES = {
    "small ints": st.integers(-300, 300),
    "floats": st.floats(-1e3, 1e3),
    "big ints": INTEGERS,
    "bools": st.booleans(),
    "strings": st.sampled_from(["x", "yy"]),
    "any": LEAVES,
}


def nested(leaves: st.SearchStrategy[Any], shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    if not shape:
        return leaves
    return st.lists(nested(leaves, shape[1:]), min_size=shape[0], max_size=shape[0])


@st.composite
def rows_for(draw: st.DrawFn, spec: TensorSpec) -> Any:
    """Rows shaped for `spec` most of the time; sometimes too few/many values, ragged, empty or too many rows."""
    inner = tuple(d if isinstance(d, int) else 3 for d in spec.shape[1:])
    leaves = KIND_LEAVES[draw(KINDS)]
    shape_kind = draw(st.sampled_from(["fits", "fits", "fits", "fits", "wrong width", "ragged", "empty", "too many", "scalars"]))
    if shape_kind == "empty":
        return []
    if shape_kind == "scalars":
        return draw(st.lists(leaves, min_size=1, max_size=3))
    count = MAX_ROWS + 1 if shape_kind == "too many" else draw(st.integers(1, 3))
    if shape_kind == "wrong width":
        inner = (inner[0] + draw(st.sampled_from([-1, 1])), *inner[1:])
    rows = [draw(nested(leaves, inner)) for _ in range(count)]
    if shape_kind == "ragged":
        rows.append(draw(nested(leaves, (inner[0] + 1, *inner[1:]))))
    return rows


@st.composite
def batch(draw: st.DrawFn) -> tuple[ModelSignature, list[tuple[Any, str]]]:
    signature = MODELS[draw(st.sampled_from(sorted(MODELS)))]
    items = []
    for _ in range(draw(st.integers(1, 12))):
        if len(signature.inputs) == 1:
            data: Any = draw(rows_for(signature.inputs[0]))
        else:
            data = {spec.name: draw(rows_for(spec)) for spec in signature.inputs}
        items.append((data, json.dumps({"data": data})))
    return signature, items


def alone(data: Any, raw: str, signature: ModelSignature) -> dict[str, np.ndarray] | InputError:
    try:
        return parse_input(data, signature, MAX_ROWS, raw=raw)
    except InputError as exc:
        return exc


def assert_same(batched: dict[str, np.ndarray] | InputError, single: dict[str, np.ndarray] | InputError) -> None:
    if isinstance(single, InputError):
        assert isinstance(batched, InputError), f"alone: {single.msg}; in the batch: converted"
        assert (batched.loc, batched.msg) == (single.loc, single.msg)
        return
    assert not isinstance(batched, InputError), f"alone: converted; in the batch: {batched.msg}"
    assert batched.keys() == single.keys()
    for name, arr in single.items():
        assert batched[name].dtype == arr.dtype and batched[name].shape == arr.shape
        assert batched[name].tolist() == arr.tolist()  # exact: Python values, not a numpy comparison


@settings(max_examples=400, deadline=None)
@given(batch())
def test_every_job_gets_what_it_gets_alone(case: tuple[ModelSignature, list[tuple[Any, str]]]) -> None:
    signature, items = case
    results = parse_batch(items, signature, MAX_ROWS)
    assert len(results) == len(items)
    for (data, raw), batched in zip(items, results, strict=True):
        assert_same(batched, alone(data, raw, signature))


IRIS_LIKE = MODELS["float32 x4"]
GOOD = [[5.1, 3.5, 1.4, 0.2], [1, 2, 3, 4]]


@pytest.mark.parametrize(
    "bad",
    [[[1, 2, 3, True]], [[1, 2, 3, 1e300]], [[1, 2, 3]], [[1, 2, 3, "4"]], [[1, 2, 3, 2**70]], [[1, 2, 3, None]]],
    ids=["boolean", "out of float32 range", "short row", "string", "int beyond int64", "null"],
)
def test_a_bad_job_fails_alone_and_its_neighbours_convert(bad: Any) -> None:
    items = [(GOOD, json.dumps(GOOD))] * 3 + [(bad, json.dumps(bad))] + [(GOOD, json.dumps(GOOD))] * 3
    results = parse_batch(items, IRIS_LIKE, MAX_ROWS)
    assert [i for i, r in enumerate(results) if isinstance(r, InputError)] == [3]
    assert_same(results[3], alone(bad, json.dumps(bad), IRIS_LIKE))
    for result in results[:3] + results[4:]:
        assert_same(result, alone(GOOD, json.dumps(GOOD), IRIS_LIKE))


def test_an_integer_above_2_53_keeps_its_own_rounding_beside_floats() -> None:
    big = [[2**53 + 1, 2**60 + 2**36 + 1, 0, 0]]  # float64 first would round these differently
    items = [(GOOD, json.dumps(GOOD)), (big, json.dumps(big))]
    assert_same(parse_batch(items, IRIS_LIKE, MAX_ROWS)[1], alone(big, json.dumps(big), IRIS_LIKE))


def test_alike_jobs_share_one_conversion() -> None:
    """The point of the batch path: 100 plain jobs cost one numpy conversion, each job a view of it."""
    items = [(GOOD, json.dumps(GOOD))] * 100
    results = parse_batch(items, IRIS_LIKE, MAX_ROWS)
    bases = {id(r["X"].base) for r in results if not isinstance(r, InputError)}
    assert len(bases) == 1 and results[0]["X"].base is not None

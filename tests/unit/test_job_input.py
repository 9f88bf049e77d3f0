"""job_input: the record keeps the arrays the API converted, byte for byte, and a worker reads back exactly
what `parse_input` gave the API; anything else stored there is refused with a reason (no Redis)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings

from jobqueue.job_input import (
    TENSORS_PREFIX,
    StoredBatch,
    as_data,
    as_model_takes,
    checked_payload,
    decode_tensors,
    encode_tensors,
    is_tensors,
    read_stored,
)
from jobqueue.model_signature import InputError, ModelSignature, parse_input, tensors_fit
from tests.unit.test_batch_conversion import MAX_ROWS, MODELS, alone, assert_same, batch, model

IRIS_LIKE = MODELS["float32 x4"]


@settings(max_examples=300, deadline=None)
@given(batch())
def test_what_a_worker_reads_back_is_what_the_api_converted(case: tuple[ModelSignature, list[tuple[Any, str]]]) -> None:
    signature, items = case
    kept: list[tuple[str, dict[str, np.ndarray]]] = []  # the batch's tensor records, and what each must read as
    for data, raw in items:
        expected = alone(data, raw, signature)
        try:
            payload = checked_payload(data, signature, MAX_ROWS, raw)
        except InputError as exc:
            assert_same(exc, expected)  # refused exactly as parse_input refuses it
            continue
        assert not isinstance(expected, InputError)
        if any(arr.dtype.kind == "O" for arr in expected.values()):
            assert orjson.loads(payload) == {"data": data}  # strings have no binary form: kept as JSON
            continue
        assert is_tensors(payload)
        stored = decode_tensors(payload)
        assert_same(stored, expected)  # dtypes, shapes and every value, exactly
        assert tensors_fit(stored, signature, MAX_ROWS)
        kept.append((payload, expected))
    # read as a worker reads a batch: each job's slice of whatever part holds it is its own values
    batch = read_stored([payload for payload, _ in kept], signature, MAX_ROWS)
    assert not batch.errors and not batch.to_convert
    for index, (_, expected) in enumerate(kept):
        assert rows_of(batch, index) == {name: arr.tolist() for name, arr in expected.items()}
        assert all(part.arrays[name].dtype == arr.dtype for part in batch.parts for name, arr in expected.items())


@pytest.mark.parametrize(
    "dtype, values",
    [
        ("int64", [[2**63 - 1, -(2**63)], [2**53 + 1, 0]]),
        ("uint64", [[2**64 - 1, 0]]),
        ("float16", [[65504.0, -0.0]]),
        ("float64", [[1e-310, 0.1]]),  # a subnormal keeps its bits
        ("bool", [[True, False]]),
        ("complex64", [[1 + 2j, -3j]]),
    ],
)
def test_every_binary_dtype_survives_the_round_trip(dtype: str, values: list[list[Any]]) -> None:
    arr = np.array(values, dtype=dtype)
    back = decode_tensors(encode_tensors({"x": arr}) or "")["x"]
    assert back.dtype == arr.dtype and back.shape == arr.shape and back.tobytes() == arr.tobytes()


def test_several_inputs_of_several_ranks_come_back_in_order() -> None:
    arrays = {"image": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "scale": np.array([[0.5], [2.0]], dtype=np.float32)}
    back = decode_tensors(encode_tensors(arrays) or "")
    assert list(back) == ["image", "scale"]
    for name, arr in arrays.items():
        assert back[name].tolist() == arr.tolist() and back[name].dtype == arr.dtype


def test_every_byte_value_passes_through_text_unchanged() -> None:
    """The body is latin-1 text: all 256 byte values, NUL and newline included, come back as they went."""
    arr = np.arange(256, dtype=np.uint8).reshape(1, 256)
    payload = encode_tensors({"b": arr}) or ""
    assert payload.count("\n") >= 2  # byte 10 in the body: only the first newline ends the header
    # as Redis and redis-py carry it: UTF-8 on the wire, decoded again
    assert decode_tensors(payload.encode().decode())["b"].tobytes() == arr.tobytes()


def test_a_string_input_keeps_its_json() -> None:
    text_model = MODELS["string x1"]
    assert encode_tensors(parse_input([["a"]], text_model, MAX_ROWS)) is None
    assert checked_payload([["a"]], text_model, MAX_ROWS) == json.dumps({"data": [["a"]]}, separators=(",", ":"))


@pytest.mark.parametrize(
    "payload",
    [
        TENSORS_PREFIX + '[["x","<f4",[1,4]]]',  # no newline: no body
        TENSORS_PREFIX + "not json\n",
        TENSORS_PREFIX + '{"x": 1}\n',  # a header that is not a list of triples
        TENSORS_PREFIX + '[["x","|O",[1]]]\n' + "\0" * 8,  # objects: pointers, never bytes from a record
        TENSORS_PREFIX + '[["x","<U2",[1]]]\n' + "\0" * 8,
        TENSORS_PREFIX + '[["x","<f4",[-1]]]\n' + "\0" * 8,  # -1 would mean "the rest" to numpy
        TENSORS_PREFIX + '[["x","<f4",[1.5]]]\n' + "\0" * 8,
        TENSORS_PREFIX + '[["x","<f4",[1,4]]]\n' + "\0" * 15,  # one byte short
        TENSORS_PREFIX + '[["x","<f4",[1,4]]]\n' + "\0" * 17,  # one byte over
        TENSORS_PREFIX + '[["x","<f4",[1,1]]]\n' + "\u20ac" * 4,  # not a byte: written by something else
    ],
    ids=[
        "no body",
        "header not JSON",
        "header not triples",
        "object dtype",
        "string dtype",
        "negative dim",
        "fractional dim",
        "short",
        "long",
        "not latin-1",
    ],  # fmt: skip
)
def test_a_record_not_in_the_layout_is_refused_with_a_reason(payload: str) -> None:
    with pytest.raises(ValueError, match="stored input is not a tensor record"):
        decode_tensors(payload)


def test_json_and_object_payloads_are_not_tensors() -> None:
    assert not is_tensors('{"data": [[1, 2, 3, 4]]}') and not is_tensors('{"input_url": "s3://b/k"}')


@pytest.mark.parametrize(
    "arrays",
    [
        {"X": np.zeros((1, 4), np.float64)},  # the model now takes float32
        {"X": np.zeros((1, 5), np.float32)},  # ... four values per row
        {"Y": np.zeros((1, 4), np.float32)},  # ... under another name
        {"X": np.zeros((1, 4), np.float32), "Z": np.zeros((1, 1), np.float32)},  # ... and one input
        {"X": np.zeros((MAX_ROWS + 1, 4), np.float32)},  # more rows than MAX_ROWS_PER_JOB
        {"X": np.zeros((0, 4), np.float32)},
        {"X": np.zeros(4, np.float32)},  # no batch dimension
    ],
    ids=["dtype", "width", "name", "extra input", "too many rows", "no rows", "rank"],
)
def test_tensors_that_no_longer_fit_the_model_go_back_through_parse_input(arrays: dict[str, np.ndarray]) -> None:
    assert not tensors_fit(arrays, IRIS_LIKE, MAX_ROWS)


def test_inputs_with_different_row_counts_do_not_fit() -> None:
    two = MODELS["two inputs"]
    arrays = {"a": np.zeros((2, 2), np.float32), "b": np.zeros((1, 1), np.int32)}
    assert not tensors_fit(arrays, two, MAX_ROWS)
    assert tensors_fit({**arrays, "a": np.zeros((1, 2), np.float32)}, two, MAX_ROWS)


def test_values_of_a_changed_model_are_checked_again_as_json() -> None:
    """A float64 tensor for a model that now takes float32: its values convert as JSON numbers would; a
    row of the old width is refused with parse_input's message, naming the field."""
    wider = model(("X", "float", "float32", ("n", 5)))
    stored = decode_tensors(encode_tensors({"X": np.array([[0.5, 2**24 + 1, 3, 4]], np.float64)}) or "")
    assert as_model_takes(stored, IRIS_LIKE, MAX_ROWS) is None
    converted = parse_input(as_data(stored, IRIS_LIKE), IRIS_LIKE, MAX_ROWS)["X"]
    assert converted.dtype == np.float32 and converted.tolist() == [[0.5, 2**24, 3, 4]]
    with pytest.raises(InputError, match="each row must have 5 values"):
        parse_input(as_data(stored, wider), wider, MAX_ROWS)


def test_a_one_input_model_takes_its_array_whatever_its_input_is_now_called() -> None:
    """As the list form a client sends: a new version that renamed its only input still runs the job."""
    renamed = model(("features", "float", "float32", ("n", 4)))
    stored = decode_tensors(encode_tensors({"X": np.array([[1, 2, 3, 4]], np.float32)}) or "")
    taken = as_model_takes(stored, renamed, MAX_ROWS)
    assert taken is not None and list(taken) == ["features"] and taken["features"].tolist() == [[1, 2, 3, 4]]
    as_float64 = {"X": np.array([[1, 2, 3, 4]], np.float64)}
    assert parse_input(as_data(as_float64, renamed), renamed, MAX_ROWS)["features"].dtype == np.float32
    two = MODELS["two inputs"]  # several inputs go by name
    both = {"a": np.zeros((1, 2), np.float32), "c": np.zeros((1, 1), np.int32)}
    assert as_model_takes(both, two, MAX_ROWS) is None
    with pytest.raises(InputError, match="expected exactly the model inputs"):
        parse_input(as_data(both, two), two, MAX_ROWS)


def test_an_array_that_is_a_strided_view_is_stored_in_c_order() -> None:
    full = np.arange(24, dtype=np.int32).reshape(4, 6)
    view = full[::2, ::3].T  # neither C- nor F-contiguous
    assert decode_tensors(encode_tensors({"v": view}) or "")["v"].tolist() == view.tolist()


def stored_jobs(*arrays_per_job: dict[str, np.ndarray]) -> list[str]:
    return [encode_tensors(arrays) or "" for arrays in arrays_per_job]


def rows_of(batch: StoredBatch, index: int) -> dict[str, list[Any]]:
    """Job `index`'s slice of the part holding it."""
    for part in batch.parts:
        if index in part.indices:
            start = sum(part.rows[: part.indices.index(index)])
            count = part.rows[part.indices.index(index)]
            return {name: arr[start : start + count].tolist() for name, arr in part.arrays.items()}
    raise AssertionError(f"job {index} is in no part")


def test_alike_records_are_read_together_and_each_job_gets_its_own_bytes() -> None:
    jobs = [{"X": np.array([[i, i + 0.5, -i, 2**24 + 1]], np.float32)} for i in range(50)]
    batch = read_stored(stored_jobs(*jobs), IRIS_LIKE, MAX_ROWS)
    assert len(batch.parts) == 1 and batch.parts[0].indices == list(range(50)) and not batch.errors
    for i, arrays in enumerate(jobs):
        assert rows_of(batch, i) == {"X": arrays["X"].tolist()}


def test_several_inputs_are_read_together_as_a_structured_view() -> None:
    two = MODELS["two inputs"]
    jobs = [{"a": np.array([[i, -i]] * 2, np.float32), "b": np.array([[2**31 - 1 - i]] * 2, np.int32)} for i in range(5)]
    batch = read_stored(stored_jobs(*jobs), two, MAX_ROWS)
    (part,) = batch.parts
    assert part.rows == [2] * 5 and all(arr.flags.c_contiguous for arr in part.arrays.values())
    for i, arrays in enumerate(jobs):
        assert rows_of(batch, i) == {name: arr.tolist() for name, arr in arrays.items()}


def test_a_damaged_record_among_alike_ones_fails_alone_and_a_changed_shape_is_converted() -> None:
    good = [{"X": np.array([[i, 1, 2, 3]], np.float32)} for i in range(4)]
    payloads = stored_jobs(*good)
    same_length = payloads[1][:-1] + "\u20ac"  # one character: not a byte
    shorter = payloads[2][:-2]
    other_dtype = encode_tensors({"X": np.array([[9, 8, 7, 6]], np.float64)}) or ""
    batch = read_stored([payloads[0], same_length, shorter, payloads[3], other_dtype, "tensors:no header"], IRIS_LIKE, MAX_ROWS)
    assert sorted(batch.errors) == [1, 2, 5]
    assert all("stored input is not a tensor record" in str(exc) for exc in batch.errors.values())
    assert batch.to_convert == {4: [[9.0, 8.0, 7.0, 6.0]]}
    assert rows_of(batch, 0) == {"X": good[0]["X"].tolist()} and rows_of(batch, 3) == {"X": good[3]["X"].tolist()}


def test_records_with_different_row_counts_or_widths_form_their_own_parts() -> None:
    wide = model(("d", "double", "float64", ("n", "w")))
    jobs = [{"d": np.ones((1, 3))}, {"d": np.ones((2, 3))}, {"d": np.ones((1, 5))}, {"d": np.ones((1, 3)) * 2}]
    batch = read_stored(stored_jobs(*jobs), wide, MAX_ROWS)
    assert sorted(sorted(part.indices) for part in batch.parts) == [[0, 3], [1], [2]]
    for i, arrays in enumerate(jobs):
        assert rows_of(batch, i) == {"d": arrays["d"].tolist()}

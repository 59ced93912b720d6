"""Every V2 datatype through the `identity` model (one Identity node per type:
OUT_<T> = IN_<T>), over HTTP-JSON, HTTP-binary and gRPC. What comes back must
be bit-for-bit what went in, so this checks each encoder and decoder on both
sides of the wire, including the extremes of each integer type, non-finite
floats, and BYTES elements that are empty or non-ASCII."""

import numpy as np
import pytest
import tritonclient.http as httpclient

from transports import Transport

INTEGER_TYPES = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}
FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
ALL_TYPES = ["BOOL", *INTEGER_TYPES, *FLOAT_TYPES, "BYTES"]

TEXT = ["", "a", "héllo", "日本語", "🙂 emoji", "tab\tand\nnewline", '"quoted" \\ back', "x" * 300]


def _object_array(values, shape):
    out = np.empty(len(values), dtype=np.object_)
    out[:] = values
    return out.reshape(shape)


def identity_inputs(rng, rows, columns, json_safe=False):
    """One input per datatype, `rows` x `columns` (an int, or a dict of
    columns by datatype), from the generator's own values. With `json_safe`,
    floats are finite. BYTES are UTF-8 text without NUL either way: ONNX
    string tensors hold nothing else (test_errors checks the refusal)."""
    cols = columns if isinstance(columns, dict) else {t: columns for t in ALL_TYPES}
    arrays = {}
    for datatype in ALL_TYPES:
        shape = (rows, cols[datatype])
        size = rows * cols[datatype]
        if datatype == "BOOL":
            array = rng.integers(0, 2, size=shape).astype(bool)
        elif datatype in INTEGER_TYPES:
            dtype = INTEGER_TYPES[datatype]
            info = np.iinfo(dtype)
            array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
            # The extremes of the type, where a wrong width or sign shows.
            flat = array.reshape(-1)
            flat[: min(2, size)] = [info.min, info.max][: min(2, size)]
        elif datatype in FLOAT_TYPES:
            dtype = FLOAT_TYPES[datatype]
            info = np.finfo(dtype)
            array = (rng.standard_normal(size=shape) * 1000).astype(dtype)
            flat = array.reshape(-1)
            special = [info.max, info.tiny, -0.0, info.min]
            if not json_safe:
                special += [np.nan, np.inf, -np.inf]
            n = min(len(special), size)
            flat[:n] = np.array(special[:n], dtype=dtype)
        else:
            pool = [t.encode() for t in TEXT]
            picks = rng.integers(0, len(pool), size=size)
            array = _object_array([pool[i] for i in picks], shape)
            # Always one empty element.
            array.reshape(-1)[0] = b""
        arrays[f"IN_{datatype}"] = array
    return arrays


def output_datatypes():
    return {f"OUT_{t}": t for t in ALL_TYPES}


def check_identity(result, arrays):
    assert sorted(result.outputs) == sorted(f"OUT_{t}" for t in ALL_TYPES)
    for name, sent in arrays.items():
        got = result.outputs["OUT_" + name[3:]]
        assert got.shape == sent.shape, name
        if sent.dtype == np.object_:
            assert got.dtype == np.object_, name
            assert got.tolist() == sent.tolist(), name
        else:
            assert got.dtype == sent.dtype, f"{name}: {got.dtype} != {sent.dtype}"
            # Bit-exact: -0.0 stays -0.0, NaN stays NaN.
            np.testing.assert_array_equal(got.view(np.uint8), sent.view(np.uint8), err_msg=name)


@pytest.mark.parametrize("rows,columns", [(1, 1), (2, 5), (4, 33)])
def test_every_datatype_round_trips(transport, rng, rows, columns):
    arrays = identity_inputs(rng, rows, columns, json_safe=transport.name == "http-json")
    names = [f"OUT_{t}" for t in ALL_TYPES]
    result = transport.infer("identity", arrays, outputs=names, output_datatypes=output_datatypes())
    check_identity(result, arrays)


def test_each_input_may_have_its_own_width(transport, rng):
    columns = {t: 1 + i for i, t in enumerate(ALL_TYPES)}
    arrays = identity_inputs(rng, 3, columns, json_safe=transport.name == "http-json")
    result = transport.infer(
        "identity", arrays, outputs=[f"OUT_{t}" for t in ALL_TYPES], output_datatypes=output_datatypes()
    )
    check_identity(result, arrays)


def test_non_finite_floats_come_back_from_json_as_text_numpy_reads(http_client, rng):
    # JSON has no NaN or Infinity: the server writes "NaN", "Infinity" and
    # "-Infinity", which tritonclient's numpy conversion reads back. Inputs go
    # in binary (tritonclient would write invalid JSON for them).
    arrays = identity_inputs(rng, 1, 8)
    for t in ("FP32", "FP64"):
        arrays[f"IN_{t}"][0, :3] = [np.nan, np.inf, -np.inf]
    arrays["IN_BYTES"] = _object_array([b"ok"] * 8, (1, 8))
    transport = Transport("http-binary", http_client)
    inputs = transport.make_inputs(arrays)
    outputs = [httpclient.InferRequestedOutput(f"OUT_{t}", binary_data=t == "FP16") for t in ALL_TYPES]
    result = http_client.infer("identity", inputs, outputs=outputs)
    for t in ("FP32", "FP64"):
        got = result.as_numpy(f"OUT_{t}")
        np.testing.assert_array_equal(got, arrays[f"IN_{t}"])
        assert got.dtype == FLOAT_TYPES[t]

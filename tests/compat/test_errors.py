"""The errors Triton's clients see: the HTTP status or gRPC code, and a message
that names what was wrong. Each case runs over all three transports."""

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from transports import Transport

# Triton's mapping: NOT_FOUND -> 404, INVALID_ARGUMENT -> 400, UNAVAILABLE -> 503.
HTTP_STATUS = {"NOT_FOUND": "404", "INVALID_ARGUMENT": "400", "UNAVAILABLE": "503", "RESOURCE_EXHAUSTED": "413"}


def expect_error(transport, code, *words, **infer):
    with pytest.raises(InferenceServerException) as raised:
        transport.infer(**infer)
    error = raised.value
    expected = HTTP_STATUS[code] if transport.is_http else f"StatusCode.{code}"
    assert error.status() == expected, f"{error.status()}: {error.message()}"
    message = error.message() or ""
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def mlp_input(rng, shape=(1, 64), dtype=np.float32):
    return (rng.standard_normal(shape) * 10).astype(dtype)


def test_unknown_model_is_not_found(transport, rng):
    expect_error(
        transport,
        "NOT_FOUND",
        "no_such_model",
        model="no_such_model",
        arrays={"input": mlp_input(rng)},
        outputs=["output"],
    )


def test_unknown_version_is_not_found(transport, rng):
    expect_error(transport, "NOT_FOUND", "7", "mlp", model="mlp", arrays={"input": mlp_input(rng)}, model_version="7")


def test_unknown_model_metadata_is_not_found(http_client, grpc_client):
    for client, status in ((http_client, "404"), (grpc_client, "StatusCode.NOT_FOUND")):
        for call in (client.get_model_metadata, client.get_model_config, client.get_inference_statistics):
            with pytest.raises(InferenceServerException) as raised:
                call("no_such_model")
            assert raised.value.status() == status, call
            assert "no_such_model" in raised.value.message()
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_metadata("mlp", "9")
        assert raised.value.status() == status
        assert "9" in raised.value.message()


def test_wrong_datatype_names_the_input_and_both_types(transport, rng):
    expect_error(
        transport,
        "INVALID_ARGUMENT",
        "input",
        "FP64",
        "FP32",
        model="mlp",
        arrays={"input": mlp_input(rng, dtype=np.float64)},
    )


def test_wrong_shape_names_the_input(transport, rng):
    message = expect_error(
        transport, "INVALID_ARGUMENT", "input", model="mlp", arrays={"input": mlp_input(rng, (2, 63))}
    )
    # Both what was sent and what the model expects, as the gateway words it.
    assert "unexpected shape [2, 63]" in message and "expects [-1, 64]" in message, message


def test_wrong_rank_names_the_input(transport, rng):
    expect_error(transport, "INVALID_ARGUMENT", "input", model="mlp", arrays={"input": mlp_input(rng, (64,))})


def test_missing_input_is_named(transport, rng):
    only_one = {"INPUT0": rng.integers(0, 10, size=(1, 16), dtype=np.int32)}
    expect_error(transport, "INVALID_ARGUMENT", "INPUT1", model="simple", arrays=only_one)


def test_unexpected_input_is_named(transport, rng):
    arrays = {"input": mlp_input(rng), "extra": mlp_input(rng)}
    expect_error(transport, "INVALID_ARGUMENT", "extra", model="mlp", arrays=arrays)


def test_unknown_output_is_named(transport, rng):
    expect_error(
        transport,
        "INVALID_ARGUMENT",
        "no_such_output",
        model="mlp",
        arrays={"input": mlp_input(rng)},
        outputs=["no_such_output"],
    )


def test_batch_over_max_batch_size_is_refused(transport, rng):
    arrays = {n: rng.integers(0, 10, size=(9, 16), dtype=np.int32) for n in ("INPUT0", "INPUT1")}
    message = expect_error(transport, "INVALID_ARGUMENT", model="simple", arrays=arrays)
    assert "9" in message and "8" in message, message


def test_inputs_that_disagree_on_the_batch_size_are_refused(transport, rng):
    arrays = {
        "INPUT0": rng.integers(0, 10, size=(2, 16), dtype=np.int32),
        "INPUT1": rng.integers(0, 10, size=(3, 16), dtype=np.int32),
    }
    expect_error(transport, "INVALID_ARGUMENT", "INPUT0", "INPUT1", model="simple", arrays=arrays)


def test_bytes_the_onnx_model_cannot_hold_are_refused(rng, http_client, grpc_client):
    # ONNX string tensors are NUL-terminated UTF-8: anything else is the
    # client's mistake, told as such (binary transports only; JSON is text).
    from test_datatypes import _object_array, identity_inputs

    for name, client in (("http-binary", http_client), ("grpc", grpc_client)):
        for element in (b"nul\x00inside", b"\xff\xfe"):
            arrays = identity_inputs(rng, 1, 2)
            arrays["IN_BYTES"] = _object_array([b"fine", element], (1, 2))
            expect_error(Transport(name, client), "INVALID_ARGUMENT", "BYTES", model="identity", arrays=arrays)


def test_fp16_in_json_is_refused_with_the_reason(http_client, rng):
    from test_datatypes import identity_inputs

    arrays = identity_inputs(rng, 1, 2, json_safe=True)
    transport = Transport("http-json", http_client)
    inputs = transport.make_inputs(arrays)
    fp16 = next(t for t in inputs if t.name() == "IN_FP16")
    fp16.set_data_from_numpy(arrays["IN_FP16"], binary_data=False)
    with pytest.raises(InferenceServerException) as raised:
        http_client.infer("identity", inputs)
    assert raised.value.status() == "400"
    assert "IN_FP16" in raised.value.message() and "binary" in raised.value.message()


def test_a_bad_request_does_not_disturb_the_next_one(transport, rng, reference):
    expect_error(transport, "INVALID_ARGUMENT", model="mlp", arrays={"input": mlp_input(rng, (1, 65))})
    x = mlp_input(rng, (2, 64))
    result = transport.infer("mlp", {"input": x})
    np.testing.assert_allclose(
        result.outputs["output"], reference.run("mlp", {"input": x})["output"], rtol=1e-5, atol=1e-6
    )


def test_shared_memory_is_refused_with_the_reason_over_both_protocols(http_client, grpc_client):
    # The README lists shared memory as not supported: registration is refused, and an input that
    # names a region is refused by name rather than read as empty data.
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    for client in (http_client, grpc_client):
        with pytest.raises(InferenceServerException):
            client.register_system_shared_memory("region", "/modelgate-test", 256)
    for client, module, code in ((http_client, httpclient, "400"), (grpc_client, grpcclient, "StatusCode.INVALID_ARGUMENT")):
        named = module.InferInput("input", [1, 64], "FP32")
        named.set_shared_memory("region", 256)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("mlp", [named])
        assert raised.value.status() == code, f"{raised.value.status()}: {raised.value.message()}"
        assert "shared_memory_region" in (raised.value.message() or ""), raised.value.message()

"""Inference through tritonclient, compared with onnxruntime in Python: both
models at several batch sizes over every transport, output selection, request
ids, async and streaming calls, compression, and a gRPC message over 4 MiB."""

import gzip
import os
import http.client
import json
import queue
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from test_datatypes import identity_inputs
from transports import Transport

# Float outputs may differ from in-process onnxruntime in the last bits: the
# server batches requests together and may use other kernels.
RTOL, ATOL = 1e-5, 1e-6

# How long a test waits for an async or streamed reply before failing.
REPLY_TIMEOUT_S = 30


def mlp_input(rng, rows):
    return rng.standard_normal((rows, 64), dtype=np.float32)


def simple_inputs(rng, rows):
    return {
        "INPUT0": rng.integers(-(2**20), 2**20, size=(rows, 16), dtype=np.int32),
        "INPUT1": rng.integers(-(2**20), 2**20, size=(rows, 16), dtype=np.int32),
    }


@pytest.mark.parametrize("rows", [1, 3, 17, 64])
def test_mlp_matches_onnxruntime(transport, reference, rng, rows):
    x = mlp_input(rng, rows)
    result = transport.infer("mlp", {"input": x})
    expected = reference.run("mlp", {"input": x})["output"]
    assert list(result.outputs) == ["output"]
    got = result.outputs["output"]
    assert got.dtype == np.float32 and got.shape == (rows, 10)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_simple_matches_onnxruntime_exactly(transport, reference, rng, rows):
    inputs = simple_inputs(rng, rows)
    result = transport.infer("simple", inputs)
    expected = reference.run("simple", inputs)
    assert sorted(result.outputs) == ["OUTPUT0", "OUTPUT1"]
    for name in ("OUTPUT0", "OUTPUT1"):
        assert result.outputs[name].dtype == np.int32
        np.testing.assert_array_equal(result.outputs[name], expected[name])
    # And what the model is for: sum and difference.
    np.testing.assert_array_equal(result.outputs["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])
    np.testing.assert_array_equal(result.outputs["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"])


def test_integer_overflow_wraps_like_onnxruntime(transport, reference):
    # INT32 extremes: the sum wraps in two's complement, as in the model.
    big = np.full((1, 16), np.iinfo(np.int32).max, dtype=np.int32)
    small = np.full((1, 16), np.iinfo(np.int32).min, dtype=np.int32)
    inputs = {"INPUT0": big, "INPUT1": np.concatenate([small[:, :8], big[:, 8:]], axis=1)}
    result = transport.infer("simple", inputs)
    expected = reference.run("simple", inputs)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(result.outputs[name], expected[name])


def test_explicit_version_serves_the_same_model(transport, reference, rng):
    x = mlp_input(rng, 2)
    result = transport.infer("mlp", {"input": x}, model_version="1")
    np.testing.assert_allclose(
        result.outputs["output"], reference.run("mlp", {"input": x})["output"], rtol=RTOL, atol=ATOL
    )
    version = result.response["model_version"] if transport.is_http else result.response.model_version
    name = result.response["model_name"] if transport.is_http else result.response.model_name
    assert (name, version) == ("mlp", "1")


@pytest.mark.parametrize("wanted", [["OUTPUT1"], ["OUTPUT0"], ["OUTPUT1", "OUTPUT0"]])
def test_requested_outputs_are_returned_alone_and_in_order(transport, reference, rng, wanted):
    inputs = simple_inputs(rng, 2)
    result = transport.infer("simple", inputs, outputs=wanted)
    assert list(result.outputs) == wanted
    expected = reference.run("simple", inputs)
    for name in wanted:
        np.testing.assert_array_equal(result.outputs[name], expected[name])


def test_binary_data_is_chosen_per_output_over_http(http_client, reference, rng):
    inputs = simple_inputs(rng, 3)
    infer_inputs = []
    for name, array in inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT32")
        # One input in JSON, one in binary, in the same request.
        tensor.set_data_from_numpy(array, binary_data=name == "INPUT1")
        infer_inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = http_client.infer("simple", infer_inputs, outputs=outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert by_name["OUTPUT0"]["parameters"]["binary_data_size"] == 3 * 16 * 4
    assert "data" not in by_name["OUTPUT0"]
    assert "data" in by_name["OUTPUT1"] and "parameters" not in by_name["OUTPUT1"]
    expected = reference.run("simple", inputs)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])


def test_request_id_is_echoed(transport, rng):
    request_id = f"compat-{transport.name}-{rng.integers(1 << 30)}"
    result = transport.infer("mlp", {"input": mlp_input(rng, 1)}, request_id=request_id)
    echoed = result.response.get("id") if transport.is_http else result.response.id
    assert echoed == request_id


def test_http_async_infer_runs_requests_together(http_client, reference, rng):
    batches = [mlp_input(rng, rows) for rows in (1, 2, 3, 4, 5, 6)]
    pending = []
    for x in batches:
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        pending.append(http_client.async_infer("mlp", [tensor], request_id=str(len(x))))
    for x, request in zip(batches, pending):
        result = request.get_result(timeout=REPLY_TIMEOUT_S)
        assert result.get_response()["id"] == str(len(x))
        expected = reference.run("mlp", {"input": x})["output"]
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=RTOL, atol=ATOL)


def grpc_input(name, array, datatype):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_grpc_async_infer_calls_back_for_every_request(grpc_client, reference, rng):
    replies = queue.Queue()
    batches = {f"async-{i}": mlp_input(rng, i + 1) for i in range(6)}
    for request_id, x in batches.items():
        grpc_client.async_infer(
            "mlp",
            [grpc_input("input", x, "FP32")],
            callback=lambda result, error, rid=request_id: replies.put((rid, result, error)),
            request_id=request_id,
        )
    for _ in batches:
        request_id, result, error = replies.get(timeout=REPLY_TIMEOUT_S)
        assert error is None, error
        assert result.get_response().id == request_id
        expected = reference.run("mlp", {"input": batches[request_id]})["output"]
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=RTOL, atol=ATOL)


def test_grpc_stream_answers_every_request_by_id(grpc_url, reference, rng):
    # A client of its own: a tritonclient client holds at most one stream.
    client = grpcclient.InferenceServerClient(grpc_url)
    replies = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        sent = {}
        for i in range(12):
            if i % 2:
                model, inputs = "simple", simple_inputs(rng, 1 + i % 8)
                tensors = [grpc_input(n, a, "INT32") for n, a in inputs.items()]
            else:
                model, inputs = "mlp", {"input": mlp_input(rng, 1 + i)}
                tensors = [grpc_input("input", inputs["input"], "FP32")]
            request_id = f"stream-{i}"
            sent[request_id] = (model, inputs)
            client.async_stream_infer(model, tensors, request_id=request_id)
        # A bad request in the middle gets an error on the stream, and the
        # stream goes on serving the requests after it.
        bad = grpc_input("input", np.zeros((1, 63), dtype=np.float32), "FP32")
        client.async_stream_infer("mlp", [bad], request_id="stream-bad")
        last = mlp_input(rng, 2)
        sent["stream-last"] = ("mlp", {"input": last})
        client.async_stream_infer("mlp", [grpc_input("input", last, "FP32")], request_id="stream-last")

        errors = []
        for _ in range(len(sent) + 1):
            result, error = replies.get(timeout=REPLY_TIMEOUT_S)
            if error is not None:
                errors.append(error)
                continue
            request_id = result.get_response().id
            model, inputs = sent.pop(request_id)
            expected = reference.run(model, inputs)
            for name, want in expected.items():
                got = result.as_numpy(name)
                if want.dtype == np.float32:
                    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
                else:
                    np.testing.assert_array_equal(got, want)
        assert sent == {}, f"no reply for {sorted(sent)}"
        assert len(errors) == 1
        assert "input" in errors[0].message() and "63" in errors[0].message(), errors[0].message()
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_request_compression(http_client, reference, rng, algorithm):
    x = mlp_input(rng, 5)
    for binary in (True, False):
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = http_client.infer(
            "mlp",
            [tensor],
            outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)],
            request_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(
            result.as_numpy("output"), reference.run("mlp", {"input": x})["output"], rtol=RTOL, atol=ATOL
        )


def raw_infer(http_url, body, headers):
    """POSTs an infer request with http.client, to see the reply's headers and
    bytes as they came (tritonclient decompresses without saying)."""
    host, port = http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=REPLY_TIMEOUT_S)
    try:
        connection.request("POST", "/v2/models/mlp/infer", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_response_compression(http_client, http_url, reference, rng, algorithm):
    x = mlp_input(rng, 7)
    expected = reference.run("mlp", {"input": x})["output"]

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = http_client.infer("mlp", [tensor], response_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=RTOL, atol=ATOL)

    # The same request by hand: the reply must really be compressed.
    body = json.dumps({"inputs": [{"name": "input", "shape": [7, 64], "datatype": "FP32", "data": x.ravel().tolist()}]})
    status, headers, payload = raw_infer(
        http_url, body, {"Content-Type": "application/json", "Accept-Encoding": algorithm}
    )
    assert status == 200, payload
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers.get("content-encoding") == algorithm
    plain = gzip.decompress(payload) if algorithm == "gzip" else zlib.decompress(payload)
    output = json.loads(plain)["outputs"][0]
    np.testing.assert_allclose(
        np.array(output["data"], dtype=np.float32).reshape(7, 10), expected, rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_grpc_compression(grpc_client, reference, rng, algorithm):
    inputs = simple_inputs(rng, 4)
    tensors = [grpc_input(n, a, "INT32") for n, a in inputs.items()]
    result = grpc_client.infer("simple", tensors, compression_algorithm=algorithm)
    expected = reference.run("simple", inputs)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])


@pytest.mark.parametrize("name", ["grpc", "http-binary"])
def test_messages_over_4_mib_are_accepted(http_client, grpc_client, rng, name):
    # tonic refuses gRPC messages over 4 MiB unless told otherwise; Triton
    # takes up to 2 GiB, and tritonclient sends up to that. 6 MB of FP32 in
    # one request, and the same back (HTTP too, for comparison).
    transport = Transport(name, grpc_client if name == "grpc" else http_client)
    arrays = identity_inputs(rng, rows=1, columns=2)
    arrays["IN_FP32"] = rng.standard_normal((1, 1_500_000), dtype=np.float32)
    result = transport.infer("identity", arrays)
    np.testing.assert_array_equal(result.outputs["OUT_FP32"], arrays["IN_FP32"])
    np.testing.assert_array_equal(result.outputs["OUT_INT64"], arrays["IN_INT64"])


@pytest.mark.parametrize("name", ["grpc", "http-binary"])
def test_messages_over_the_configured_limit_are_refused(http_client, grpc_client, rng, name):
    limit = int(os.environ.get("MODELGATE_MAX_INPUT_SIZE", 0))
    if not limit:
        pytest.skip("MODELGATE_MAX_INPUT_SIZE (the server's --max-input-size) is not set")
    transport = Transport(name, grpc_client if name == "grpc" else http_client)
    arrays = identity_inputs(rng, rows=1, columns=2)
    arrays["IN_UINT8"] = rng.integers(0, 255, size=(1, limit + 1024), dtype=np.uint8)
    with pytest.raises(InferenceServerException) as raised:
        transport.infer("identity", arrays)
    expected = "StatusCode.RESOURCE_EXHAUSTED" if name == "grpc" else "413"
    assert raised.value.status() == expected, raised.value.message()
    # And the connection still serves.
    assert transport.client.is_model_ready("identity")

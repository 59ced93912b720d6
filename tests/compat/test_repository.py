"""The model repository extension over both protocols: the index, and unload
then load of `simple`, crossing protocols (unload over one, load over the
other). Every test leaves `simple` loaded, even when it fails."""

import json
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from transports import Transport

# Load and unload return when done; this only bounds the wait for the index to agree.
SETTLE_S = 10


@pytest.fixture
def simple_restored(http_client):
    yield
    if not http_client.is_model_ready("simple"):
        http_client.load_model("simple")
    assert http_client.is_model_ready("simple")


def index_by_name(rows):
    return {row["name"]: row for row in rows}


def http_index(http_client):
    return index_by_name(http_client.get_model_repository_index())


def grpc_index(grpc_client):
    rows = grpc_client.get_model_repository_index().models
    return index_by_name([{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in rows])


def wait_for_state(read, state):
    deadline = time.monotonic() + SETTLE_S
    while True:
        row = read()["simple"]
        if row.get("state") == state or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def test_index_lists_every_model_with_its_state(http_client, grpc_client, torch_built):
    for index in (http_index(http_client), grpc_index(grpc_client)):
        assert {"identity", "mlp", "mlp_torch", "simple"} <= set(index)
        for name in ("identity", "mlp", "simple"):
            assert index[name]["state"] == "READY", index[name]
            assert index[name]["version"] == "1"
        if torch_built:
            assert index["mlp_torch"]["state"] == "READY", index["mlp_torch"]
        else:
            # README: an ONNX-only build lists mlp_torch as UNAVAILABLE, with the reason.
            assert index["mlp_torch"]["state"] == "UNAVAILABLE", index["mlp_torch"]
            assert "torch" in index["mlp_torch"]["reason"].lower(), index["mlp_torch"]


def test_index_of_ready_models_only(http_url, grpc_url):
    # tritonclient's HTTP index takes no `ready` flag: send it by hand.
    request = urllib.request.Request(f"http://{http_url}/v2/repository/index", data=b'{"ready": true}', method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        ready = index_by_name(json.loads(response.read()))
    assert {"identity", "mlp", "simple"} <= set(ready)
    assert all(row["state"] == "READY" for row in ready.values())
    # Nor does its gRPC one: call the generated stub that tritonclient ships.
    with grpc.insecure_channel(grpc_url) as channel:
        stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
        grpc_ready = stub.RepositoryIndex(grpcclient.service_pb2.RepositoryIndexRequest(ready=True), timeout=10)
    assert {m.name for m in grpc_ready.models} == set(ready)


def simple_inputs(rng):
    return {
        "INPUT0": rng.integers(0, 100, size=(2, 16), dtype=np.int32),
        "INPUT1": rng.integers(0, 100, size=(2, 16), dtype=np.int32),
    }


@pytest.mark.parametrize("unload_over,load_over", [("http", "grpc"), ("grpc", "http")])
def test_unload_then_load_again(http_client, grpc_client, rng, simple_restored, unload_over, load_over):
    clients = {"http": http_client, "grpc": grpc_client}
    clients[unload_over].unload_model("simple")

    for client in clients.values():
        assert not client.is_model_ready("simple")
    assert wait_for_state(lambda: http_index(http_client), "UNAVAILABLE")["state"] == "UNAVAILABLE"
    assert grpc_index(grpc_client)["simple"]["state"] == "UNAVAILABLE"
    # An unloaded model answers UNAVAILABLE (503), as Triton does.
    for name, status in (("http-binary", "503"), ("grpc", "StatusCode.UNAVAILABLE")):
        transport = Transport(name, clients["grpc" if name == "grpc" else "http"])
        with pytest.raises(InferenceServerException) as error:
            transport.infer("simple", simple_inputs(rng), outputs=["OUTPUT0"])
        assert error.value.status() == status
        assert "simple" in error.value.message()
    # The other models go on serving.
    assert http_client.is_model_ready("mlp")

    clients[load_over].load_model("simple")
    for client in clients.values():
        assert client.is_model_ready("simple")
    assert grpc_index(grpc_client)["simple"]["state"] == "READY"
    inputs = simple_inputs(rng)
    for name in ("http-binary", "grpc"):
        result = Transport(name, clients["grpc" if name == "grpc" else "http"]).infer("simple", inputs)
        np.testing.assert_array_equal(result.outputs["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])


def test_loading_a_loaded_model_again_keeps_it_serving(http_client, grpc_client, simple_restored):
    http_client.load_model("simple")
    grpc_client.load_model("simple")
    assert http_client.is_model_ready("simple")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_loading_an_unknown_model_is_not_found(http_client, grpc_client, protocol):
    client = http_client if protocol == "http" else grpc_client
    with pytest.raises(InferenceServerException) as error:
        client.load_model("no_such_model")
    assert error.value.status() == ("404" if protocol == "http" else "StatusCode.NOT_FOUND")
    assert "no_such_model" in error.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inline_model_files_are_refused(http_client, grpc_client, protocol):
    # Models load only from the repository the operator configured.
    client = http_client if protocol == "http" else grpc_client
    with pytest.raises(InferenceServerException) as error:
        client.load_model("simple", files={"file:1/model.onnx": b"not a model"})
    assert error.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert "file:1/model.onnx" in error.value.message()
    assert http_client.is_model_ready("simple")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inline_configs_are_refused(http_client, grpc_client, protocol):
    # README: loads carrying an inline config are refused with a clear error, and the model
    # keeps the config from its repository.
    client = http_client if protocol == "http" else grpc_client
    with pytest.raises(InferenceServerException) as error:
        client.load_model("simple", config='{"max_batch_size": 2}')
    assert error.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert "repository parameter 'config' is not accepted" in error.value.message()
    assert http_client.is_model_ready("simple")
    assert http_client.get_model_config("simple")["max_batch_size"] != 2

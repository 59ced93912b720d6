"""Health, server and model metadata, and model config, as tritonclient and
perf_analyzer read them (HTTP JSON and gRPC protobuf)."""

import pytest
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc.model_config_pb2 import DataType

# Every extension the server implements, and no other: perf_analyzer calls the
# statistics endpoint only because `statistics` is listed, and a client that
# sees e.g. `system_shared_memory` would try to use it. Each one is exercised
# by this suite (binary tensors: test_infer/test_datatypes; model_configuration:
# below; model_repository: test_repository; statistics: test_statistics).
IMPLEMENTED_EXTENSIONS = {"binary_tensor_data", "model_configuration", "model_repository", "statistics"}

SERVED = {"identity", "mlp", "simple"}


def test_server_is_live_and_ready_over_both_protocols(http_client, grpc_client):
    assert http_client.is_server_live()
    assert http_client.is_server_ready()
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()


def test_server_metadata_lists_exactly_the_implemented_extensions(http_client, grpc_client):
    http = http_client.get_server_metadata()
    grpc = grpc_client.get_server_metadata()
    assert http["name"] == grpc.name == "modelgate"
    assert http["version"] == grpc.version != ""
    assert set(http["extensions"]) == IMPLEMENTED_EXTENSIONS
    assert set(grpc.extensions) == IMPLEMENTED_EXTENSIONS
    assert len(http["extensions"]) == len(set(http["extensions"]))


@pytest.mark.parametrize("model", sorted(SERVED))
def test_models_are_ready_by_name_and_by_version(http_client, grpc_client, model):
    for client in (http_client, grpc_client):
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, "1")
        assert not client.is_model_ready(model, "2")
        assert not client.is_model_ready(model + "_missing")


def test_mlp_torch_is_ready_exactly_when_the_build_has_torch(http_client, grpc_client, torch_built):
    # mlp_torch needs the `torch` build; in an ONNX-only build it stays UNAVAILABLE (README).
    assert http_client.is_model_ready("mlp_torch") == torch_built
    assert grpc_client.is_model_ready("mlp_torch") == torch_built


def test_model_metadata_matches_between_protocols_and_versions(http_client, grpc_client):
    http = http_client.get_model_metadata("mlp")
    assert http == http_client.get_model_metadata("mlp", "1")
    assert http["name"] == "mlp"
    assert http["versions"] == ["1"]
    assert http["platform"] == "onnxruntime_onnx"
    assert http["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert http["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]

    grpc = grpc_client.get_model_metadata("mlp", "1")
    assert grpc.name == "mlp"
    assert list(grpc.versions) == ["1"]
    assert grpc.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc.inputs] == [("input", "FP32", [-1, 64])]
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc.outputs] == [("output", "FP32", [-1, 10])]


def test_simple_metadata_follows_its_config_pbtxt(http_client, grpc_client):
    http = http_client.get_model_metadata("simple")
    assert [(t["name"], t["datatype"], t["shape"]) for t in http["inputs"]] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert [t["name"] for t in http["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    grpc = grpc_client.get_model_metadata("simple")
    assert [t.name for t in grpc.inputs] == ["INPUT0", "INPUT1"]


# The fields perf_analyzer reads from the config before it sends a request:
# max_batch_size, input names (matched against the metadata), whether a
# dynamic or sequence batcher is there, and model_transaction_policy.decoupled.
EXPECTED_CONFIG = {
    "mlp": {"max_batch_size": 64, "input": [("input", "TYPE_FP32", [64])], "output": [("output", "TYPE_FP32", [10])]},
    "simple": {
        "max_batch_size": 8,
        "input": [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])],
        "output": [("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])],
    },
}


@pytest.mark.parametrize("model", sorted(EXPECTED_CONFIG))
def test_model_config_over_http_has_the_fields_perf_analyzer_reads(http_client, model):
    expected = EXPECTED_CONFIG[model]
    config = http_client.get_model_config(model)
    assert config == http_client.get_model_config(model, "1")
    assert config["name"] == model
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == expected["max_batch_size"]
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == expected["input"]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == expected["output"]
    assert "dynamic_batching" in config
    assert "sequence_batching" not in config
    assert "ensemble_scheduling" not in config
    assert config["model_transaction_policy"] == {"decoupled": False}
    # perf_analyzer parses these as JSON numbers, not strings.
    assert isinstance(config["max_batch_size"], int)
    assert isinstance(config["dynamic_batching"]["max_queue_delay_microseconds"], int)


@pytest.mark.parametrize("model", sorted(EXPECTED_CONFIG))
def test_model_config_over_grpc_is_the_same_message(http_client, grpc_client, model):
    expected = EXPECTED_CONFIG[model]
    config = grpc_client.get_model_config(model).config
    assert config.name == model
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == expected["max_batch_size"]
    assert [(i.name, DataType.Name(i.data_type), list(i.dims)) for i in config.input] == expected["input"]
    assert [(o.name, DataType.Name(o.data_type), list(o.dims)) for o in config.output] == expected["output"]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.HasField("model_transaction_policy")
    assert config.model_transaction_policy.decoupled is False
    # The gRPC message says what the HTTP JSON says.
    http = http_client.get_model_config(model)
    as_dict = MessageToDict(config, preserving_proto_field_name=True)
    assert as_dict["version_policy"] == http["version_policy"]
    assert [g["kind"] for g in as_dict["instance_group"]] == [g["kind"] for g in http["instance_group"]]


def test_identity_config_is_completed_from_the_model_file(http_client, grpc_client):
    # No config.pbtxt: inputs, outputs and batching come from the ONNX file.
    config = http_client.get_model_config("identity")
    # README: a model whose first dimensions are all dynamic gets max_batch_size 8.
    assert config["max_batch_size"] == 8
    assert len(config["input"]) == 13 and len(config["output"]) == 13
    assert {i["name"]: i["data_type"] for i in config["input"]}["IN_BYTES"] == "TYPE_STRING"
    assert all(i["dims"] == [-1] for i in config["input"])
    grpc = grpc_client.get_model_config("identity").config
    assert grpc.max_batch_size == config["max_batch_size"]
    assert [i.name for i in grpc.input] == [i["name"] for i in config["input"]]

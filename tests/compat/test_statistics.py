"""The statistics extension as perf_analyzer and tritonclient read it: counts
that move with the requests sent, over HTTP (JSON numbers) and gRPC."""

import numpy as np
import pytest

from transports import Transport

# pytest runs one test at a time and nothing else uses the server meanwhile,
# so the deltas below are exact.


def http_stats(client, model, version=""):
    stats = client.get_inference_statistics(model, version)["model_stats"]
    assert len(stats) == 1, stats
    return stats[0]


def grpc_stats(client, model, version=""):
    stats = client.get_inference_statistics(model, version).model_stats
    assert len(stats) == 1, stats
    s = stats[0]
    # Flatten the message into the shape of the HTTP JSON.
    durations = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    return {
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            d: {"count": getattr(s.inference_stats, d).count, "ns": getattr(s.inference_stats, d).ns} for d in durations
        },
        "batch_stats": [{"batch_size": b.batch_size} for b in s.batch_stats],
    }


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_counts_grow_with_the_requests_served(http_client, grpc_client, rng, protocol):
    client = http_client if protocol == "http" else grpc_client
    read = http_stats if protocol == "http" else grpc_stats
    transport = Transport("http-binary" if protocol == "http" else "grpc", client)

    before = read(client, "simple", "1")
    rows = [1, 3, 8, 2]
    for n in rows:
        inputs = {
            "INPUT0": rng.integers(-1000, 1000, size=(n, 16), dtype=np.int32),
            "INPUT1": rng.integers(-1000, 1000, size=(n, 16), dtype=np.int32),
        }
        transport.infer("simple", inputs)
    after = read(client, "simple", "1")

    assert (after["name"], after["version"]) == ("simple", "1")
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    # inference_count counts batch rows; execution_count counts model runs.
    assert inferences == sum(rows)
    assert 1 <= executions <= len(rows)
    assert after["execution_count"] <= after["inference_count"]
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == len(rows)
    assert stats["fail"]["count"] == old["fail"]["count"]
    for duration in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[duration]["ns"] > old[duration]["ns"], duration
    assert stats["compute_infer"]["count"] - old["compute_infer"]["count"] == executions
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    assert {8, 3} <= {b["batch_size"] for b in after["batch_stats"]}


def test_failed_requests_are_counted_as_failures(http_client, grpc_client):
    before = http_stats(http_client, "mlp")
    bad = Transport("grpc", grpc_client)
    with pytest.raises(Exception):
        bad.infer("mlp", {"input": np.zeros((1, 65), dtype=np.float32)})
    after = http_stats(http_client, "mlp")
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"]
    assert after["inference_count"] == before["inference_count"]


def test_http_counters_are_json_numbers(http_client, grpc_client):
    # perf_analyzer reads them with rapidjson's GetUint64: strings fail.
    stats = http_stats(http_client, "mlp")
    for key in ("last_inference", "inference_count", "execution_count"):
        assert type(stats[key]) is int, key
    for duration in stats["inference_stats"].values():
        assert type(duration["count"]) is int and type(duration["ns"]) is int


def test_every_ready_model_is_in_the_server_wide_statistics(http_client, grpc_client):
    http = {(s["name"], s["version"]) for s in http_client.get_inference_statistics()["model_stats"]}
    grpc = {(s.name, s.version) for s in grpc_client.get_inference_statistics().model_stats}
    assert {("identity", "1"), ("mlp", "1"), ("simple", "1")} <= http
    assert http == grpc


def test_both_protocols_report_the_same_numbers(http_client, grpc_client):
    http = http_stats(http_client, "mlp", "1")
    grpc = grpc_stats(grpc_client, "mlp", "1")
    for key in ("inference_count", "execution_count", "last_inference"):
        assert http[key] == grpc[key], key
    assert http["inference_stats"]["success"] == grpc["inference_stats"]["success"]

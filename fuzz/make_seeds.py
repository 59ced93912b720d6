#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*) from real inputs:
requests as the tests and tritonclient send them, the example models' config.pbtxt, the
canary config's route, registry file lists. Re-run after changing a format; libFuzzer adds
what it finds next to these (scripts/fuzz.sh), and tests/fuzz_corpus.rs replays them all."""
import json
import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data.encode() if isinstance(data, str) else data)


# --- V2 JSON ---
simple = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
                     {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}],
          "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": True}}]}
write("v2_json", "simple", json.dumps(simple))
write("v2_json", "mlp", json.dumps({"id": "r1", "parameters": {"timeout": 1000},
                                    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 4],
                                                "data": [[0.5, -1e-3, 3.4e38, 0], [1, 2, 3, 4]]}]}))
write("v2_json", "bytes", json.dumps({"inputs": [{"name": "IN_BYTES", "datatype": "BYTES", "shape": [3],
                                                  "data": ["a", "", "\u00e9\t"]}]}))
write("v2_json", "bool_fp16", json.dumps({"inputs": [
    {"name": "IN_BOOL", "datatype": "BOOL", "shape": [2], "data": [True, False]},
    {"name": "IN_FP64", "datatype": "FP64", "shape": [1], "data": ["NaN"]},
    {"name": "IN_UINT64", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615]}]}))
write("v2_json", "bad_shape", '{"inputs":[{"name":"x","datatype":"FP32","shape":[9223372036854775807,4],"data":[]}]}')
write("v2_json", "deep", "[" * 200 + "]" * 200)

# --- binary tensor extension: u16 LE header length, JSON header, binary sections ---
def binary(header, sections):
    h = json.dumps(header).encode()
    return struct.pack("<H", len(h)) + h + b"".join(sections)

write("binary_tensor", "simple", binary(
    {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
                {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}],
     "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]},
    [struct.pack("<16i", *range(16)), struct.pack("<16i", *([1] * 16))]))
write("binary_tensor", "bytes", binary(
    {"inputs": [{"name": "IN_BYTES", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}}]},
    [struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)]))
write("binary_tensor", "fp16", binary(
    {"inputs": [{"name": "IN_FP16", "datatype": "FP16", "shape": [1, 2], "parameters": {"binary_data_size": 4}}]},
    [b"\x00\x3c\x00\xbc"]))
write("binary_tensor", "short", b"\x40\x00{\"inputs\":[]}")

# --- ModelInferRequest (protobuf wire, hand-encoded) ---
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload

def s(num, text):
    return field(num, 2, text.encode() if isinstance(text, str) else text)

def packed(num, values, enc):
    return field(num, 2, b"".join(enc(v) for v in values))

def tensor(name, dtype, shape, contents=b""):
    t = s(1, name) + s(2, dtype) + packed(3, shape, varint)
    if contents:
        t += field(5, 2, contents)
    return t

raw_req = (s(1, "simple") + s(2, "1") + s(3, "id-7")
           + field(5, 2, tensor("INPUT0", "INT32", [1, 16])) + field(5, 2, tensor("INPUT1", "INT32", [1, 16]))
           + field(6, 2, s(1, "OUTPUT0"))
           + s(7, struct.pack("<16i", *range(16))) + s(7, struct.pack("<16i", *([2] * 16))))
write("grpc_infer", "raw", raw_req)
typed_req = (s(1, "simple")
             + field(5, 2, tensor("INPUT0", "INT32", [1, 4], packed(2, [1, 2, 3, 4], varint)))
             + field(5, 2, tensor("INPUT1", "FP32", [1, 2], packed(6, [1.0, -2.5], lambda f: struct.pack("<f", f)))))
write("grpc_infer", "typed", typed_req)
bytes_req = s(1, "identity") + field(5, 2, tensor("IN_BYTES", "BYTES", [3], s(8, "a") + s(8, "") + s(8, "xyz")))
write("grpc_infer", "bytes", bytes_req)
param = s(1, "timeout") + field(2, 2, field(2, 0, varint(250)))
write("grpc_infer", "params", s(1, "simple") + field(4, 2, param) + field(5, 2, tensor("INPUT0", "INT8", [2], packed(2, [300, 1], varint))))
write("grpc_infer", "empty_bytes", s(1, "m") + field(5, 2, tensor("x", "BYTES", [1], s(8, "") * 64)))

# --- config.pbtxt: the example models' and a few shapes the parser takes ---
for path in sorted((ROOT / "models").glob("*/config.pbtxt")):
    write("config_pbtxt", path.parent.name, path.read_text())
write("config_pbtxt", "batching", 'max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 8] }\n'
      'instance_group [ { count: 2 kind: KIND_CPU } ]\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]\n')
write("config_pbtxt", "nested", "a { b { c { d: 1 } } } # comment\n" + 'e: "\\x41\\n"\n')

# --- route specs: the canary config's route (TOML), and JSON as the admin API takes it ---
canary = (ROOT / "config" / "canary.toml").read_text()
route = canary[canary.index("[[routes]]"):]
route = re.sub(r"^\[\[routes\]\]\n", "", route, flags=re.M).replace("[[routes.", "[[").replace("[routes.", "[")
write("route_spec", "canary_toml", route)
write("route_spec", "weighted_toml", 'model = "mlp"\ntargets = [{ version = 1, weight = 90 }, { version = 2, weight = 10, max_in_flight = 8 }]\n'
      'rules = [{ header = "X-Variant", value = "b", version = 2 }]\nsticky_header = "X-User-Id"\nshadow = { version = 3, percent = 12.5 }\n')
write("route_spec", "weighted_json", json.dumps({"model": "mlp", "targets": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]}))
write("route_spec", "rollout_json", json.dumps({"model": "m", "targets": [{"version": 1}, {"version": 2}],
                                                "rollout": {"canary": 2, "step_weights": [5, 50, 100], "interval": "1s"}}))

# --- registry: a version's file list, digests, paths, names ---
digest = "sha256:" + "ab" * 32
write("registry_manifest", "files", json.dumps([{"path": "1/model.onnx", "size": 1536, "sha256": digest},
                                                 {"path": "config.pbtxt", "size": 10, "sha256": "sha256:" + "0" * 64}]))
write("registry_manifest", "digest", digest)
write("registry_manifest", "traversal", json.dumps([{"path": "../etc/passwd", "size": 1, "sha256": digest}]))
write("registry_manifest", "name", "fraud-model_v2.1")
write("registry_manifest", "bad_digest", "sha256:../" + "a" * 60)

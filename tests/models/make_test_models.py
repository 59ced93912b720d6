"""Build the ONNX models the routing and rollout tests use as bad canaries.

Why this script exists: a canary that breaks must be a real model served by real ONNX Runtime,
not a mock. Both models take and give what `models/mlp` does (`input` FP32 [batch, 64] ->
`output` FP32 [batch, 10]), so one request fits every version of a test model:

* failing.onnx  loads and warms up without complaint (the warm-up failure is only logged), then
                fails every request at run time: a Reshape of the input to [-1, 1000003] cannot
                succeed, since 64 * batch is never a multiple of that odd prime.
* flaky.onnx    fails the runs whose input holds a value over POISON (10.0), and answers the others
                as an MLP would: the Reshape's target shape is [-1, 64] or the impossible one,
                chosen by the data. A client that sends poison in 40 % of its requests meets a
                canary that fails 40 % of its inputs (a batch fails as a whole, as real ones do).
* bf16.onnx     `input` BF16 [batch, 4] -> `doubled` BF16 = 2 × input (Cast to FP32, Mul, Cast
                back: ONNX Runtime's CPU kernels have no BF16 Mul): the README's BF16 end to end.
* slow.onnx     a chain of --slow-layers MatMuls sharing one orthogonal [D, D] weight (so the
                file stays small and the values neither vanish nor blow up), then [D, 10].

Run it with the models venv made by scripts/setup.sh (the tests do this themselves):

    .venv/models/bin/python tests/models/make_test_models.py --out DIR [--slow-layers N] [--dim D]

It is deterministic (fixed seed), and it checks both models with ONNX Runtime before it exits.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SEED = 20251124
IMPOSSIBLE = 1_000_003  # an odd prime: 64 * batch is never a multiple of it
POISON = 10.0  # flaky.onnx fails a run whose input holds a value over this


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="modelgate/tests/models/make_test_models.py",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def io():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])
    return x, y


def build_failing() -> onnx.ModelProto:
    """output = input @ W + sum(reshape(input, [-1, IMPOSSIBLE])): the reshape fails every run."""
    rng = np.random.default_rng(SEED)
    x, y = io()
    weight = numpy_helper.from_array((rng.standard_normal((64, 10)) * 0.1).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, IMPOSSIBLE], dtype=np.int64), "impossible_shape")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["scores"]),
        helper.make_node("Reshape", ["input", "impossible_shape"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped", "axes"], ["total"], keepdims=1),
        helper.make_node("Add", ["scores", "total"], ["output"]),
    ]
    return finish(helper.make_graph(nodes, "failing", [x], [y], [weight, shape, axes]))


def build_flaky() -> onnx.ModelProto:
    """output = reshape(input, max(input) > POISON ? [-1, IMPOSSIBLE] : [-1, 64]) @ W."""
    rng = np.random.default_rng(SEED)
    x, y = io()
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 10)) * 0.1).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, IMPOSSIBLE], dtype=np.int64), "impossible_shape"),
        numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "plain_shape"),
        numpy_helper.from_array(np.array(POISON, dtype=np.float32), "poison"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["largest"], keepdims=0),
        helper.make_node("Greater", ["largest", "poison"], ["poisoned"]),
        helper.make_node("Where", ["poisoned", "impossible_shape", "plain_shape"], ["shape"]),
        helper.make_node("Reshape", ["input", "shape"], ["reshaped"]),
        helper.make_node("MatMul", ["reshaped", "w"], ["output"]),
    ]
    return finish(helper.make_graph(nodes, "flaky", [x], [y], inits))


def build_slow(layers: int, dim: int) -> onnx.ModelProto:
    """input @ W_in, then `layers` times @ Q (one shared orthogonal matrix), then @ W_out."""
    rng = np.random.default_rng(SEED)
    x, y = io()
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, dim)) / 8).astype(np.float32), "w_in"),
        numpy_helper.from_array(q.astype(np.float32), "q"),
        numpy_helper.from_array((rng.standard_normal((dim, 10)) / np.sqrt(dim)).astype(np.float32), "w_out"),
    ]
    nodes = [helper.make_node("MatMul", ["input", "w_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "q"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["output"]))
    return finish(helper.make_graph(nodes, "slow", [x], [y], inits))


def build_bf16() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.BFLOAT16, ["batch", 4])
    y = helper.make_tensor_value_info("doubled", TensorProto.BFLOAT16, ["batch", 4])
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [
        helper.make_node("Cast", ["input"], ["wide"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wide", "two"], ["twice"]),
        helper.make_node("Cast", ["twice"], ["doubled"], to=TensorProto.BFLOAT16),
    ]
    return finish(helper.make_graph(nodes, "bf16", [x], [y], [two]))


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # the failing model's errors are expected: keep them off stderr
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_failing(path: Path) -> None:
    s = session(path)
    for batch in (1, 2, 7, 64):
        try:
            s.run(None, {"input": np.ones((batch, 64), np.float32)})
        except Exception:  # noqa: BLE001 - any run-time failure is what we want
            continue
        sys.exit(f"{path}: batch {batch} ran, but every run must fail")


def check_flaky(path: Path) -> None:
    s = session(path)
    (out,) = s.run(None, {"input": np.ones((2, 64), np.float32)})
    assert out.shape == (2, 10), out.shape
    poisoned = np.ones((2, 64), np.float32)
    poisoned[1, 3] = POISON * 2
    try:
        s.run(None, {"input": poisoned})
    except Exception:  # noqa: BLE001 - any run-time failure is what we want
        return
    sys.exit(f"{path}: a poisoned input ran, but it must fail")


def check_slow(path: Path) -> float:
    s = session(path)
    x = np.ones((1, 64), np.float32)
    (out,) = s.run(None, {"input": x})
    assert out.shape == (1, 10) and np.isfinite(out).all(), out
    started = time.perf_counter()
    for _ in range(3):
        s.run(None, {"input": x})
    return (time.perf_counter() - started) / 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for failing.onnx and slow.onnx")
    parser.add_argument("--slow-layers", type=int, default=4000, help="MatMuls in the slow chain")
    parser.add_argument("--dim", type=int, default=512, help="width of the slow chain")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    failing, slow = args.out / "failing.onnx", args.out / "slow.onnx"
    onnx.save(build_failing(), failing)
    onnx.save(build_slow(args.slow_layers, args.dim), slow)
    onnx.save(build_flaky(), args.out / "flaky.onnx")
    onnx.save(build_bf16(), args.out / "bf16.onnx")
    session(args.out / "bf16.onnx")  # loads; numpy has no bfloat16 to run it with: the Rust test does
    check_failing(failing)
    check_flaky(args.out / "flaky.onnx")
    seconds = check_slow(slow)
    print(f"failing.onnx fails every run; flaky.onnx the poisoned ones; slow.onnx takes {seconds * 1000:.1f} ms per batch of 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())

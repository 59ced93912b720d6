"""Build the example ONNX models that modelgate's tests, examples and benchmarks serve.

Why this script exists: the model files in this folder are committed so that a checkout can
serve them right away, but binary files need a recipe. This is the recipe. It is deterministic
(fixed seed, pinned onnx/numpy in scripts/requirements-models.txt), so re-running it rewrites
the same bytes.

Run it with the models venv made by scripts/setup.sh:

    .venv/models/bin/python models/make_models.py [--out DIR] [--wide]

It writes a Triton-style model repository, `<out>/<name>/<version>/model.onnx` plus an
optional `<out>/<name>/config.pbtxt`, and then checks every model with ONNX Runtime:

* simple    Triton's classic example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32).
* mlp       FP32 MLP 64 -> 256 -> ReLU -> 256 -> ReLU -> 10. Its config has no inputs/outputs,
            so the server must read them from the model.
* identity  one Identity per V2 datatype that ONNX Runtime supports, BYTES included, and no
            config.pbtxt at all.
* mlp_wide  (only with --wide) FP32 MLP 64 -> 1024 -> ReLU -> 1024 -> ReLU -> 10, for
            compute-heavy benchmarks. Not committed (4.3 MB).
* drift16   (only with --drift) the drift harness's model (load-tests/drift/through_gateway.py):
            INPUT0 FP32 [batch, 16] (16 numeric features) and CAT INT64 [batch, 1] (one
            categorical feature); OUTPUT0 = INPUT0 @ w FP32 [batch, 1], OUTPUT1 = CAT. Not
            committed: the harness builds it into its own model repository.

`--only NAME` (repeatable) builds just those models.

See models/README.md for the table of inputs and outputs.
"""

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR version 8 is the one that goes with opset 17 (onnx 1.12); onnxruntime 1.31 reads it, and so
# does any other runtime recent enough for opset 17.
IR_VERSION = 8
SEED = 20251123
VERSION = "1"  # every model has a single version folder, "1"
DEFAULT_OUT = Path(__file__).resolve().parent

# KServe V2 datatype -> (ONNX element type, numpy dtype) for the identity model. BF16 is left
# out: numpy has no bfloat16, so clients and tests could not produce or check it easily.
IDENTITY_TYPES = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),  # ONNX string tensor
}

# ---------------------------------------------------------------------------------------------
# Model builders. Each returns a checked onnx.ModelProto.


def finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph into a model with our opset and IR version, and validate it."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="modelgate/models/make_models.py",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_simple() -> onnx.ModelProto:
    """INT32 add/sub of two [batch, 16] tensors, as in Triton's `simple` example."""
    dims = ["batch", 16]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, dims) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, dims) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
    ]
    return finish_model(helper.make_graph(nodes, "simple", inputs, outputs))


def random_f32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal(0, 1) * 0.1 in float32: small enough that activations stay in a sane range."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)


def build_mlp(name: str, sizes: list[int]) -> onnx.ModelProto:
    """FP32 MLP: `input` [batch, sizes[0]] -> (MatMul + Add, ReLU between layers) -> `output`.

    Layer i has initializers `fc{i}.weight` of shape [in, out] (so y = x @ W + b) and
    `fc{i}.bias` of shape [out]. A fresh generator per model keeps `mlp` independent of --wide.
    """
    rng = np.random.default_rng(SEED)
    nodes, initializers = [], []
    current = "input"
    layer_count = len(sizes) - 1
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
        weight, bias = f"fc{i}.weight", f"fc{i}.bias"
        initializers.append(numpy_helper.from_array(random_f32(rng, (fan_in, fan_out)), weight))
        initializers.append(numpy_helper.from_array(random_f32(rng, (fan_out,)), bias))
        last = i == layer_count
        product, summed = f"fc{i}.matmul", "output" if last else f"fc{i}.add"
        nodes.append(helper.make_node("MatMul", [current, weight], [product], name=product))
        nodes.append(helper.make_node("Add", [product, bias], [summed], name=f"fc{i}.add"))
        current = summed
        if not last:
            current = f"relu{i}"
            nodes.append(helper.make_node("Relu", [summed], [current], name=current))

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=initializers,
    )
    return finish_model(graph)


def build_identity() -> onnx.ModelProto:
    """One Identity per datatype: IN_<TYPE> [batch, n] -> OUT_<TYPE> [batch, n]."""
    inputs, outputs, nodes = [], [], []
    for v2_type, (onnx_type, _) in IDENTITY_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"IN_{v2_type}", onnx_type, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{v2_type}", onnx_type, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"IN_{v2_type}"], [f"OUT_{v2_type}"],
                                      name=f"identity_{v2_type.lower()}"))
    return finish_model(helper.make_graph(nodes, "identity", inputs, outputs))


def build_drift16() -> onnx.ModelProto:
    """A tiny linear model with 16 numeric features and one integer category per row.

    Every input is used (ONNX Runtime prunes unused inputs), and the outputs are small so that
    the gateway's profiler has little else to do than the inputs the harness checks.
    """
    weight = np.full((16, 1), 1.0 / 16, dtype=np.float32)
    inputs = [
        helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16]),
        helper.make_tensor_value_info("CAT", TensorProto.INT64, ["batch", 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("OUTPUT1", TensorProto.INT64, ["batch", 1]),
    ]
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "w"], ["OUTPUT0"], name="mean"),
        helper.make_node("Identity", ["CAT"], ["OUTPUT1"], name="category"),
    ]
    graph = helper.make_graph(nodes, "drift16", inputs, outputs, initializer=[numpy_helper.from_array(weight, "w")])
    return finish_model(graph)


# ---------------------------------------------------------------------------------------------
# Triton model configurations (text protobuf). Absent for `identity` on purpose.

SIMPLE_CONFIG = """\
# Triton's classic "simple" example, served from model.onnx.
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

MLP_CONFIG = """\
# Inputs and outputs are omitted on purpose: the server reads them from model.onnx.
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching {
  max_queue_delay_microseconds: 0
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

MLP_WIDE_CONFIG = """\
# Compute-heavy variant of "mlp" for benchmarks; inputs and outputs come from model.onnx.
name: "mlp_wide"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

DRIFT16_CONFIG = """\
# The drift harness's model (load-tests/drift/through_gateway.py): 16 numeric features, one category.
name: "drift16"
platform: "onnxruntime_onnx"
max_batch_size: 1024
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "CAT"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 1 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

# ---------------------------------------------------------------------------------------------
# Checks with ONNX Runtime: load each written file, run batch 1 and 7, compare with numpy.


def open_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_simple(path: Path) -> None:
    session = open_session(path)
    rng = np.random.default_rng(1)
    for batch in (1, 7):
        a = rng.integers(-1000, 1000, (batch, 16), dtype=np.int32)
        b = rng.integers(-1000, 1000, (batch, 16), dtype=np.int32)
        out0, out1 = session.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
        assert out0.dtype == np.int32 and out0.shape == (batch, 16)
        assert np.array_equal(out0, a + b) and np.array_equal(out1, a - b)


def mlp_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The same MLP in numpy, using the weights stored in the model."""
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    layer_count = len(weights) // 2
    for i in range(1, layer_count + 1):
        x = x @ weights[f"fc{i}.weight"] + weights[f"fc{i}.bias"]
        if i < layer_count:
            x = np.maximum(x, 0)
    return x


def check_mlp(path: Path) -> None:
    model = onnx.load(str(path))
    session = open_session(path)
    width_in = session.get_inputs()[0].shape[1]
    rng = np.random.default_rng(2)
    for batch in (1, 7):
        x = rng.standard_normal((batch, width_in), dtype=np.float32)
        (y,) = session.run(["output"], {"input": x})
        assert y.dtype == np.float32 and y.shape == (batch, 10)
        assert np.all(np.isfinite(y)) and np.any(y != 0)
        np.testing.assert_allclose(y, mlp_reference(model, x), rtol=1e-4, atol=1e-5)


def identity_sample(
    v2_type: str, dtype: type, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """A tensor of `shape` with values that exercise the type (negatives, extremes, text)."""
    count = shape[0] * shape[1]
    if v2_type == "BYTES":
        words = ["", "a", "modelgate", "naïve ✓", "tab\tand\nnewline", "0123456789" * 5]
        return np.array([words[i % len(words)] for i in range(count)], dtype=object).reshape(shape)
    if v2_type == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        values.flat[0] = info.min
        values.flat[-1] = info.max
        return values
    return (rng.standard_normal(shape) * 1000).astype(dtype)


def check_identity(path: Path) -> None:
    session = open_session(path)
    names = {i.name for i in session.get_inputs()}
    assert names == {f"IN_{t}" for t in IDENTITY_TYPES}, names
    rng = np.random.default_rng(3)
    for batch in (1, 7):
        # A different second dimension per input: "n" is only a name, not a constraint.
        feeds = {
            f"IN_{t}": identity_sample(t, dtype, (batch, 2 + i % 5), rng)
            for i, (t, (_, dtype)) in enumerate(IDENTITY_TYPES.items())
        }
        results = session.run([f"OUT_{t}" for t in IDENTITY_TYPES], feeds)
        for t, got in zip(IDENTITY_TYPES, results, strict=True):
            sent = feeds[f"IN_{t}"]
            assert got.shape == sent.shape, (t, got.shape, sent.shape)
            assert got.dtype == sent.dtype, (t, got.dtype, sent.dtype)
            assert np.array_equal(got, sent), t


def check_drift16(path: Path) -> None:
    session = open_session(path)
    rng = np.random.default_rng(4)
    for batch in (1, 7):
        x = rng.standard_normal((batch, 16), dtype=np.float32)
        cat = rng.integers(0, 5, (batch, 1), dtype=np.int64)
        y, c = session.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": x, "CAT": cat})
        assert y.dtype == np.float32 and y.shape == (batch, 1)
        np.testing.assert_allclose(y[:, 0], x.mean(axis=1), rtol=1e-5, atol=1e-6)
        assert np.array_equal(c, cat)


# ---------------------------------------------------------------------------------------------


def write_model(out: Path, name: str, model: onnx.ModelProto, config: str | None) -> list[Path]:
    """Write <out>/<name>/1/model.onnx (+ config.pbtxt); return the files written."""
    model_dir = out / name
    (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
    model_path = model_dir / VERSION / "model.onnx"
    onnx.save(model, str(model_path))
    written = [model_path]
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
        written.append(model_dir / "config.pbtxt")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description="Build modelgate's example ONNX models.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"model repository folder (default: {DEFAULT_OUT})")
    parser.add_argument("--wide", action="store_true", help="also build mlp_wide (4.3 MB)")
    parser.add_argument("--drift", action="store_true", help="also build drift16 (the drift harness's model)")
    parser.add_argument("--only", action="append", metavar="NAME", help="build only these models (repeatable)")
    args = parser.parse_args()

    # name -> (builder, config.pbtxt text or None, check)
    plan = {
        "simple": (build_simple, SIMPLE_CONFIG, check_simple),
        "mlp": (lambda: build_mlp("mlp", [64, 256, 256, 10]), MLP_CONFIG, check_mlp),
        "identity": (build_identity, None, check_identity),
    }
    if args.wide:
        plan["mlp_wide"] = (lambda: build_mlp("mlp_wide", [64, 1024, 1024, 10]), MLP_WIDE_CONFIG, check_mlp)
    if args.drift:
        plan["drift16"] = (build_drift16, DRIFT16_CONFIG, check_drift16)
    if args.only:
        unknown = sorted(set(args.only) - set(plan))
        if unknown:
            parser.error(f"--only {', '.join(unknown)}: not built with these flags (known: {', '.join(plan)})")
        plan = {name: entry for name, entry in plan.items() if name in args.only}

    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, opset {OPSET}, IR {IR_VERSION}")
    for name, (build, config, check) in plan.items():
        written = write_model(args.out, name, build(), config)
        check(written[0])
        for path in written:
            print(f"  {path.stat().st_size:>9,} B  {path}")
        print(f"  ok: {name} loads in onnxruntime, batch 1 and 7 match the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())

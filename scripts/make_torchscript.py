"""Write models/mlp_torch: the `mlp` example model as a TorchScript module, for the libtorch backend.

Why: the gateway's optional `torch` backend serves TorchScript (Triton platform
"pytorch_libtorch"). To compare it with the ONNX backend, this module has exactly the weights of
models/mlp/1/model.onnx (read from that file, not regenerated), so both must give the same
outputs up to float rounding.

Run it after `scripts/setup.sh torch-python` and `models/make_models.py`:

    .venv/models/bin/python scripts/make_torchscript.py [--models DIR]

Triton's naming convention for TorchScript tensors is <name>__<index>: the module takes one
input, INPUT__0 [batch, 64] FP32, and returns OUTPUT__0 [batch, 10] FP32. The forward argument
is also called INPUT__0, so both name- and position-based binding work.

The output is byte-for-byte reproducible only with a fixed PYTHONHASHSEED: TorchScript writes the
`Final` constants of nn.Linear in set order, and torch derives `.data/serialization_id` from the
content. So the script re-runs itself with PYTHONHASHSEED=0 when that is not already set.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"

CONFIG = """\
# The "mlp" example as TorchScript (same weights as mlp/1/model.onnx).
name: "mlp_torch"
platform: "pytorch_libtorch"
max_batch_size: 64
input [
  {
    name: "INPUT__0"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "OUTPUT__0"
    data_type: TYPE_FP32
    dims: [ 10 ]
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


class Mlp(torch.nn.Module):
    """64 -> 256 -> ReLU -> 256 -> ReLU -> 10, the architecture of models/mlp."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.fc3 = torch.nn.Linear(256, 10)

    def forward(self, INPUT__0: torch.Tensor) -> torch.Tensor:  # noqa: N803 (Triton's name)
        x = torch.relu(self.fc1(INPUT__0))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def load_onnx_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """The initializers of the ONNX mlp: fc{i}.weight [in, out] and fc{i}.bias [out]."""
    model = onnx.load(str(onnx_path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def build_module(weights: dict[str, np.ndarray]) -> Mlp:
    """An Mlp holding the ONNX weights. ONNX computes x @ W; torch.nn.Linear x @ weight.T."""
    module = Mlp().eval()
    with torch.no_grad():
        for name in ("fc1", "fc2", "fc3"):
            layer = getattr(module, name)
            layer.weight.copy_(torch.tensor(weights[f"{name}.weight"].T))  # torch.tensor copies
            layer.bias.copy_(torch.tensor(weights[f"{name}.bias"]))
    for parameter in module.parameters():
        parameter.requires_grad_(False)  # an inference artifact: no autograd state
    return module


def compare_with_onnx(pt_path: Path, onnx_path: Path) -> float:
    """Run the saved TorchScript and the ONNX model on the same inputs; return max |diff|."""
    scripted = torch.jit.load(str(pt_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    worst = 0.0
    for batch in (1, 7, 64):
        x = rng.standard_normal((batch, 64), dtype=np.float32)
        (expected,) = session.run(["output"], {"input": x})
        with torch.no_grad():
            got = scripted(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def ensure_fixed_hash_seed() -> None:
    """Re-exec this script with PYTHONHASHSEED=0 (see the module docstring)."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> int:
    ensure_fixed_hash_seed()
    parser = argparse.ArgumentParser(description="Write models/mlp_torch (TorchScript).")
    parser.add_argument("--models", type=Path, default=REPO_MODELS,
                        help=f"model repository holding mlp/ (default: {REPO_MODELS})")
    args = parser.parse_args()

    onnx_path = args.models / "mlp" / "1" / "model.onnx"
    if not onnx_path.exists():
        print(f"error: {onnx_path} missing: run models/make_models.py first", file=sys.stderr)
        return 1
    out_dir = args.models / "mlp_torch"
    (out_dir / "1").mkdir(parents=True, exist_ok=True)
    pt_path = out_dir / "1" / "model.pt"

    torch.manual_seed(0)  # the weights are overwritten, but keep construction deterministic
    scripted = torch.jit.script(build_module(load_onnx_weights(onnx_path)))
    scripted.save(str(pt_path))
    (out_dir / "config.pbtxt").write_text(CONFIG)

    worst = compare_with_onnx(pt_path, onnx_path)
    print(f"torch {torch.__version__}: wrote {pt_path} ({pt_path.stat().st_size:,} B) "
          f"and {out_dir / 'config.pbtxt'}")
    print(f"  ok: matches {onnx_path} for batch 1, 7, 64 (max |diff| = {worst:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

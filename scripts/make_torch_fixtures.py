"""Write the TorchScript fixtures of crates/backend-torch's tests (a few KiB, committed).

Why Python: `tch` can trace a module with one output, but TorchScript refuses to save a traced
method with several ("Exportable methods must have a single return value"), and the tests need
modules that return a tuple and a list. Single-output modules are traced in the tests
themselves.

    .venv/models/bin/python scripts/make_torch_fixtures.py     # after scripts/setup.sh torch-python

Fixtures (crates/backend-torch/tests/fixtures/):
  pair.pt   forward(INPUT__0, INPUT__1) -> (INPUT__0 + INPUT__1, INPUT__0 - INPUT__1, 7)
            two positional inputs, a tuple result, and a non-tensor in it
  split.pt  forward(x) -> [x * 2, x.sum(-1)]: a list result whose tensors differ in shape

Like scripts/make_torchscript.py, it re-runs itself with PYTHONHASHSEED=0 so that the archives
are byte-for-byte reproducible.
"""

import os
import sys
from pathlib import Path
from typing import List, Tuple

import torch
from torch import Tensor

FIXTURES = Path(__file__).resolve().parent.parent / "crates" / "backend-torch" / "tests" / "fixtures"


class Pair(torch.nn.Module):
    def forward(self, INPUT__0: Tensor, INPUT__1: Tensor) -> Tuple[Tensor, Tensor, int]:  # noqa: N803
        return INPUT__0 + INPUT__1, INPUT__0 - INPUT__1, 7


class Split(torch.nn.Module):
    def forward(self, x: Tensor) -> List[Tensor]:
        return [x * 2, x.sum(-1)]


def main() -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, module in (("pair", Pair()), ("split", Split())):
        path = FIXTURES / f"{name}.pt"
        torch.jit.script(module.eval()).save(str(path))
        print(f"wrote {path} ({path.stat().st_size:,} B)")
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[10.0, 20.0]])
    total, difference, seven = torch.jit.load(str(FIXTURES / "pair.pt"))(a, b)
    assert total.tolist() == [[11.0, 22.0]] and difference.tolist() == [[-9.0, -18.0]] and seven == 7
    doubled, sums = torch.jit.load(str(FIXTURES / "split.pt"))(a)
    assert doubled.tolist() == [[2.0, 4.0]] and sums.tolist() == [3.0]
    return 0


if __name__ == "__main__":
    sys.exit(main())

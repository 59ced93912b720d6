"""Reference outputs for tests/torch.rs: a TorchScript model run by torch itself.

    python tests/torch_reference.py MODEL.pt FEATURES BATCH [BATCH ...]

For each batch size, draws a seeded standard-normal FP32 input of shape [batch, FEATURES], runs
the module under no_grad on one thread (the gateway's default intra-op count, so that both
sides reduce in the same order), and prints one JSON object to stdout:

    {"torch": "2.13.0+cu130", "batches": {"7": {"input": "<hex>", "output": "<hex>",
                                                 "output_shape": [7, 10]}}}

Tensors travel as the hex of their little-endian bytes, so nothing is lost to decimal text.
"""

import json
import sys

import numpy as np
import torch


def main() -> int:
    model_path, features, batches = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3:]]
    torch.set_num_threads(1)
    module = torch.jit.load(model_path).eval()
    result = {"torch": torch.__version__, "batches": {}}
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, features), dtype=np.float32)
        with torch.no_grad():
            y = module(torch.from_numpy(x)).numpy()
        assert y.dtype == np.float32
        result["batches"][str(batch)] = {
            "input": x.astype("<f4").tobytes().hex(),
            "output": y.astype("<f4").tobytes().hex(),
            "output_shape": list(y.shape),
        }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

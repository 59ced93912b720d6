"""Triton Inference Server (the tritonserver 2.51 inside the nvidia-pytriton 0.7 wheel) serving an
ONNX MLP through its Python backend: the bound callable runs an onnxruntime session, and Triton's
dynamic batcher sits in front (max_batch_size 64, no queue delay, as models/mlp/config.pbtxt).

Run by load-tests/peers.py with the pytriton venv's Python 3.12 and LD_LIBRARY_PATH including that
interpreter's lib folder (the Python backend loads libpython3.12.so):

    python pytriton_mlp.py --model models/mlp/1/model.onnx --http-port P --grpc-port Q \
        --metrics-port R --workspace DIR

The statistics API is restricted by PyTriton; its access token is taken from the environment
(PYTRITON_ACCESS_TOKEN) so that the caller can hand it to perf_analyzer.
"""

import argparse
import os

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", default="mlp")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    (model_output,) = session.get_outputs()
    width_in, width_out = model_input.shape[1], model_output.shape[1]

    @batch
    def infer(**inputs):
        (y,) = session.run([model_output.name], {model_input.name: inputs[model_input.name]})
        return {model_output.name: y}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_address="127.0.0.1", metrics_port=args.metrics_port,
    )
    security = TritonSecurityConfig(access_token=os.environ["PYTRITON_ACCESS_TOKEN"])
    with Triton(config=config, workspace=args.workspace, security_config=security) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name=model_input.name, dtype=np.float32, shape=(width_in,))],
            outputs=[Tensor(name=model_output.name, dtype=np.float32, shape=(width_out,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
        )
        triton.serve()


if __name__ == "__main__":
    main()

"""A small Seldon MLServer runtime: one onnxruntime session per worker, one FP32 input, one output.

load-tests/peers.py copies this file next to the model-settings.json it writes
(`"implementation": "mlserver_onnx.OnnxModel"`, `"parameters": {"uri": "<absolute model.onnx>"}`),
with MLServer's adaptive batching on (`max_batch_size`, `max_batch_time`), which merges queued
requests along the first dimension before `predict` and splits the reply after it.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    """Serves the ONNX file at `parameters.uri`."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        # One intra-op thread, as the gateway and the Triton peer run theirs.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (y,) = self._session.run([self._output], {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name=self._output, payload=y)],
        )

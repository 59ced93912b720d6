"""One inference call, the same way over three wire formats.

- "http-json":   tritonclient.http, every tensor inside the JSON body, except
                 FP16, which the protocol allows only in binary form;
- "http-binary": tritonclient.http, every tensor in the binary tensor data
                 extension (after the JSON header);
- "grpc":        tritonclient.grpc (raw_input_contents / raw_output_contents).

`Transport.infer` also checks that the response used the format that was
asked for, so a server that answered JSON to a binary request (or the other
way round) fails here even when the numbers are right.
"""

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

TRANSPORTS = ["http-json", "http-binary", "grpc"]

# Datatypes that JSON cannot carry (binary_tensor_data extension).
BINARY_ONLY = {"FP16", "BF16"}


class Result:
    """Outputs as numpy arrays (BYTES elements as `bytes`), and the raw
    response: the JSON header over HTTP, the protobuf message over gRPC."""

    def __init__(self, outputs, response):
        self.outputs = outputs
        self.response = response


def as_bytes_array(array):
    """BYTES outputs come back as `str` from JSON and `bytes` from binary."""
    flat = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
    out = np.empty(len(flat), dtype=np.object_)
    out[:] = flat
    return out.reshape(array.shape)


class Transport:
    def __init__(self, name, client):
        self.name = name
        self.client = client
        self.module = grpcclient if name == "grpc" else httpclient
        self._output_names = {}

    def __repr__(self):
        return self.name

    @property
    def is_http(self):
        return self.name != "grpc"

    def binary(self, datatype):
        return self.name == "http-binary" or datatype in BINARY_ONLY

    def output_names(self, model):
        if model not in self._output_names:
            metadata = self.client.get_model_metadata(model)
            outputs = metadata["outputs"] if self.is_http else [{"name": o.name} for o in metadata.outputs]
            self._output_names[model] = [o["name"] for o in outputs]
        return self._output_names[model]

    def make_inputs(self, arrays):
        inputs = []
        for name, array in arrays.items():
            datatype = np_to_triton_dtype(array.dtype)
            tensor = self.module.InferInput(name, list(array.shape), datatype)
            if self.is_http:
                tensor.set_data_from_numpy(array, binary_data=self.binary(datatype))
            else:
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def make_outputs(self, model, names, datatypes=None):
        """Requested outputs. Over HTTP-JSON every output is named with
        binary_data false (tritonclient asks for binary when none is named);
        FP16 outputs (by `datatypes`) stay binary."""
        datatypes = datatypes or {}
        if names is None:
            if self.name != "http-json":
                return None
            names = self.output_names(model)
        if not self.is_http:
            return [self.module.InferRequestedOutput(n) for n in names]
        return [self.module.InferRequestedOutput(n, binary_data=self.binary(datatypes.get(n, ""))) for n in names]

    def infer(self, model, arrays, outputs=None, output_datatypes=None, **kwargs):
        """Runs `model` on `arrays` (name -> numpy array) and returns a
        Result with every output the server sent."""
        result = self.client.infer(
            model,
            self.make_inputs(arrays),
            outputs=self.make_outputs(model, outputs, output_datatypes),
            **kwargs,
        )
        return self.read(result)

    def read(self, result):
        response = result.get_response()
        if self.is_http:
            names = [o["name"] for o in response["outputs"]]
            for output in response["outputs"]:
                in_binary = "binary_data_size" in (output.get("parameters") or {})
                expected = self.binary(output["datatype"])
                assert in_binary == expected, (
                    f"{self.name}: output {output['name']} came back "
                    f"{'binary' if in_binary else 'in JSON'}, expected {'binary' if expected else 'JSON'}"
                )
                assert in_binary or "data" in output, output
        else:
            names = [o.name for o in response.outputs]
            assert len(response.raw_output_contents) == len(names), "gRPC outputs must use raw_output_contents"
        outputs = {}
        for name in names:
            array = result.as_numpy(name)
            assert array is not None, f"output {name} listed but unreadable"
            if array.dtype == np.object_:
                array = as_bytes_array(array)
            outputs[name] = array
        return Result(outputs, response)

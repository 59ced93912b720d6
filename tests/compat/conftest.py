"""Fixtures of the Triton-client compatibility suite.

The suite talks to a running modelgate: `tests/compat/run.sh` starts one on
free loopback ports and passes its addresses in MODELGATE_HTTP_URL and
MODELGATE_GRPC_URL (host:port, as tritonclient takes them). Reference outputs
come from onnxruntime in this process, reading the same model files.
"""

import os
import zlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from transports import TRANSPORTS, Transport

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("MODELGATE_MODELS", REPO_ROOT / "models"))


def _address(variable):
    value = os.environ.get(variable)
    if not value:
        pytest.exit(
            f"{variable} is not set: run this suite through tests/compat/run.sh, "
            "or export it as host:port of a running modelgate",
            returncode=2,
        )
    return value


@pytest.fixture(scope="session")
def http_url():
    return _address("MODELGATE_HTTP_URL")


@pytest.fixture(scope="session")
def grpc_url():
    return _address("MODELGATE_GRPC_URL")


@pytest.fixture(scope="session")
def torch_built(http_client):
    """Whether the server under test was built with TorchScript support.

    scripts/test.sh says which build it runs (MODELGATE_EXPECT_TORCH=1 or 0), so a wrong build
    fails instead of skipping; run by hand without it, the server's index decides.
    """
    expected = os.environ.get("MODELGATE_EXPECT_TORCH")
    if expected in ("0", "1"):
        return expected == "1"
    index = {row["name"]: row for row in http_client.get_model_repository_index()}
    return index["mlp_torch"].get("state") == "READY"


@pytest.fixture(scope="session")
def http_client(http_url):
    # concurrency > 1 so that async_infer really has requests in flight together.
    client = httpclient.InferenceServerClient(http_url, concurrency=4, connection_timeout=10, network_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_client(grpc_url):
    client = grpcclient.InferenceServerClient(grpc_url)
    yield client
    client.close()


@pytest.fixture(params=TRANSPORTS)
def transport(request, http_client, grpc_client):
    """Each test that takes it runs over HTTP with JSON tensors, HTTP with
    binary tensors, and gRPC."""
    client = grpc_client if request.param == "grpc" else http_client
    return Transport(request.param, client)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: every test (and every
    parametrization) sends its own inputs, and a failure reproduces."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


class Reference:
    """onnxruntime sessions over the repository's model files."""

    def __init__(self):
        self._sessions = {}

    def run(self, model, inputs):
        session = self._sessions.get(model)
        if session is None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(MODELS / model / "1" / "model.onnx"), options)
            self._sessions[model] = session
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))


@pytest.fixture(scope="session")
def reference():
    return Reference()

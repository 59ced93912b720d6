"""Fixtures for the MLflow-client tests: a real modelgate control plane on a free loopback port.

The server is MODELGATE_CP_COMMAND (default `target/debug/modelgate control-plane`; build it
with `cargo build --bin modelgate`). Every test runs against SQLite, and against PostgreSQL
when MODELGATE_TEST_POSTGRES_URL is set (scripts/with-postgres.sh); MODELGATE_REQUIRE_POSTGRES=1
makes its absence a failure.
"""

import asyncio
import contextlib
import os
import pathlib
import re
import ssl
import subprocess
import threading
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "mlflow-client-test-token-0123456789"


def _backends():
    out = ["sqlite"]
    if os.environ.get("MODELGATE_TEST_POSTGRES_URL"):
        out.append("postgres")
    elif os.environ.get("MODELGATE_REQUIRE_POSTGRES") == "1":
        raise RuntimeError("MODELGATE_REQUIRE_POSTGRES=1 but MODELGATE_TEST_POSTGRES_URL is unset")
    return out


def _fresh_postgres():
    admin = os.environ["MODELGATE_TEST_POSTGRES_URL"]
    name = "mlflow_" + uuid.uuid4().hex[:12]
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True)
    return admin.rsplit("/", 1)[0] + "/" + name


def database_args(backend):
    """The control plane's --db flags for a backend: its default SQLite file, or a fresh PostgreSQL database."""
    return ["--db", _fresh_postgres()] if backend == "postgres" else []


@contextlib.contextmanager
def running_control_plane(data_dir, extra_args=()):
    """Runs the control plane on a free port with its data in data_dir; yields its base URL."""
    command = os.environ.get("MODELGATE_CP_COMMAND", f"{REPO / 'target/debug/modelgate'} control-plane").split()
    args = command + ["--port", "0", "--data-dir", str(data_dir), *extra_args]
    env = dict(os.environ, MODELGATE_ADMIN_TOKEN=TOKEN, RUST_LOG="warn")
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"control plane did not start: {line!r}"
        yield f"http://{match.group(1)}"
    finally:
        server.terminate()
        server.wait(timeout=15)


@pytest.fixture(params=_backends())
def backend(request):
    """The database the control plane runs on: sqlite, and postgres when available."""
    return request.param


@pytest.fixture
def control_plane(backend, tmp_path, monkeypatch):
    """Starts the control plane; yields its base URL; stops it."""
    with running_control_plane(tmp_path / "data", database_args(backend)) as url:
        # The MLflow client sends this as 'Authorization: Bearer ...'.
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url


def tls_files(directory):
    """A test CA and a certificate it signs for localhost (openssl, ECDSA P-256): CA, cert, key."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=modelgate test CA")
    openssl("req", *ec[:5], "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-out", "server.pem", "-extfile", "server.ext")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


class TlsProxy:
    """Terminates TLS on a port of its own and forwards each connection to 127.0.0.1:`port` in
    plain HTTP, as an ingress in front of a server does (asyncio, on its own thread)."""

    def __init__(self, cert, key, port):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def forward(client_reader, client_writer):
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

        async def listen():
            server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
            self.port = server.sockets[0].getsockname()[1]
            started.set()

        def run():
            self.loop.run_until_complete(listen())
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert started.wait(10), "the TLS proxy did not start"

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)

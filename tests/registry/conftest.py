"""Fixtures for the MLflow-client tests: a real modelgate control plane on a free loopback port.

The server is MODELGATE_CP_COMMAND (default `target/debug/modelgate control-plane`; build it
with `cargo build --bin modelgate`). Every test runs against SQLite, and against PostgreSQL
when MODELGATE_TEST_POSTGRES_URL is set (scripts/with-postgres.sh); MODELGATE_REQUIRE_POSTGRES=1
makes its absence a failure.
"""

import contextlib
import os
import pathlib
import re
import subprocess
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

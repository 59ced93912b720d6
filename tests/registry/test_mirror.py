"""Mirror mode against a REAL MLflow server (`mlflow server` from PyPI, SQLite backend,
--serve-artifacts, on loopback).

Versions are registered upstream the way MLflow users do (a run, its artifacts, then
create_model_version with the run id); `modelgate control-plane --mirror-mlflow URL` must import
them with the same bytes, follow the upstream alias as it is set, moved and deleted, give up on a
version whose files it cannot reach without stopping the others, and import nothing twice after a
restart. Behind a TLS-terminating proxy with a test CA, the same server is mirrored over https://
when `--mirror-mlflow-ca` names the CA, and refused for its certificate when it does not.

The server runs from a venv with `mlflow` (scripts/requirements-mlflow-server.txt):
MODELGATE_MLFLOW_SERVER_VENV if set, else .venv/mlflow-server (scripts/setup.sh mlflow-server),
else target/mlflow-server, which this test creates (a few minutes, from PyPI) or reuses. When no
server can be had the test skips, saying why; MODELGATE_REQUIRE_MLFLOW_SERVER=1 makes that a
failure.
"""

import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import REPO, TOKEN, TlsProxy, database_args, running_control_plane, tls_files
from mlflow import MlflowClient

REQUIREMENTS = REPO / "scripts" / "requirements-mlflow-server.txt"
# How long the mirror may take to notice an upstream change (it polls every second here).
FOLLOW_TIMEOUT = 60


def _unavailable(reason):
    if os.environ.get("MODELGATE_REQUIRE_MLFLOW_SERVER") == "1":
        pytest.fail(f"MODELGATE_REQUIRE_MLFLOW_SERVER=1 but {reason}")
    pytest.skip(reason)


def _mlflow_server_venv():
    """A venv whose bin/mlflow is the pinned server: found, or made under target/."""
    stamp_wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    explicit = os.environ.get("MODELGATE_MLFLOW_SERVER_VENV")
    if explicit:
        venv = pathlib.Path(explicit)
        if not (venv / "bin" / "mlflow").exists():
            _unavailable(f"MODELGATE_MLFLOW_SERVER_VENV={explicit} has no bin/mlflow")
        return venv
    for venv in (REPO / ".venv" / "mlflow-server", REPO / "target" / "mlflow-server"):
        stamp = venv / ".setup-stamp"
        if (venv / "bin" / "mlflow").exists() and stamp.exists() and stamp.read_text().strip() == stamp_wanted:
            return venv
    venv = REPO / "target" / "mlflow-server"
    print(f"installing {REQUIREMENTS.name} into {venv} (once; a few minutes)", file=sys.stderr)
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
            check=True,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        output = getattr(error, "stderr", "") or ""
        _unavailable(f"cannot install the MLflow server from PyPI into {venv}: {error} {output[-500:]}")
    (venv / ".setup-stamp").write_text(stamp_wanted + "\n")
    return venv


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback; yields its base URL."""
    venv = _mlflow_server_venv()
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = subprocess.Popen(
        [
            str(venv / "bin" / "mlflow"), "server",
            "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--serve-artifacts",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        # Its own process group: the server starts uvicorn workers, stopped with it.
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (root / "server.log").read_text()[-2000:]
                pytest.fail(f"mlflow server did not start (exit {server.poll()}):\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _get(url, path):
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
            return answer.status, (json.loads(body) if answer.headers.get_content_type() == "application/json" else body)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _wait_for(what, check, timeout=FOLLOW_TIMEOUT):
    """Polls check() until it returns a true value, which it returns."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _model_dir(root, payload):
    """A Triton-layout model directory with a payload of a few hundred KB (several read chunks)."""
    (root / "1").mkdir(parents=True)
    (root / "1" / "model.onnx").write_bytes(payload)
    (root / "config.pbtxt").write_text('name: "fraud"\nmax_batch_size: 8\n')
    (root / "assets" / "deep").mkdir(parents=True)
    (root / "assets" / "deep" / "labels.txt").write_text("legit\nfraud\n")
    return root


def _sha256_of_files(root):
    return {
        str(p.relative_to(root)): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _local_versions(cp, model):
    status, body = _get(cp, f"/cp/v1/models/{model}/versions")
    return {v["version"]: v for v in body["versions"]} if status == 200 else {}


def _local_alias(cp, model, alias):
    status, body = _get(cp, f"/cp/v1/models/{model}/aliases/{alias}")
    return body["version"] if status == 200 else None


def test_mirror_imports_versions_with_their_bytes_and_follows_the_alias(mlflow_server, backend, tmp_path):
    started = time.monotonic()
    model = f"fraud_{backend}"
    upstream = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = upstream.create_experiment(f"mirror-{backend}-{os.getpid()}")
    originals = {}
    for number, payload in ((1, os.urandom(300_000)), (2, os.urandom(450_000))):
        run = upstream.create_run(experiment)
        directory = _model_dir(tmp_path / f"v{number}", payload)
        upstream.log_artifacts(run.info.run_id, str(directory), "model")
        if number == 1:
            upstream.create_registered_model(model, description="scores transactions")
        created = upstream.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        assert created.version == str(number)
        originals[number] = (run.info.run_id, _sha256_of_files(directory))
    upstream.set_registered_model_alias(model, "champion", "1")
    # A model whose only version lives where the mirror cannot fetch it: counted, given up on,
    # and no obstacle to the other model.
    broken = f"broken_{backend}"
    upstream.create_registered_model(broken)
    upstream.create_model_version(broken, "s3://some-bucket/model")

    data_dir = tmp_path / "data"
    db = database_args(backend)
    # The upstream is shared by both backends' runs: each follows only its own models.
    mirror_args = [*db, "--mirror-mlflow", mlflow_server, "--mirror-models", f"{model},{broken}", "--mirror-interval", "1"]
    with running_control_plane(data_dir, mirror_args) as cp:
        cp_started = time.monotonic()
        versions = _wait_for(
            "both versions imported",
            lambda: (v := _local_versions(cp, model)) and len(v) == 2 and all(x["status"] == "READY" for x in v.values()) and v,
        )
        # The model had no versions of its own: the upstream numbers are kept.
        assert sorted(versions) == [1, 2]
        for number, (run_id, files) in originals.items():
            version = versions[number]
            assert {e["path"]: e["sha256"] for e in version["manifest"]} == files
            for entry in version["manifest"]:
                status, body = _get(cp, f"/cp/v1/blobs/{entry['sha256']}")
                assert status == 200
                assert "sha256:" + hashlib.sha256(body).hexdigest() == files[entry["path"]]
            assert version["tags"]["mlflow.source_version"] == str(number)
            assert version["tags"]["mlflow.source_url"] == mlflow_server
            assert version["lineage"]["run_id"] == run_id
            assert version["source"].startswith("mlflow-artifacts:/") and run_id in version["source"]
            assert version["format"] == "onnx" and version["creator"] == "mirror"
        assert _wait_for("champion on version 1", lambda: _local_alias(cp, model, "champion") == 1)
        imported_after = time.monotonic() - cp_started

        moved = time.monotonic()
        upstream.set_registered_model_alias(model, "champion", "2")
        _wait_for("champion moved to version 2", lambda: _local_alias(cp, model, "champion") == 2)

        followed_after = time.monotonic() - moved
        upstream.delete_registered_model_alias(model, "champion")
        _wait_for("champion deleted", lambda: _get(cp, f"/cp/v1/models/{model}/aliases/champion")[0] == 404)

        _, history = _get(cp, f"/cp/v1/models/{model}/history?alias=champion")
        moves = [(h["from_version"], h["to_version"], h["actor"]) for h in history["history"]]
        assert moves == [(None, 1, "mirror"), (1, 2, "mirror"), (2, None, "mirror")]
        assert all(mlflow_server in h["reason"] for h in history["history"])

        _, report = _get(cp, "/cp/v1/mirror")
        assert report["enabled"] and report["upstream"] == mlflow_server
        assert report["imported"] == 2 and report["alias_changes"] == 3
        failed = [f for f in report["failed_versions"] if f["model"] == broken]
        assert [f["version"] for f in failed] == [1] and "s3://some-bucket/model" in failed[0]["reason"]
        assert report["errors"] >= 1
        assert _local_versions(cp, broken) == {}

    # A restart finds what it imported through the version tags: nothing twice.
    with running_control_plane(data_dir, mirror_args) as cp:
        report = _wait_for("two polls after the restart", lambda: (r := _get(cp, "/cp/v1/mirror")[1])["polls"] >= 2 and r)
        assert report["imported"] == 0
        assert sorted(_local_versions(cp, model)) == [1, 2]
    print(f"\nmirror [{backend}]: versions and alias in place {imported_after:.1f} s after the control plane started, "
          f"an alias move followed in {followed_after:.1f} s; whole test {time.monotonic() - started:.1f} s "
          "(MLflow server start not counted)", file=sys.stderr)


def test_an_unreachable_upstream_is_reported_and_the_registry_still_serves(tmp_path):
    # A port nothing listens on: bound, then closed.
    upstream = f"http://127.0.0.1:{_free_port()}"
    args = ["--mirror-mlflow", upstream, "--mirror-interval", "1"]
    with running_control_plane(tmp_path / "data", args) as cp:
        report = _wait_for("two failed polls", lambda: (r := _get(cp, "/cp/v1/mirror")[1])["polls"] >= 2 and r)
        assert report["errors"] >= 2 and report["imported"] == 0
        assert upstream in report["last_errors"]["*"]
        assert _get(cp, "/cp/v1/models")[0] == 200


def test_an_https_upstream_is_mirrored_with_its_ca_and_refused_by_certificate_without(mlflow_server, tmp_path):
    ca, cert, key = tls_files(tmp_path)
    proxy = TlsProxy(cert, key, urllib.parse.urlsplit(mlflow_server).port)
    https = f"https://localhost:{proxy.port}"
    try:
        model = f"tls_{os.getpid()}"
        upstream = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        run = upstream.create_run(upstream.create_experiment(f"mirror-tls-{os.getpid()}"))
        directory = _model_dir(tmp_path / "v1", os.urandom(200_000))
        upstream.log_artifacts(run.info.run_id, str(directory), "model")
        upstream.create_registered_model(model)
        upstream.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        upstream.set_registered_model_alias(model, "champion", "1")
        args = ["--mirror-mlflow", https, "--mirror-models", model, "--mirror-interval", "1"]

        # The system's roots do not know the test CA: every poll fails, and says why.
        with running_control_plane(tmp_path / "untrusting", args) as cp:
            report = _wait_for("a failed poll", lambda: (r := _get(cp, "/cp/v1/mirror")[1])["errors"] >= 1 and r)
            assert report["imported"] == 0
            assert "certificate" in " ".join(report["last_errors"].values()), report["last_errors"]

        with running_control_plane(tmp_path / "trusting", [*args, "--mirror-mlflow-ca", str(ca)]) as cp:
            _wait_for("version 1 imported", lambda: _local_versions(cp, model).get(1, {}).get("status") == "READY")
            version = _local_versions(cp, model)[1]
            assert {e["path"]: e["sha256"] for e in version["manifest"]} == _sha256_of_files(directory)
            _wait_for("champion on version 1", lambda: _local_alias(cp, model, "champion") == 1)
            assert _get(cp, "/cp/v1/mirror")[1]["upstream"] == https
    finally:
        proxy.close()

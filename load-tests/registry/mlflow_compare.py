"""The MLflow client calls of issue #9 against modelgate's registry and a real `mlflow server`,
in the same run: the same results, and the time of each call (median over MODELS models).

Usage (a Python with the full `mlflow` package, which brings the server, e.g. a venv made with
`pip install mlflow==3.17.2`; it is not one of the project's venvs because its dependencies clash
with tritonclient's pins):
    PY=/tmp/mlflow-venv/bin/python
    $PY load-tests/registry/mlflow_compare.py [--binary target/release/modelgate-control-plane] [--models 5]

The flows differ where the servers differ (control-plane.md, addendum): MLflow's server only
accepts `mlflow-artifacts:` sources that belong to a run, so its flow logs the files to a run;
modelgate takes files uploaded through the artifact proxy without a run. Upload time is reported
separately from the registry calls.
"""

import argparse
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import mlflow
from mlflow import MlflowClient
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

warnings.filterwarnings("ignore")
TOKEN = "compare-token-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60):
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def start_mlflow(work):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{work}/mlflow.db", "--artifacts-destination", f"{work}/mlflow-art",
         "--serve-artifacts", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(f"{work}/mlflow.log", "w"))
    url = f"http://127.0.0.1:{port}"
    wait_http(url)
    return proc, url


def start_modelgate(binary, work):
    env = dict(os.environ, MODELGATE_ADMIN_TOKEN=TOKEN, RUST_LOG="warn")
    proc = subprocess.Popen([binary, "--port", "0", "--data-dir", f"{work}/mg"], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    return proc, "http://" + re.search(r"listening on (\S+)", line).group(1)


def flow(url, name, model_dir, out_dir, run_based):
    """One model through the calls; returns (timings, results)."""
    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    t = {}

    def timed(key, fn, *args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        t[key] = time.perf_counter() - t0
        return result

    t0 = time.perf_counter()
    if run_based:
        exp = client.get_experiment_by_name("compare") or client.get_experiment(client.create_experiment("compare"))
        run = client.create_run(exp.experiment_id)
        client.log_artifacts(run.info.run_id, str(model_dir), "model")
        source, run_id = f"{run.info.artifact_uri}/model", run.info.run_id
    else:
        HttpArtifactRepository(f"{url}/api/2.0/mlflow-artifacts/artifacts/compare/{name}").log_artifacts(str(model_dir))
        source, run_id = f"mlflow-artifacts:/compare/{name}", None
    t["upload (not compared)"] = time.perf_counter() - t0

    timed("create_registered_model", client.create_registered_model, name)
    mv = timed("create_model_version (until READY)", client.create_model_version, name, source, run_id=run_id)
    timed("set_registered_model_alias", client.set_registered_model_alias, name, "champion", mv.version)
    by_alias = timed("get_model_version_by_alias", client.get_model_version_by_alias, name, "champion")
    staged = timed("transition_model_version_stage", client.transition_model_version_stage, name, mv.version, "Staging")
    found = timed("search_model_versions", client.search_model_versions, f"name='{name}'")
    uri = client.get_model_version_download_uri(name, mv.version)
    dest = timed("download (get-download-uri + files)", mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=str(out_dir))
    files = sorted((p.relative_to(dest).as_posix(), p.read_bytes()) for p in pathlib.Path(dest).rglob("*") if p.is_file())
    results = {
        "version": mv.version,
        "status": client.get_model_version(name, mv.version).status,
        "by_alias": by_alias.version,
        "aliases": sorted(by_alias.aliases),
        "stage": staged.current_stage,
        "search": sorted(v.version for v in found),
        "files": files,
    }
    return t, results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/modelgate-control-plane")
    parser.add_argument("--models", type=int, default=5)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="mg-mlflow-compare."))
    model_dir = work / "model"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(os.urandom(340_000))
    (model_dir / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 8\n')
    procs = []
    try:
        mlflow_proc, mlflow_url = start_mlflow(work)
        procs.append(mlflow_proc)
        mg_proc, mg_url = start_modelgate(args.binary, work)
        procs.append(mg_proc)
        timings = {"mlflow": [], "modelgate": []}
        outcomes = {"mlflow": [], "modelgate": []}
        for i in range(args.models):
            os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
            t, r = flow(mlflow_url, f"m{i}", model_dir, work / f"out-mlflow-{i}", run_based=True)
            timings["mlflow"].append(t)
            outcomes["mlflow"].append(r)
            os.environ["MLFLOW_TRACKING_TOKEN"] = TOKEN
            t, r = flow(mg_url, f"m{i}", model_dir, work / f"out-mg-{i}", run_based=False)
            timings["modelgate"].append(t)
            outcomes["modelgate"].append(r)
        same = outcomes["mlflow"] == outcomes["modelgate"]
        print(f"\nsame results on both servers: {same}")
        if not same:
            for a, b in zip(outcomes["mlflow"], outcomes["modelgate"]):
                print({k: (a[k], b[k]) for k in a if k != "files" and a[k] != b[k]}, "files equal:", a["files"] == b["files"])
        print(f"\n| call (median of {args.models}) | mlflow server 3.17.2 | modelgate | ratio |")
        print("|---|---|---|---|")
        for key in timings["mlflow"][0]:
            a = statistics.median(t[key] for t in timings["mlflow"]) * 1000
            b = statistics.median(t[key] for t in timings["modelgate"]) * 1000
            print(f"| {key} | {a:.1f} ms | {b:.1f} ms | {a / b:.1f}x |")
        return 0 if same else 1
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""modelgate side by side with the servers users would pick instead, same model, same load tools.

The model is models/mlp (64-256-256-10, FP32), one row per request, V2 JSON over HTTP.

* nginx (Debian nginx-light), one worker, `return 200` with a fixed V2 JSON reply: the floor
  of HTTP on loopback on this machine, no model at all.
* modelgate: release build, models/mlp as it is (dynamic batching, no queue delay).
* Triton: tritonserver 2.51 from the nvidia-pytriton wheel; its Python backend calls an
  onnxruntime session; dynamic batcher on (peers/pytriton_mlp.py, venv .venv/pytriton).
* MLServer 1.7: a small onnxruntime runtime with adaptive batching (peers/mlserver_onnx.py,
  venv .venv/mlserver).

Each server runs alone (started, checked against onnxruntime's answer, measured, stopped).
HTTP: wrk -t1 for 5 s at 1 and 64 connections, for all four. gRPC: perf_analyzer at concurrency
1 and 64 for modelgate and Triton (MLServer has no model config endpoint, so perf_analyzer cannot
drive it).

Targets (issue 3), at 64 connections: modelgate ≥ 10× Triton's and ≥ 15× MLServer's requests/s,
and ≥ 25 % of nginx's; at 1 connection, modelgate's p50 within 40 µs of nginx's.

    scripts/setup.sh apt client peers      # once: wrk, nginx-light, the three venvs
    .venv/client/bin/python load-tests/peers.py [--quick] [--readme] [--only modelgate,nginx]

Venvs elsewhere: PYTRITON_VENV=..., MLSERVER_VENV=... Takes about 2.5 minutes.
Writes load-tests/results/peers.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadgen import PerfResult, WrkResult, perf_analyzer, wrk
from procs import (REPO, RESULTS, Processes, Server, cargo_release_binary, free_port, http_post_json,
                   modelgate_argv, stop_on_sigterm)
from report import UNSTABLE_NOTE, Check, Report, git_revision, marked, markdown_table

MODEL = "mlp"
MODEL_FILE = REPO / "models" / MODEL / "1" / "model.onnx"
PEERS = REPO / "load-tests" / "peers"
ALL = ["nginx", "modelgate", "triton", "mlserver"]


@dataclass
class Measured:
    """What one server got."""

    name: str
    version: str
    wrk: dict[int, WrkResult] = field(default_factory=dict)
    grpc: dict[int, PerfResult] = field(default_factory=dict)


@dataclass
class Started:
    """A running server: its process, infer URL, gRPC address, perf_analyzer extras."""

    server: Server
    infer_url: str
    grpc_address: str | None = None
    perf_extra: list[str] = field(default_factory=list)
    version: str = ""


def venv(variable: str, default: str) -> Path:
    path = Path(os.environ.get(variable, REPO / ".venv" / default))
    if not (path / "bin" / "python").exists():
        raise RuntimeError(f"{path}/bin/python not found: run scripts/setup.sh peers (or set {variable})")
    return path


def python_libdir(python: Path) -> str:
    """The folder of the interpreter's libpython (Triton's Python backend dlopens it)."""
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def package_version(python: Path, package: str) -> str:
    return subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


# === the request and the answer every server must give ===

def request_and_reference() -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(20251123)
    x = rng.standard_normal((1, 64), dtype=np.float32)
    session = ort.InferenceSession(str(MODEL_FILE), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x})
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return body, y


def v2_reply(y: np.ndarray) -> dict:
    return {"model_name": MODEL, "model_version": "1",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}]}


def check_answer(name: str, url: str, body: dict, expected: np.ndarray) -> None:
    """One request before the load: a server that answers wrongly is not measured."""
    status, reply = http_post_json(url, body)
    if status != 200:
        raise RuntimeError(f"{name}: HTTP {status}: {reply}")
    (output,) = [o for o in reply["outputs"] if o["name"] == "output"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{name}: wrong answer {got} (expected {expected})")


# === starting each server ===

def nginx_conf(root: Path, port: int, reply: dict, single_process: bool = False) -> Path:
    """nginx answering every request on `port` with `reply`, its files under `root`; with
    `single_process` no master (callgrind then sees the process that answers)."""
    root.mkdir(exist_ok=True)
    text = json.dumps(reply, separators=(",", ":"))
    assert "'" not in text
    conf = root / "nginx.conf"
    master = "master_process off;\n" if single_process else ""
    conf.write_text(f"""{master}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{text}';
        }}
    }}
}}
""")
    return conf


def start_nginx(procs: Processes, tmp: Path, reply: dict) -> Started:
    port = free_port()
    root = tmp / "nginx"
    conf = nginx_conf(root, port, reply)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    server = procs.start("nginx", [nginx, "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)])
    server.wait_http(f"http://127.0.0.1:{port}/", timeout=10)
    return Started(server, f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", version=f"nginx {version}")


def start_modelgate(procs: Processes, binary: Path) -> Started:
    http_port, grpc_port = free_port(), free_port()
    server = procs.start("modelgate", modelgate_argv(binary, REPO / "models", http_port, grpc_port, [MODEL]))
    server.wait_http(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=60)
    return Started(server, f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer", f"127.0.0.1:{grpc_port}",
                   version=f"modelgate {git_revision()}, release build")


def start_triton(procs: Processes, tmp: Path) -> Started:
    env_dir = venv("PYTRITON_VENV", "pytriton")
    python = env_dir / "bin" / "python"
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    token = secrets.token_urlsafe(24)
    libdir = python_libdir(python)
    env = {"PYTRITON_ACCESS_TOKEN": token,
           "LD_LIBRARY_PATH": libdir + (":" + os.environ["LD_LIBRARY_PATH"] if os.environ.get("LD_LIBRARY_PATH") else "")}
    server = procs.start("triton", [str(python), str(PEERS / "pytriton_mlp.py"), "--model", str(MODEL_FILE),
                                    "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                                    "--metrics-port", str(metrics_port), "--workspace", str(tmp / "pytriton")],
                         env=env)
    server.wait_http(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=120)
    return Started(server, f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer", f"127.0.0.1:{grpc_port}",
                   perf_extra=["-H", f"triton-grpc-protocol-triton-access-token:{token}"],
                   version=f"PyTriton {package_version(python, 'nvidia-pytriton')} (tritonserver 2.51), "
                           f"onnxruntime {package_version(python, 'onnxruntime')}")


def start_mlserver(procs: Processes, tmp: Path, max_batch_time: float, workers: int) -> Started:
    env_dir = venv("MLSERVER_VENV", "mlserver")
    python = env_dir / "bin" / "python"
    root = tmp / "mlserver"
    model_dir = root / MODEL
    model_dir.mkdir(parents=True)
    shutil.copy(PEERS / "mlserver_onnx.py", model_dir / "mlserver_onnx.py")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "load_models_at_startup": True, "debug": False,
        # Inference runs in this many worker processes (MLServer's default is 1; 0 = in the
        # server process itself).
        "parallel_workers": workers,
    }))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_onnx.OnnxModel",
        "parameters": {"uri": str(MODEL_FILE), "version": "1"},
        # Adaptive batching: up to 64 rows, waiting at most max_batch_time seconds to fill.
        "max_batch_size": 64, "max_batch_time": max_batch_time,
    }))
    server = procs.start("mlserver", [str(env_dir / "bin" / "mlserver"), "start", str(root)],
                         env={"PYTHONPATH": str(model_dir)}, cwd=root)
    server.wait_http(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=120)
    return Started(server, f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer",
                   version=f"MLServer {package_version(python, 'mlserver')} (max_batch_time {max_batch_time * 1e6:.0f} µs, "
                           f"{workers} parallel worker(s)), onnxruntime {package_version(python, 'onnxruntime')}")


# === the run ===

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ALL), help="servers to run (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="2 s wrk runs, 1 s perf_analyzer windows")
    # Defaults: the best MLServer did in a small sweep here (max_batch_time 0.1 / 1 ms, 0 / 1 workers).
    parser.add_argument("--mlserver-max-batch-time", type=float, default=0.0001,
                        help="seconds MLServer's adaptive batcher waits (default: %(default)s)")
    parser.add_argument("--mlserver-workers", type=int, default=0,
                        help="MLServer parallel_workers; its own default is 1 (default: %(default)s)")
    parser.add_argument("--no-build", action="store_true", help="use target/release/modelgate as it is")
    parser.add_argument("--readme", action="store_true", help="copy the table into load-tests/README.md")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = set(names) - set(ALL)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {ALL}")
    seconds, interval = (2, 1000) if args.quick else (args.seconds, 2000)
    stop_on_sigterm()

    binary = cargo_release_binary(build=not args.no_build) if "modelgate" in names else None
    report = Report("peers", f"Peers side by side: `{MODEL}` (64-256-256-10), batch-1 V2 JSON")
    body, expected = request_and_reference()
    measured: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="mg-peers-") as tmp_name, Processes(RESULTS / "logs") as procs:
        tmp = Path(tmp_name)
        body_file = tmp / "body.json"
        body_file.write_text(json.dumps(body, separators=(",", ":")))
        for name in names:
            print(f"== {name}", flush=True)
            if name == "nginx":
                started = start_nginx(procs, tmp, v2_reply(expected))
            elif name == "modelgate":
                started = start_modelgate(procs, binary)
            elif name == "triton":
                started = start_triton(procs, tmp)
            else:
                started = start_mlserver(procs, tmp, args.mlserver_max_batch_time, args.mlserver_workers)
            check_answer(name, started.infer_url, body, expected)
            m = measured[name] = Measured(name, started.version)
            for connections in (1, 64):
                m.wrk[connections] = r = wrk(started.infer_url, body_file, connections, seconds)
                started.server.check_running()
                print(f"  wrk c={connections:<3} {r.rps:>9.0f} req/s  p50 {r.p50_us:>7.0f} µs  "
                      f"p99 {r.p99_us:>7.0f} µs  errors {r.errors}", flush=True)
            if started.grpc_address:
                for c in (1, 64):
                    m.grpc[c] = r = perf_analyzer(MODEL, started.grpc_address, "grpc", c, tmp / f"pa-{name}-{c}.csv",
                                                  interval_ms=interval, extra=started.perf_extra)
                    started.server.check_running()
                    print(f"  perf_analyzer grpc c={c:<3} {r.infer_per_s:>9.0f} infer/s  p50 {r.p50_us:>7.0f} µs"
                          f"{'' if r.stable else '  (unstable)'}", flush=True)
            procs.stop(started.server)

    rows = []
    for m in measured.values():
        w1, w64 = m.wrk[1], m.wrk[64]
        g1, g64 = m.grpc.get(1), m.grpc.get(64)
        rows.append([m.name, w1.rps, w1.p50_us, w1.p99_us, w64.rps, w64.p50_us, w64.p99_us, w1.errors + w64.errors,
                     marked(g1.infer_per_s, g1.stable) if g1 else None, g1.p50_us if g1 else None,
                     marked(g64.infer_per_s, g64.stable) if g64 else None, g64.p50_us if g64 else None])
        for c, r in m.wrk.items():
            report.csv_rows.append({"server": m.name, "version": m.version, "tool": "wrk", "concurrency": c,
                                    "per_s": r.rps, "p50_us": r.p50_us, "p99_us": r.p99_us, "errors": r.errors,
                                    "stable": True})
        for c, r in m.grpc.items():
            report.csv_rows.append({"server": m.name, "version": m.version, "tool": "perf_analyzer grpc",
                                    "concurrency": c, "per_s": r.infer_per_s, "p50_us": r.p50_us,
                                    "p99_us": r.p99_us, "errors": 0, "stable": r.stable})
    report.add(f"HTTP: `wrk -t1 -d{seconds}s` POSTing one JSON request (1×64 FP32), 1 and 64 connections. "
               f"gRPC: perf_analyzer, {interval} ms windows. Latencies in µs.\n\n" + markdown_table(
                   ["server", "HTTP c=1 req/s", "p50", "p99", "HTTP c=64 req/s", "p50", "p99", "errors",
                    "gRPC c=1 infer/s", "p50", "gRPC c=64 infer/s", "p50"], rows)
               + ("\n\n" + UNSTABLE_NOTE if any(not r.stable for m in measured.values() for r in m.grpc.values())
                  else "")
               + "\n\nVersions: " + "; ".join(f"{m.name}: {m.version}" for m in measured.values()) + ".")

    mg = measured.get("modelgate")
    if mg:
        report.checks.append(Check("modelgate wrk errors (non-2xx, socket errors)",
                                   sum(r.errors for r in mg.wrk.values()), 0, higher_is_better=False, unit=""))
        for peer, bound in (("triton", 10.0), ("mlserver", 15.0), ("nginx", 0.25)):
            if peer in measured and measured[peer].wrk[64].rps:
                report.checks.append(Check(f"HTTP c=64 req/s: modelgate / {peer}",
                                           mg.wrk[64].rps / measured[peer].wrk[64].rps, bound))
        if "nginx" in measured:
            report.checks.append(Check("HTTP c=1 p50: modelgate − nginx", mg.wrk[1].p50_us - measured["nginx"].wrk[1].p50_us,
                                       40.0, higher_is_better=False, unit=" µs"))
    report.write(readme=args.readme)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Soak (issue #15): good and bad traffic mixed for `--minutes` (default 30) on one gateway, with
traffic moved between versions every minute and a failing canary rolled back in the middle.

The repository: `m` version 1 and version 3 (the `mlp` example) and version 2 (a canary that
fails every request: tests/models/make_test_models.py, `failing.onnx`), `simple` and `identity`.
The route of `m` starts at 100 % on version 1.

* Good traffic: three HTTP clients POST `m` (about 40 requests/s each) and check every answer
  against ONNX Runtime run in this process; one gRPC client (tritonclient) asks `simple` (about
  20/s). Every non-200 answer, wrong answer or connection error of theirs counts as a failure.
* Bad traffic: one client, one bad input every 50 ms in turn: malformed JSON, a wrong shape, an
  unknown model, a body declared over the limit, a gzip bomb, a 1 ms client deadline, garbage
  protobuf over gRPC, a request whose client leaves without reading, a socket that sends nothing
  for 2 s. Each must get its 4xx (or its gRPC status), never a 5xx other than the deadline's 504.
* Hot swaps: every 60 s the weights of `m` move (100/0 -> 50/50 -> 0/100 -> ... between versions
  1 and 3) through the admin API.
* Rollback: at half time the route is replaced by a rollout to canary 2; the gateway must roll it
  back by itself (within 30 s), with no failed good answer (the canary's failures are retried on
  version 1); then the route goes back to versions 1 and 3.

RSS is sampled every 5 s. Goals (exit 1 on a miss): 0 failed good requests, the rollback seen,
no unexpected answer to a bad input, and RSS growth < 5 % after warm-up: the median RSS of the
last minute against the median of the minute after warm-up (the first 10 % of the run, at least 2
minutes).

    .venv/client/bin/python load-tests/hostile/soak.py [--minutes 30] [--binary target/release/modelgate]

Writes load-tests/results/soak-<time>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import request_and_reference  # noqa: E402
from procs import REPO, RESULTS, Processes, free_port, stop_on_sigterm  # noqa: E402
from run import GZIP_BOMB, SIMPLE, grpc_compressed_call, rss  # noqa: E402

TOKEN = "soak-load-test-token-0123456789abcdef"
GOOD_HTTP_CLIENTS, GOOD_HTTP_RATE, GOOD_GRPC_RATE = 3, 40.0, 20.0
BAD_EVERY_S = 0.05
SWAP_EVERY_S = 60.0
GROWTH_GOAL = 0.05


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, key: str, example: str = "") -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            if example and key not in self.examples:
                self.examples[key] = example[:300]


def make_repo(root: Path) -> Path:
    generated = root / "generated"
    subprocess.run([str(REPO / ".venv/models/bin/python"), str(REPO / "tests/models/make_test_models.py"),
                    "--out", str(generated), "--slow-layers", "10"], check=True, capture_output=True)
    repo = root / "repo"
    mlp = REPO / "models/mlp/1/model.onnx"
    for version, source in [(1, mlp), (2, generated / "failing.onnx"), (3, mlp)]:
        (repo / "m" / str(version)).mkdir(parents=True)
        shutil.copy(source, repo / "m" / str(version) / "model.onnx")
    (repo / "m" / "config.pbtxt").write_text(
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\nversion_policy: { all { } }\n'
        "dynamic_batching { }\n")
    for name in ["simple", "identity"]:
        shutil.copytree(REPO / "models" / name, repo / name)
    return repo


class Admin:
    def __init__(self, port: int):
        self.port = port

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        reply = conn.getresponse()
        data = json.loads(reply.read() or b"{}")
        conn.close()
        return reply.status, data


def paced(rate: float, stop: threading.Event):
    next_at = time.monotonic()
    while not stop.is_set():
        yield
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))


def good_http(port: int, body: bytes, expected: np.ndarray, tally: Tally, stop: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in paced(GOOD_HTTP_RATE, stop):
        try:
            conn.request("POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                tally.add("good_failed", f"HTTP {reply.status}: {data[:200]!r}")
                continue
            got = np.array(json.loads(data)["outputs"][0]["data"], dtype=np.float32)
            if not np.allclose(got, expected.ravel(), atol=1e-4):
                tally.add("good_failed", "wrong answer")
            else:
                tally.add("good_ok")
        except OSError as e:
            tally.add("good_failed", repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def good_grpc(port: int, tally: Tally, stop: threading.Event) -> None:
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    for _ in paced(GOOD_GRPC_RATE, stop):
        try:
            result = client.infer("simple", inputs, client_timeout=10)
            if not np.array_equal(result.as_numpy("OUTPUT0"), a + b):
                tally.add("good_failed", "wrong gRPC answer")
            else:
                tally.add("good_ok")
        except Exception as e:  # noqa: BLE001 - tritonclient raises its own exception types
            tally.add("good_failed", f"gRPC: {e}")


def bad_inputs(port: int, grpc_port: int, mlp_body: dict) -> list[tuple[str, object]]:
    """(name, action): each action sends one bad input and returns its outcome (status or text)."""
    def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        status = conn.getresponse().status
        conn.close()
        return status

    def over_limit() -> int:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000000\r\n\r\n")
        status = int(s.recv(4096).split()[1])
        s.close()
        return status

    def leaves_unread() -> int:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = json.dumps(mlp_body).encode()
        s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        s.close()
        return 0

    def silent() -> int:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        time.sleep(2)
        s.close()
        return 0

    def garbage_grpc() -> int:
        grpc_compressed_call(grpc_port, gzip.compress(b"\xff" * 64))
        return 0

    short_deadline = dict(mlp_body, parameters={"timeout": 1})
    wrong_shape = {"inputs": [dict(mlp_body["inputs"][0], shape=[1, 63])]}
    return [
        ("malformed JSON", lambda: post("/v2/models/m/infer", b'{"inputs": [')),
        ("wrong shape", lambda: post("/v2/models/m/infer", json.dumps(wrong_shape).encode())),
        ("unknown model", lambda: post("/v2/models/nope/infer", SIMPLE)),
        ("declared over the limit", over_limit),
        ("gzip bomb", lambda: post("/v2/models/simple/infer", GZIP_BOMB, {"Content-Encoding": "gzip"})),
        ("1 ms client deadline", lambda: post("/v2/models/m/infer", json.dumps(short_deadline).encode())),
        ("garbage protobuf (gRPC, gzip)", garbage_grpc),
        ("client leaves unread", leaves_unread),
        ("silent socket 2 s", silent),
    ]


# Outcomes each bad input may get; 0 = the action does not read one.
ALLOWED = {"malformed JSON": {400}, "wrong shape": {400}, "unknown model": {404},
           "declared over the limit": {413}, "gzip bomb": {413}, "1 ms client deadline": {200, 504},
           "garbage protobuf (gRPC, gzip)": {0}, "client leaves unread": {0}, "silent socket 2 s": {0}}


def bad_traffic(actions: list[tuple[str, object]], tally: Tally, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        name, action = actions[i % len(actions)]
        i += 1
        try:
            outcome = action()
        except OSError as e:
            outcome = repr(e)
        if outcome in ALLOWED[name]:
            tally.add("bad_as_expected")
        else:
            tally.add("bad_unexpected", f"{name}: {outcome}")
        time.sleep(BAD_EVERY_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "modelgate")
    args = parser.parse_args()
    stop_on_sigterm()
    seconds = args.minutes * 60
    warmup = max(120.0, seconds / 10) if seconds >= 600 else seconds / 4
    body_dict, expected = request_and_reference()
    body_dict = {"inputs": body_dict["inputs"]}
    body = json.dumps(body_dict).encode()
    tally, stop = Tally(), threading.Event()
    events: list[tuple[float, str]] = []
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp, Processes(RESULTS / "soak") as procs:
        repo = make_repo(Path(tmp))
        config = Path(tmp) / "modelgate.toml"
        config.write_text('[[routes]]\nmodel = "m"\ntargets = [{ version = 1, weight = 100 }, '
                          '{ version = 3, weight = 0 }]\n')
        ports = [free_port() for _ in range(4)]
        token = Path(tmp) / "token"
        token.write_text(TOKEN + "\n")
        server = procs.start("modelgate", [
            str(args.binary), "serve", "--config", str(config), "--model-repository", str(repo),
            "--http-address", "127.0.0.1", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
            "--metrics-port", str(ports[2]), "--admin-port", str(ports[3]), "--admin-token-file", str(token),
            "--control-plane-port", "0", "--data-dir", str(Path(tmp) / "data")], env={"RUST_LOG": "warn"})
        server.wait_http(f"http://127.0.0.1:{ports[0]}/v2/health/ready", 120)
        pid, admin = server.popen.pid, Admin(ports[3])
        start = time.monotonic()
        threads = [threading.Thread(target=good_http, args=(ports[0], body, expected, tally, stop), daemon=True)
                   for _ in range(GOOD_HTTP_CLIENTS)]
        threads.append(threading.Thread(target=good_grpc, args=(ports[1], tally, stop), daemon=True))
        threads.append(threading.Thread(target=bad_traffic, args=(bad_inputs(ports[0], ports[1], body_dict), tally,
                                                                  stop), daemon=True))
        for t in threads:
            t.start()
        swaps = [(100, 0), (50, 50), (0, 100), (50, 50)]
        next_swap, swap_index, rolled_back = SWAP_EVERY_S, 0, None
        rollout_started = None
        while (now := time.monotonic() - start) < seconds:
            samples.append((now, rss(pid)))
            if rollout_started is None and now >= seconds / 2:
                status, _ = admin.call("PUT", "/admin/v1/routes/m", {"targets": [{"version": 1}, {"version": 2}],
                                       "rollout": {"canary": 2, "step_weights": [25, 50, 100], "interval": "10m"}})
                rollout_started = now
                events.append((now, f"rollout to failing canary 2 started (HTTP {status})"))
            if rollout_started is not None and rolled_back is None:
                _, route = admin.call("GET", "/admin/v1/routes/m")
                if route.get("rollout", {}).get("state") == "failed":
                    rolled_back = now - rollout_started
                    events.append((now, f"canary rolled back {rolled_back:.1f} s after the rollout began"))
                    status, _ = admin.call("PUT", "/admin/v1/routes/m", {"targets": [
                        {"version": 1, "weight": 100}, {"version": 3, "weight": 0}]})
                    events.append((now, f"route back on versions 1 and 3 (HTTP {status})"))
                elif now - rollout_started > 30:
                    events.append((now, "no rollback within 30 s"))
                    rolled_back = float("inf")
            if now >= next_swap and (rollout_started is None or rolled_back is not None):
                w1, w3 = swaps[swap_index % len(swaps)]
                swap_index += 1
                status, reply = admin.call("PUT", "/admin/v1/routes/m/weights", {"weights": [
                    {"version": 1, "weight": w1}, {"version": 3, "weight": w3}]})
                if status != 200:
                    tally.add("swap_failed", json.dumps(reply))
                events.append((now, f"weights 1:{w1} 3:{w3} (HTTP {status})"))
                next_swap += SWAP_EVERY_S
            time.sleep(1.0 if rollout_started is not None and rolled_back is None else 5.0)
        stop.set()
        for t in threads:
            t.join(40)
    after_warmup = [r for t, r in samples if warmup <= t < warmup + 60]
    last = [r for t, r in samples if t >= samples[-1][0] - 60]
    growth = statistics.median(last) / statistics.median(after_warmup) - 1 if after_warmup and last else None
    result = {"minutes": args.minutes, "warmup_s": warmup, "counts": tally.counts, "examples": tally.examples,
              "rss_after_warmup_mib": statistics.median(after_warmup) / 2**20 if after_warmup else None,
              "rss_last_minute_mib": statistics.median(last) / 2**20 if last else None,
              "rss_peak_mib": max(r for _, r in samples) / 2**20, "rss_growth": growth,
              "rollback_s": rolled_back, "events": events,
              "rss_samples": [(round(t, 1), r) for t, r in samples]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    missed = []
    if tally.counts.get("good_failed", 0):
        missed.append("failed good requests")
    if tally.counts.get("bad_unexpected", 0):
        missed.append("unexpected answers to bad inputs")
    if tally.counts.get("swap_failed", 0):
        missed.append("weight changes refused")
    if rolled_back is None or rolled_back == float("inf"):
        missed.append("no rollback")
    if growth is None or growth >= GROWTH_GOAL:
        missed.append("RSS growth")
    print(f"soak {args.minutes:g} min: good ok {tally.counts.get('good_ok', 0)}, good failed "
          f"{tally.counts.get('good_failed', 0)}, bad as expected {tally.counts.get('bad_as_expected', 0)}, "
          f"bad unexpected {tally.counts.get('bad_unexpected', 0)}; rollback after "
          f"{rolled_back if rolled_back is None else round(rolled_back, 1)} s; RSS after warm-up "
          f"{result['rss_after_warmup_mib']:.0f} MiB, last minute {result['rss_last_minute_mib']:.0f} MiB "
          f"(growth {growth * 100:+.1f} %), peak {result['rss_peak_mib']:.0f} MiB")
    for key, example in tally.examples.items():
        print(f"  first {key}: {example}")
    print(f"missed: {', '.join(missed) or '-'}; {out}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

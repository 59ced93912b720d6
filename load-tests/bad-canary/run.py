"""Load test "bad canary": how fast does modelgate roll a failing canary back, and how many
requests does the canary answer after it starts breaking?

The scenario: model `m` has version 1 (the `mlp` example) and version 2, a canary that loads
fine and fails every request (tests/models/make_test_models.py, `failing.onnx`). A route sends
the canary its first rollout step (25 %) under the default SLO policy (check every 500 ms,
2 consecutive failed checks, 20 requests per 10 s window, 1 % errors). An open-loop client sends
`--rate` requests per second (default 480, so the canary gets about 120 per second) and records
each request's send time, status and serving version. The admin API is polled for the rollout.

Reported (stdout and load-tests/results/bad-canary-<time>.json):

* rollback_s: from the send time of the first failed request (the first breaching request) to
  the `rolled_back` event of the rollout (the moment the canary weight became 0);
* canary_answered_after_breach: canary answers (all failures) to requests sent after the first
  breaching one; and how many of those were sent after the rollback (in flight or late);
* canary_rps: canary requests per second during the breach, to show the load was >= 100/s;
* baseline_failures: failures of version 1 (must be 0).

`--canary flaky --poison 0.4` serves `flaky.onnx` instead, which fails the requests whose input
holds a poison value, and the client poisons 40 % of its requests: a canary that fails on 40 % of
inputs. `--canary slow` serves `slow.onnx` (4,000 layers, 50 to 200 ms by the machine: `--slow-layers`) under
`max_p99_latency = "20ms"` (`--slo-ms`): a canary about 10x slower than its latency SLO. For every scenario the report
counts `breaching_answers`: the canary answers a client got that breach an SLO (a failure; or, for
the slow canary, an answer slower than `--slo-ms`), and of those how many were sent before the
rollback. `--first-step` sets the canary's share (its rate is `--rate` x that share), `--retry
off` and `--sequential off` turn off the per-request test and the retries of builds that have them
(the keys are only written when given: an older build refuses them).

`--healthy` runs the same route with a healthy canary (a copy of version 1) for `--duration`
seconds with steps 25/50/75/100 spread over the run, and reports the rollbacks (must be 0),
the failures, and where the rollout ended. With `--canary flaky --poison 0.005` it is a canary
failing half its error budget (0.5 % against 1 %); with `--baseline slow --canary slow
--canary-layers 1.2x --slo-ms N` one 20 % slower than a slow baseline but inside its SLO.

`--client rust` sends the load with `examples/open_loop.rs` (`cargo build --release --example
open_loop`) instead of Python threads, for rates this Python client cannot reach (1,000 canary
requests/s and more). `--hedge on` turns on hedging (`hedge_on_baseline`, at `--hedge-after-ms`,
default the SLO).

Targets (the exit status is 1 when one is missed): a bad canary's breaching answers at most
`--max-breaching` (25), and with retries on (the default) no failed answer from a failing or
flaky canary; a healthy run (`--healthy`) no rollback, and no failure with retries on.

Usage (from the repository root, after `cargo build --release`):

    .venv/models/bin/python load-tests/bad-canary/run.py [--rate 480] [--binary target/release/modelgate]
    .venv/models/bin/python load-tests/bad-canary/run.py --healthy --duration 600
    .venv/models/bin/python load-tests/bad-canary/run.py --client rust --rate 4000 --canary flaky

Everything runs on loopback ports the OS picks, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "load-tests" / "results"
TOKEN = "bad-canary-load-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_ms() -> float:
    return time.time() * 1000.0


POISON_VALUE = 100.0  # over flaky.onnx's POISON (tests/models/make_test_models.py)


def body(seed: int, poisoned: bool = False) -> bytes:
    data = [((i * 7 + seed * 13) % 97) / 97.0 - 0.5 for i in range(64)]
    if poisoned:
        data[seed % 64] = POISON_VALUE
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data}]}).encode()


def generate(out: Path, slow_layers: int) -> Path:
    made = subprocess.run(
        [sys.executable, str(REPO / "tests/models/make_test_models.py"), "--out", str(out),
         "--slow-layers", str(slow_layers)],
        check=True,
        capture_output=True,
        text=True,
    )
    print(made.stdout.strip())
    return out


def make_repo(dir: Path, args: argparse.Namespace) -> None:
    mlp = REPO / "models/mlp/1/model.onnx"
    models = generate(dir / "generated", args.slow_layers)
    canary_models = models if args.canary_layers == args.slow_layers else generate(
        dir / "generated-canary", args.canary_layers)
    canary = mlp if args.canary == "mlp" else canary_models / f"{args.canary}.onnx"
    baseline = mlp if args.baseline == "mlp" else models / "slow.onnx"
    for version, source in [(1, baseline), (2, canary)]:
        target = dir / "repo" / "m" / str(version)
        target.mkdir(parents=True)
        shutil.copy(source, target / "model.onnx")
    (dir / "repo" / "m" / "config.pbtxt").write_text(
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\nversion_policy: { all { } }\n'
        "dynamic_batching { }\ninstance_group [ { count: 1, kind: KIND_CPU } ]\n"
    )


def write_config(dir: Path, healthy: bool, duration: float, args: argparse.Namespace) -> Path:
    first = args.first_step
    if healthy:
        # Four steps spread over the run: the promotion lands at its end.
        interval = f"{max(1, int(duration / 4))}s"
        steps = [first] + [w for w in (50, 75, 100) if w > first]
    else:
        interval = "10m"
        steps = [first] + [w for w in (50, 100) if w > first]
    # Only the steps and the interval are set, and the latency SLO of the slow scenario: the
    # rest of the SLO policy is the default one.
    extra = ""
    if args.canary == "slow" or args.slo_ms_set or args.hedge == "on":
        extra += f', max_p99_latency = "{args.slo_ms}ms"'
    if args.sequential is not None:
        extra += f", sequential = {'true' if args.sequential == 'on' else 'false'}"
    if args.retry is not None:
        extra += f", retry_on_baseline = {'true' if args.retry == 'on' else 'false'}"
    if args.hedge == "on":
        extra += ", hedge_on_baseline = true"
        if args.hedge_after_ms is not None:
            extra += f', hedge_after = "{args.hedge_after_ms}ms"'
    config = dir / "modelgate.toml"
    config.write_text(
        f"""
[[routes]]
model = "m"
targets = [{{ version = 1 }}, {{ version = 2 }}]
rollout = {{ canary = 2, step_weights = {steps}, interval = "{interval}"{extra} }}
"""
    )
    return config


class Admin:
    def __init__(self, port: int):
        self.port = port

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        reply = conn.getresponse()
        data = json.loads(reply.read())
        conn.close()
        return data


def server_failures(port: int, version: int) -> int:
    """Failed requests of `m` version `version`, from the server's Triton statistics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", f"/v2/models/m/versions/{version}/stats")
    stats = json.loads(conn.getresponse().read())
    conn.close()
    return stats["model_stats"][0]["inference_stats"]["fail"]["count"]


def counters(port: int, name: str) -> dict[str, float]:
    """Each `outcome` of the counter `name` on /metrics (summed over its other labels)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and 'outcome="' in line:
            outcome = line.split('outcome="')[1].split('"')[0]
            out[outcome] = out.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def wait_ready(port: int, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"modelgate exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/v2/models/m/versions/2/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("modelgate did not become ready")


class Load:
    """Open-loop load: request k is due at start + k / rate, spread over `threads` connections."""

    def __init__(self, port: int, rate: float, threads: int, poison: float):
        self.port, self.rate, self.threads, self.poison = port, rate, threads, poison
        self.records: list[list[tuple[float, float, int, int]]] = [[] for _ in range(threads)]
        self.stop = threading.Event()
        self.late = 0

    def worker(self, index: int, start: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        out = self.records[index]
        k = index
        while not self.stop.is_set():
            due = start + k / self.rate
            k += self.threads
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.05:
                self.late += 1
            sent = now_ms()
            try:
                # Request k is poisoned when the share of poisoned requests up to k grows past a whole one.
                poisoned = int((k + 1) * self.poison) > int(k * self.poison)
                conn.request("POST", "/v2/models/m/infer", body=body(k, poisoned),
                             headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                data = reply.read()
                status = reply.status
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                status, data = 599, b"{}"
            version = 0
            if status == 200:
                version = int(json.loads(data)["model_version"])
            out.append((sent, now_ms(), status, version))

    def run(self) -> list[threading.Thread]:
        start = time.time() + 0.2
        threads = [threading.Thread(target=self.worker, args=(i, start), daemon=True) for i in range(self.threads)]
        for t in threads:
            t.start()
        return threads

    def all(self) -> list[tuple[float, float, int, int]]:
        return sorted(r for rs in self.records for r in rs)


class RustLoad:
    """The same open-loop load from examples/open_loop.rs, for rates Python cannot reach."""

    BINARY = REPO / "target/release/examples/open_loop"

    def __init__(self, port: int, rate: float, poison: float, duration: float, out: Path):
        if not self.BINARY.exists():
            raise SystemExit(f"{self.BINARY} is missing: run cargo build --release --example open_loop")
        self.out = out
        self.args = [str(self.BINARY), "--url", f"http://127.0.0.1:{port}/v2/models/m/infer", "--rate", str(rate),
                     "--poison", str(poison), "--duration", str(duration), "--out", str(out)]
        self.process: subprocess.Popen | None = None
        self.late = None

    def run(self) -> list:
        self.process = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True)
        return []

    def finish(self) -> None:
        """Stops the sends (SIGTERM), waits for the answers in flight, reads the records."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        print(err.strip())
        if self.process.returncode != 0:
            raise SystemExit(f"open_loop exited with {self.process.returncode}")
        if "late by" in err:
            self.late = int(err.split("/s, ")[1].split(" late")[0])

    def all(self) -> list[tuple[float, float, int, int]]:
        records = []
        with open(self.out) as f:
            next(f)
            for line in f:
                sent, latency, status, version = line.strip().split(",")
                latency = float(latency)
                done = float(sent) + latency if latency == latency else float("inf")  # NaN: never answered
                records.append((float(sent), done, int(status), int(version)))
        return sorted(records)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, default=REPO / "target/release/modelgate")
    parser.add_argument("--rate", type=float, default=480.0, help="requests per second, all versions")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--healthy", action="store_true", help="healthy canary: count false rollbacks")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load with --healthy")
    parser.add_argument("--canary", choices=["failing", "flaky", "slow", "mlp"], default=None,
                        help="the canary: fails every request, fails poisoned inputs, is slow, or is a copy of "
                             "the MLP (default: failing; mlp with --healthy)")
    parser.add_argument("--baseline", choices=["mlp", "slow"], default="mlp",
                        help="version 1: the MLP, or slow.onnx of --slow-layers")
    parser.add_argument("--canary-layers", type=int, default=None,
                        help="MatMuls of the canary's slow.onnx (default --slow-layers)")
    parser.add_argument("--client", choices=["python", "rust"], default="python",
                        help="the load generator: Python threads, or examples/open_loop.rs")
    parser.add_argument("--hedge", choices=["on", "off"], default=None, help="hedge_on_baseline (newer builds)")
    parser.add_argument("--hedge-after-ms", type=int, default=None, help="hedge_after in ms (default: the SLO)")
    parser.add_argument("--max-breaching", type=int, default=25, help="target: breaching answers at most")
    parser.add_argument("--poison", type=float, default=0.4, help="share of requests poisoned (flaky canary)")
    parser.add_argument("--slow-layers", type=int, default=4000, help="MatMuls of slow.onnx (50-200 ms, by the machine)")
    parser.add_argument("--slo-ms", type=int, default=None, help="max_p99_latency in ms (slow canary: 20)")
    parser.add_argument("--first-step", type=int, default=25, help="canary weight of the first step")
    parser.add_argument("--retry", choices=["on", "off"], default=None, help="retry_on_baseline (newer builds)")
    parser.add_argument("--sequential", choices=["on", "off"], default=None, help="sequential (newer builds)")
    args = parser.parse_args()
    if args.canary is None:
        args.canary = "mlp" if args.healthy else "failing"
    if args.canary_layers is None:
        args.canary_layers = args.slow_layers
    args.slo_ms_set = args.slo_ms is not None
    if args.slo_ms is None:
        args.slo_ms = 20 if args.canary == "slow" else 500
    if args.canary != "flaky":
        args.poison = 0.0
    if not args.binary.exists():
        raise SystemExit(f"{args.binary} is missing: run cargo build --release first")

    work = Path(tempfile.mkdtemp(prefix="modelgate-bad-canary-"))
    make_repo(work, args)
    config = write_config(work, args.healthy, args.duration, args)
    http_port, admin_port = free_port(), free_port()
    log = open(work / "modelgate.log", "w")
    env = dict(os.environ, MODELGATE_ADMIN_TOKEN=TOKEN, RUST_LOG="info,ort=warn")
    server = subprocess.Popen(
        [str(args.binary), "serve", "--config", str(config), "--model-repository", str(work / "repo"),
         "--http-port", str(http_port), "--grpc-port", "0", "--metrics-port", "0",
         "--admin-port", str(admin_port), "--strict-readiness", "false"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    admin = Admin(admin_port)
    scenario = f"healthy canary ({args.canary})" if args.healthy else f"bad canary ({args.canary})"
    result: dict = {"scenario": scenario, "client": args.client, "rate": args.rate, "canary_share": args.first_step,
                    "config": config.read_text().strip().splitlines()[-1]}
    try:
        wait_ready(http_port, server)
        limit = args.duration if args.healthy else 60.0
        if args.client == "rust":
            load = RustLoad(http_port, args.rate, args.poison, limit + 5.0, work / "records.csv")
        else:
            load = Load(http_port, args.rate, args.threads, args.poison)
        started = now_ms()
        threads = load.run()
        rolled_back_seen = None
        polls = []
        while (now_ms() - started) / 1000.0 < limit:
            route = admin.get("/admin/v1/routes/m")
            rollout = route["rollout"]
            polls.append((now_ms(), rollout["state"], rollout["canary_weight"]))
            if rollout["state"] == "failed" and rolled_back_seen is None:
                rolled_back_seen = now_ms()
                if not args.healthy:
                    limit = (rolled_back_seen - started) / 1000.0 + 3.0
            time.sleep(0.05)
        if isinstance(load, RustLoad):
            load.finish()
        else:
            load.stop.set()
            for t in threads:
                t.join()
        route = admin.get("/admin/v1/routes/m")
        records = load.all()
        rollout = route["rollout"]
        events = rollout["events"]
        failures = [r for r in records if r[2] != 200]
        result.update(
            requests=len(records),
            achieved_rps=len(records) / ((records[-1][0] - records[0][0]) / 1000.0) if len(records) > 1 else 0,
            late_sends=load.late,
            final_state=rollout["state"],
            final_weights={t["version"]: t["weight"] for t in route["targets"]},
            events=events,
            failures=len(failures),
            baseline_failures=server_failures(http_port, 1),
            canary_failures=server_failures(http_port, 2),
            baseline_answers=sum(1 for r in records if r[3] == 1),
            canary_answers_ok=sum(1 for r in records if r[3] == 2),
            p50_ms={
                str(v): percentile([r[1] - r[0] for r in records if r[3] == v], 0.50) for v in (1, 2)
            },
            p99_ms={
                str(v): percentile([r[1] - r[0] for r in records if r[3] == v], 0.99) for v in (1, 2)
            },
        )
        rolled = [e for e in events if e["kind"] == "rolled_back"]
        result["rollbacks"] = len(rolled)
        # What a client got that breaches an SLO: a failure (the baseline fails none, so every
        # failure is the canary's), or a canary answer slower than the latency SLO.
        breaching = [r for r in records if r[2] != 200 or (r[3] == 2 and r[1] - r[0] > args.slo_ms)]
        result["breaching_answers"] = len(breaching)
        # What a client felt, whoever answered: a hedged answer can be the baseline's and still late.
        result["answers_slower_than_slo_any_version"] = sum(1 for r in records if r[2] == 200 and r[1] - r[0] > args.slo_ms)
        result["retries"] = counters(http_port, "modelgate_route_canary_retries_total")
        result["hedges"] = counters(http_port, "modelgate_route_canary_hedges_total")
        if not args.healthy:
            if not rolled:
                raise SystemExit(f"no rollback: {json.dumps(result, indent=2)}")
            weight0 = rolled[0]["at_unix_ms"]
            result["breaching_answers_sent_before_rollback"] = sum(1 for r in breaching if r[0] < weight0 + 1)
            result["rollback_after_first_request_s"] = (weight0 - records[0][0]) / 1000.0
            if not failures:
                result["rollback_message"] = rolled[0]["message"]
                failures = breaching
            if not failures:
                failures = [records[0]]
            first_breach = failures[0][0]
            weight0 = rolled[0]["at_unix_ms"]
            after_breach = [r for r in failures if r[0] >= first_breach]
            result.update(
                first_breaching_request_ms=first_breach,
                weight_0_ms=weight0,
                rollback_s=(weight0 - first_breach) / 1000.0,
                rollback_seen_by_admin_poll_s=(rolled_back_seen - first_breach) / 1000.0,
                canary_answered_after_breach=len(after_breach),
                # Event times are whole milliseconds, stamped after the route swap: a request
                # sent within that millisecond may have been routed just before it.
                canary_answered_after_rollback=sum(1 for r in failures if r[0] >= weight0 + 1),
                canary_rps=len(after_breach) / max(1e-3, (weight0 - first_breach) / 1000.0),
                rollback_message=rolled[0]["message"],
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "healthy-canary" if args.healthy else "bad-canary"
    out = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    shutil.copy(work / "modelgate.log", out.with_suffix(".log"))
    shutil.rmtree(work, ignore_errors=True)
    keys = ["scenario", "config", "client", "rate", "canary_share", "achieved_rps", "requests", "failures", "baseline_failures", "canary_failures",
            "baseline_answers", "canary_answers_ok",
            "final_state", "final_weights", "rollbacks", "p50_ms", "p99_ms", "late_sends", "retries", "hedges",
            "answers_slower_than_slo_any_version"]
    if not args.healthy:
        keys += ["breaching_answers", "breaching_answers_sent_before_rollback", "rollback_after_first_request_s",
                 "rollback_s", "rollback_seen_by_admin_poll_s", "canary_rps", "canary_answered_after_breach",
                 "canary_answered_after_rollback", "rollback_message"]
    for key in keys:
        print(f"{key:32} {result.get(key)}")
    print(f"results: {out}")
    missed = missed_targets(result, args)
    for line in missed:
        print(f"MISSED: {line}")
    return 1 if missed else 0


def missed_targets(result: dict, args: argparse.Namespace) -> list[str]:
    """Issue 18's targets this run missed."""
    missed = []
    retries_on = args.retry != "off"
    if args.healthy:
        if result["rollbacks"]:
            missed.append(f"{result['rollbacks']} rollback(s) of a canary inside its SLOs (target 0)")
        if retries_on and result["failures"]:
            missed.append(f"{result['failures']} failed answers with retries on (target 0)")
        return missed
    if result["breaching_answers"] > args.max_breaching:
        missed.append(f"{result['breaching_answers']} breaching answers (target at most {args.max_breaching})")
    if retries_on and args.canary in ("failing", "flaky") and result["failures"]:
        missed.append(f"{result['failures']} failed answers with retries on (target 0)")
    return missed


if __name__ == "__main__":
    sys.exit(main())

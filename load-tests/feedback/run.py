"""Load test "feedback": ground truth joined to predictions under load, A/B verdicts, the
accuracy gate, and what keeping predictions costs.

Two ONNX classifiers are made here (10 classes, input `x` FP32 [batch, 11], output `scores` FP32
[batch, 10]): version 1 scores x[0:10] (its class is the argmax of the first ten features);
version 2 adds 100 × x[10] to class 0. A labelled synthetic set of 10,000 rows is made with exact
shares: 87 % rows both versions get right (flag x[10] = 0, label = the argmax), 3 % rows only
version 1 gets right (flag 1: version 2 answers class 0), 10 % rows both get wrong (label another
class). So on the set, version 1's accuracy is 0.90 and version 2's 0.87, by construction.

Scenarios, each on its own route of one gateway (release build, loopback ports):

* `ab`: route `clf`, versions 1 and 2 at 50/50, `feedback = {}`; `--requests` (20,000) requests
  at `--concurrency` threads, rows in order; each answer's truth is sent `--delay` seconds later
  (batch form). Every 1,000 truths the A/B result is read. Goals: each version's accuracy within
  ±0.01 of 0.90 / 0.87 at the end; version 2's verdict `worse` before the last truth.
* `equal`: route `same`, two copies of version 1 at 50/50: the verdict is `not yet known` at
  every read (no false verdict).
* `gate`: route `gate`, baseline 1 and canary 2 under a rollout (steps 50 → 100, `interval` 30 s,
  `min_accuracy_delta = -0.005`, `on_quality_breach = "hold"`): traffic and truths for 36 s.
  Goal: the canary is still at 50 % past the interval (held, not promoted), with a quality_hold
  event.
* `cost`: wrk at c=64 on route `on` (50/50 of version 1 copies, `feedback = {}`) and route `off`
  (the same without feedback), 8 rounds of 4 s each, the order swapped every round. Goal: the
  median of the rounds' on / off ratios ≥ 0.97.

Exit status 1 when a goal is missed. The numbers go to stdout and
load-tests/results/feedback-<time>.json.

Usage (from the repository root, after `cargo build --release`):

    .venv/models/bin/python load-tests/feedback/run.py [--requests 20000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadgen import wrk  # noqa: E402
from procs import REPO, RESULTS, Processes, free_port, stop_on_sigterm  # noqa: E402

TOKEN = "feedback-load-test-token-0123456789"
ROWS = 10_000
CLASSES = 10
ACCURACY = {1: 0.90, 2: 0.87}


# === models and the labelled set ===

def classifier(flag_weight: float) -> onnx.ModelProto:
    """scores = x @ W: W is the identity on the first ten features, and row 10 puts
    `flag_weight` on class 0."""
    w = np.zeros((CLASSES + 1, CLASSES), dtype=np.float32)
    w[:CLASSES, :CLASSES] = np.eye(CLASSES, dtype=np.float32)
    w[CLASSES, 0] = flag_weight
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"])], "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CLASSES + 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(repo: Path, name: str, versions: dict[int, onnx.ModelProto]) -> None:
    for version, model in versions.items():
        (repo / name / str(version)).mkdir(parents=True)
        onnx.save(model, str(repo / name / str(version) / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
        'version_policy: { all { } }\ndynamic_batching { }\ninstance_group [ { count: 1, kind: KIND_CPU } ]\n')


def labelled_set(seed: int = 19) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels with exact shares: 87 % both right, 3 % version 1 only, 10 % both wrong."""
    rng = np.random.default_rng(seed)
    kinds = np.array([0] * 8700 + [1] * 300 + [2] * 1000)
    rng.shuffle(kinds)
    classes = rng.integers(1, CLASSES, size=ROWS)  # 1..9: a flagged row's class is never 0
    x = rng.normal(0.0, 0.05, size=(ROWS, CLASSES + 1)).astype(np.float32)
    x[np.arange(ROWS), classes] += 1.0
    x[:, CLASSES] = (kinds == 1).astype(np.float32)
    labels = np.where(kinds == 2, (classes + 1 + rng.integers(0, CLASSES - 2, size=ROWS)) % CLASSES, classes)
    labels = np.where((kinds == 2) & (labels == classes), (classes + 1) % CLASSES, labels)
    v1 = np.argmax(x[:, :CLASSES], axis=1)
    v2 = np.argmax(x[:, :CLASSES] + np.outer(x[:, CLASSES], np.eye(CLASSES)[0]) * 100, axis=1)
    assert abs((v1 == labels).mean() - 0.90) < 1e-9 and abs((v2 == labels).mean() - 0.87) < 1e-9
    return x, labels


# === the gateway ===

def config(repo: Path, http_port: int, admin_port: int, token: Path) -> str:
    both = "targets = [{ version = 1, weight = 50 }, { version = 2, weight = 50 }]"
    gate = ('{ canary = 2, step_weights = [50, 100], interval = "30s", check_interval = "200ms", '
            'max_p99_latency = "5s", min_accuracy_delta = -0.005, on_quality_breach = "hold" }')
    return f"""
[server]
address = "127.0.0.1"
http_port = {http_port}
grpc_port = 0
metrics_port = 0
[repository]
path = "{repo}"
[admin]
port = {admin_port}
token_file = "{token}"
[[routes]]
model = "clf"
{both}
feedback = {{ ttl = "1h", max_entries = 1000000 }}
[[routes]]
model = "same"
{both}
feedback = {{ }}
[[routes]]
model = "on"
{both}
feedback = {{ }}
[[routes]]
model = "off"
{both}
[[routes]]
model = "gate"
targets = [{{ version = 1 }}, {{ version = 2 }}]
feedback = {{ }}
rollout = {gate}
"""


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        self.connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        self.connection.request("GET", path, headers=headers or {})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())


def admin(port: int, path: str) -> dict:
    status, body = Client(port).get(path, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, (path, status, body)
    return body


def drive(http_port: int, admin_port: int, model: str, bodies: list[bytes], labels: np.ndarray,
          requests: int, concurrency: int, delay: float, until: float | None = None,
          on_read=None) -> dict:
    """Sends `requests` inferences (or until time `until`) over `concurrency` threads, and each
    answer's truth `delay` seconds later in batches; calls `on_read(truths_sent)` every 1,000 truths."""
    pending: queue.Queue = queue.Queue()
    counter = iter(range(10**9))
    lock = threading.Lock()
    stats = {"sent": 0, "errors": 0, "truths": 0, "refused": 0}

    def infer_worker():
        client = Client(http_port)
        while True:
            with lock:
                i = next(counter)
            if (until is None and i >= requests) or (until is not None and time.monotonic() >= until):
                return
            row = i % ROWS
            status, answer = client.post(f"/v2/models/{model}/infer", bodies[row])
            with lock:
                stats["sent"] += 1
            if status != 200:
                with lock:
                    stats["errors"] += 1
                continue
            pending.put((time.monotonic() + delay, {"id": answer["id"], "label": int(labels[row])}))

    def feedback_worker(done: threading.Event):
        client = Client(http_port)
        batch: list[dict] = []
        next_read = 1000
        while not (done.is_set() and pending.empty() and not batch):
            try:
                due, item = pending.get(timeout=0.05)
                time.sleep(max(0.0, due - time.monotonic()))
                batch.append(item)
            except queue.Empty:
                pass
            if batch and (len(batch) >= 200 or pending.empty()):
                status, answer = client.post(f"/v2/models/{model}/feedback", json.dumps({"feedback": batch}).encode())
                assert status == 200, answer
                stats["truths"] += answer["accepted"]
                stats["refused"] += len(batch) - answer["accepted"]
                batch = []
                while on_read and stats["truths"] >= next_read:
                    on_read(stats["truths"])
                    next_read += 1000

    done = threading.Event()
    workers = [threading.Thread(target=infer_worker) for _ in range(concurrency)]
    feeder = threading.Thread(target=feedback_worker, args=(done,))
    start = time.monotonic()
    feeder.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    feeder.join()
    stats["seconds"] = time.monotonic() - start
    return stats


def accuracies(admin_port: int, model: str) -> dict[int, tuple[float, int]]:
    route = admin(admin_port, f"/admin/v1/routes/{model}")
    return {t["version"]: (t["quality"]["total"]["accuracy"], t["quality"]["total"]["labelled"])
            for t in route["targets"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between an answer and its truth")
    parser.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "modelgate")
    parser.add_argument("--scenarios", default="gate,ab,equal,cost", help="a comma-separated subset of gate, ab, equal, cost")
    parser.add_argument("--cost-rounds", type=int, default=8, help="pairs of wrk runs, on and off")
    parser.add_argument("--cost-seconds", type=int, default=4, help="length of each wrk run")
    args = parser.parse_args()
    stop_on_sigterm()
    x, labels = labelled_set()
    bodies = [json.dumps({"inputs": [{"name": "x", "shape": [1, CLASSES + 1], "datatype": "FP32",
                                      "data": row.tolist()}]}).encode() for row in x]
    report: dict = {"requests": args.requests, "concurrency": args.concurrency, "delay_s": args.delay}
    failures: list[str] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scenarios = set(args.scenarios.split(","))
    with tempfile.TemporaryDirectory() as tmp, Processes(RESULTS / f"feedback-{stamp}") as procs:
        tmp = Path(tmp)
        repo = tmp / "models"
        v1, v2 = classifier(0.0), classifier(100.0)
        write_model(repo, "clf", {1: v1, 2: v2})
        write_model(repo, "gate", {1: v1, 2: v2})
        for name in ("same", "on", "off"):
            write_model(repo, name, {1: v1, 2: v1})
        (tmp / "token").write_text(TOKEN)
        http_port, admin_port = free_port(), free_port()
        (tmp / "modelgate.toml").write_text(config(repo, http_port, admin_port, tmp / "token"))
        gateway = procs.start("modelgate", [str(args.binary), "serve", "--config", str(tmp / "modelgate.toml"),
                                            "--data-dir", str(tmp / "data"), "--control-plane-port", "0"])
        gateway.wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=60)
        ports = (http_port, admin_port)
        # gate first: its rollout's interval runs from the gateway's start.
        if "gate" in scenarios:
            gate(ports, bodies, labels, args, report, failures)
        if "ab" in scenarios:
            ab(ports, bodies, labels, args, report, failures)
        if "equal" in scenarios:
            equal(ports, bodies, labels, args, report, failures)
        if "cost" in scenarios:
            body = tmp / "body.json"
            body.write_bytes(bodies[0])
            cost(ports, body, args, report, failures)

    report["failures"] = failures
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"feedback-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    summary = dict(report)
    if "ab" in summary:
        summary["ab"] = {k: v for k, v in report["ab"].items() if k not in ("reads", "final")}
    print(json.dumps(summary, indent=2))
    print(f"written {out}")
    for f in failures:
        print("MISSED:", f)
    return 1 if failures else 0


def reader(admin_port: int, model: str, reads: list):
    """Reads version 2's A/B verdict into `reads` as (truths sent, verdict, n)."""
    def read(truths: int):
        result = admin(admin_port, f"/admin/v1/routes/{model}/ab")
        arm = next(a for a in result["arms"] if a["version"] == 2)
        reads.append((truths, arm.get("comparison", {}).get("verdict", "not yet known"), arm["n"]))
    return read


def gate(ports, bodies, labels, args, report, failures) -> None:
    """Traffic and truths until 36 s after the start (the step's interval is 30 s)."""
    http_port, admin_port = ports
    start = admin(admin_port, "/admin/v1/routes/gate")["rollout"]["events"][0]["at_unix_ms"] / 1000
    until = time.monotonic() + max(0.0, start + 36 - time.time())
    drive(http_port, admin_port, "gate", bodies, labels, 0, args.concurrency, args.delay, until=until)
    rollout = admin(admin_port, "/admin/v1/routes/gate")["rollout"]
    kinds = [e["kind"] for e in rollout["events"]]
    report["gate"] = {"state": rollout["state"], "canary_weight": rollout["canary_weight"], "events": kinds,
                      "messages": [e["message"] for e in rollout["events"]],
                      "accuracy": accuracies(admin_port, "gate")}
    if not (rollout["state"] == "progressing" and rollout["canary_weight"] == 50 and "quality_hold" in kinds):
        failures.append(f"gate: the worse canary was not held at 50 %: {report['gate']}")


def ab(ports, bodies, labels, args, report, failures) -> None:
    http_port, admin_port = ports
    reads: list = []
    stats = drive(http_port, admin_port, "clf", bodies, labels, args.requests, args.concurrency, args.delay,
                  on_read=reader(admin_port, "clf", reads))
    acc = accuracies(admin_port, "clf")
    first_worse = next((t for t, verdict, _ in reads if verdict == "worse"), None)
    report["ab"] = {"stats": stats, "accuracy": acc, "first_worse_at_truths": first_worse,
                    "reads": reads, "final": admin(admin_port, "/admin/v1/routes/clf/ab")}
    for version, (value, n) in acc.items():
        if value is None or abs(value - ACCURACY[version]) > 0.01:
            failures.append(f"ab: version {version} accuracy {value} over {n} labels, expected {ACCURACY[version]} ± 0.01")
    if first_worse is None or first_worse >= args.requests:
        failures.append(f"ab: version 2 not judged worse before {args.requests} truths (reads: {reads})")


def equal(ports, bodies, labels, args, report, failures) -> None:
    http_port, admin_port = ports
    reads: list = []
    stats = drive(http_port, admin_port, "same", bodies, labels, args.requests, args.concurrency, args.delay,
                  on_read=reader(admin_port, "same", reads))
    false_verdicts = [r for r in reads if r[1] != "not yet known"]
    report["equal"] = {"stats": stats, "accuracy": accuracies(admin_port, "same"), "reads": len(reads),
                       "false_verdicts": false_verdicts}
    if false_verdicts or not reads:
        failures.append(f"equal: verdicts other than 'not yet known': {false_verdicts} of {len(reads)} reads")


def cost(ports, body: Path, args, report, failures) -> None:
    """wrk at c=64 on `on` and `off` in pairs, the order swapped every round so that a drift of
    the machine's speed weighs on both; the ratio is the median of the rounds' ratios."""
    http_port, admin_port = ports
    runs: dict[str, list[float]] = {"on": [], "off": []}
    ratios = []
    for round_ in range(args.cost_rounds):
        for model in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
            result = wrk(f"http://127.0.0.1:{http_port}/v2/models/{model}/infer", body, 64, seconds=args.cost_seconds)
            if result.errors:
                failures.append(f"cost: {result.errors} errors on route {model}")
            runs[model].append(result.rps)
        ratios.append(runs["on"][-1] / runs["off"][-1])
    ratio = sorted(ratios)[len(ratios) // 2] if len(ratios) % 2 else sum(sorted(ratios)[len(ratios) // 2 - 1:][:2]) / 2
    report["cost"] = {"rps_on": runs["on"], "rps_off": runs["off"], "round_ratios": ratios, "median_ratio": ratio,
                      "sum_ratio": sum(runs["on"]) / sum(runs["off"]),
                      "index": admin(admin_port, "/admin/v1/routes/on")["feedback"]}
    if ratio < 0.97:
        failures.append(f"cost: feedback on / off throughput {ratio:.3f} < 0.97")


if __name__ == "__main__":
    sys.exit(main())

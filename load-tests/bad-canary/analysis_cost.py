#!/usr/bin/env python3
"""What the per-request analysis costs: one binary, a rollout route with a healthy canary, the
sequential tests and the retries on against off, in the same run.

Model `m` has versions 1 and 2, both `models/mlp`; the route is a rollout with the canary at 50 %
(interval 1h: no step during the run; max_p99_latency 5s: a busy machine never rolls it back).
"on" is the default policy (sequential tests and retries on); "off" sets `sequential = false` and
`retry_on_baseline = false`, leaving the interval checks alone. The two alternate for `--rounds`
rounds of `wrk -t1` at 64 connections (and 1, for the latency), so drift in the machine's load falls
on both. Target (issue 18): "on" keeps at least 98 % of "off"'s c=64 throughput (median of the
rounds' on/off ratios).

    cargo build --release --bin modelgate
    .venv/client/bin/python load-tests/bad-canary/analysis_cost.py [--rounds 3] [--seconds 5]

Writes load-tests/results/analysis_cost.{md,csv}. Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadgen import WrkResult, wrk  # noqa: E402
from procs import REPO, RESULTS, Processes, free_port, http_post_json, modelgate_argv, stop_on_sigterm  # noqa: E402
from report import Check, Report, markdown_table  # noqa: E402

CONNECTIONS = (1, 64)
POLICY = {
    "on": "",
    "off": ", sequential = false, retry_on_baseline = false",
}


def request() -> dict:
    row = [((i * 37) % 101) / 101.0 for i in range(64)]
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    for version in (1, 2):
        target = repo / "m" / str(version)
        target.mkdir(parents=True)
        shutil.copy(REPO / "models/mlp/1/model.onnx", target / "model.onnx")
    (repo / "m" / "config.pbtxt").write_text(
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\nversion_policy: { all { } }\n'
        "dynamic_batching { }\ninstance_group [ { count: 1, kind: KIND_CPU } ]\n"
    )
    return repo


def write_config(root: Path, name: str) -> Path:
    config = root / f"{name}.toml"
    config.write_text(
        f"""
[[routes]]
model = "m"
targets = [{{ version = 1 }}, {{ version = 2 }}]
rollout = {{ canary = 2, step_weights = [50, 100], interval = "1h", max_p99_latency = "5s"{POLICY[name]} }}
"""
    )
    return config


def measure(procs: Processes, binary: Path, repo: Path, config: Path, body_file: Path, body: dict,
            seconds: int) -> dict[int, WrkResult]:
    http_port, grpc_port = free_port(), free_port()
    argv = modelgate_argv(binary, repo, http_port, grpc_port, ["m"]) + ["--config", str(config)]
    server = procs.start(f"modelgate-{config.stem}", argv)
    url = f"http://127.0.0.1:{http_port}/v2/models/m/infer"
    server.wait_http(f"http://127.0.0.1:{http_port}/v2/models/m/versions/2/ready", timeout=60)
    status, reply = http_post_json(url, body)
    if status != 200 or not reply.get("outputs"):
        raise RuntimeError(f"{config.stem}: answered {status} {reply}")
    results = {c: wrk(url, body_file, c, seconds) for c in CONNECTIONS}
    server.check_running()
    procs.stop(server)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, default=REPO / "target/release/modelgate")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default: %(default)s)")
    args = parser.parse_args()
    stop_on_sigterm()
    body = request()
    runs: dict[str, list[dict[int, WrkResult]]] = {"on": [], "off": []}
    report = Report("analysis_cost", "Per-request analysis on vs off: rollout route, healthy canary at 50 %, wrk -t1")
    with tempfile.TemporaryDirectory(prefix="mg-cost-") as tmp, Processes(RESULTS / "logs") as procs:
        root = Path(tmp)
        repo = make_repo(root)
        body_file = root / "body.json"
        body_file.write_text(json.dumps(body, separators=(",", ":")))
        for round_ in range(args.rounds):
            for name in ("off", "on"):
                result = measure(procs, args.binary.resolve(), repo, write_config(root, name), body_file, body,
                                 args.seconds)
                runs[name].append(result)
                print(f"round {round_ + 1} {name:<3} c=1 p50 {result[1].p50_us:6.0f} µs {result[1].rps:8.0f} req/s | "
                      f"c=64 {result[64].rps:8.0f} req/s p50 {result[64].p50_us:6.0f} µs "
                      f"errors {result[1].errors + result[64].errors}", flush=True)

    def median(name: str, pick) -> float:
        return statistics.median(pick(r) for r in runs[name])

    rows = []
    for name in ("off", "on"):
        for i, r in enumerate(runs[name]):
            rows.append([name, i + 1, r[1].p50_us, r[1].rps, r[64].rps, r[64].p50_us, r[1].errors + r[64].errors])
            for c, w in r.items():
                report.csv_rows.append({"analysis": name, "round": i + 1, "connections": c, "per_s": w.rps,
                                        "p50_us": w.p50_us, "p99_us": w.p99_us, "errors": w.errors})
        rows.append([f"**{name} median**", "", median(name, lambda r: r[1].p50_us), median(name, lambda r: r[1].rps),
                     median(name, lambda r: r[64].rps), median(name, lambda r: r[64].p50_us), ""])
    # Each round pairs an on-run with the off-run next to it, so the machine's load of the moment
    # falls on both: the median of those paired ratios is the checked number (as in
    # drift/throughput.py); the ratio of the two medians and of the sums are printed beside it.
    paired = [on[64].rps / off[64].rps for on, off in zip(runs["on"], runs["off"])]
    ratio = statistics.median(paired)
    of_medians = median("on", lambda r: r[64].rps) / median("off", lambda r: r[64].rps)
    of_sums = sum(r[64].rps for r in runs["on"]) / sum(r[64].rps for r in runs["off"])
    errors = sum(w.errors for name in runs for r in runs[name] for w in r.values())
    report.add(f"`{args.binary}`, {args.rounds} alternating rounds of wrk {args.seconds} s. Latencies in µs.\n\n"
               + markdown_table(["analysis", "round", "c=1 p50", "c=1 req/s", "c=64 req/s", "c=64 p50", "errors"],
                                rows)
               + f"\n\nc=64 req/s on / off: median of the rounds' ratios {ratio:.3f} (rounds "
               + f"{min(paired):.3f}-{max(paired):.3f}); ratio of the medians {of_medians:.3f}; of the sums {of_sums:.3f}.")
    report.checks.append(Check("c=64 req/s: on / off (median of rounds)", ratio, 0.98))
    report.checks.append(Check("errors", float(errors), 0.0, higher_is_better=False, unit=""))
    report.write(readme=False)
    print(f"c=64 req/s on / off: median of rounds {ratio:.3f}, of medians {of_medians:.3f}, of sums {of_sums:.3f}")
    return 0 if all(check.passed for check in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())

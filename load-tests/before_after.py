#!/usr/bin/env python3
"""The request path before and after a change: two modelgate binaries, same model, same load, one run.

Serves models/mlp (64-256-256-10, one JSON row per request) from each binary in turn and drives it
with `wrk -t1` at 1 and at 64 connections. The binaries alternate (before, after, before, after, ...)
for `--rounds` rounds, so drift in the machine's load falls on both; the table gives each round and
the median, and the ratios after / before.

Targets (a change to the hot path must not make it slower, within the noise of this machine):
after's median c=64 req/s at least 0.95 x before's, and after's median c=1 p50 at most before's + 5 µs.
Exits 1 when a target is missed.

    cargo build --release --features torch                      # the after binary
    git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release --features torch)
    .venv/client/bin/python load-tests/before_after.py --before /tmp/before/target/release/modelgate \\
        --after target/release/modelgate [--rounds 3] [--seconds 5]

Writes load-tests/results/before_after.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from loadgen import WrkResult, wrk
from procs import REPO, RESULTS, Processes, free_port, http_post_json, modelgate_argv, stop_on_sigterm
from report import Check, Report, markdown_table

MODEL = "mlp"
CONNECTIONS = (1, 64)


def request() -> dict:
    row = [((i * 37) % 101) / 101.0 for i in range(64)]
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}


def measure(procs: Processes, binary: Path, body_file: Path, body: dict, seconds: int) -> dict[int, WrkResult]:
    http_port, grpc_port = free_port(), free_port()
    server = procs.start(f"modelgate-{binary.parent.parent.parent.name}",
                         modelgate_argv(binary, REPO / "models", http_port, grpc_port, [MODEL]))
    url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer"
    server.wait_http(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", timeout=60)
    status, reply = http_post_json(url, body)
    if status != 200 or not reply.get("outputs"):
        raise RuntimeError(f"{binary}: answered {status} {reply}")
    results = {}
    for connections in CONNECTIONS:
        results[connections] = wrk(url, body_file, connections, seconds)
        server.check_running()
    procs.stop(server)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the modelgate binary before the change")
    parser.add_argument("--after", type=Path, required=True, help="the modelgate binary after the change")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default: %(default)s)")
    args = parser.parse_args()
    stop_on_sigterm()
    body = request()
    runs: dict[str, list[dict[int, WrkResult]]] = {"before": [], "after": []}
    report = Report("before_after", f"Before / after: `{MODEL}`, batch-1 V2 JSON over HTTP, wrk -t1")
    with tempfile.TemporaryDirectory(prefix="mg-ba-") as tmp, Processes(RESULTS / "logs") as procs:
        body_file = Path(tmp) / "body.json"
        body_file.write_text(json.dumps(body, separators=(",", ":")))
        for round_ in range(args.rounds):
            for name in ("before", "after"):
                binary = getattr(args, name).resolve()
                result = measure(procs, binary, body_file, body, args.seconds)
                runs[name].append(result)
                print(f"round {round_ + 1} {name:<6} c=1 p50 {result[1].p50_us:6.0f} µs {result[1].rps:8.0f} req/s | "
                      f"c=64 {result[64].rps:8.0f} req/s p50 {result[64].p50_us:6.0f} µs "
                      f"errors {result[1].errors + result[64].errors}", flush=True)

    def median(name: str, pick) -> float:
        return statistics.median(pick(r) for r in runs[name])

    rows = []
    for name in ("before", "after"):
        for i, r in enumerate(runs[name]):
            rows.append([name, i + 1, r[1].p50_us, r[1].p99_us, r[1].rps, r[64].rps, r[64].p50_us,
                         r[1].errors + r[64].errors])
            for c, w in r.items():
                report.csv_rows.append({"binary": name, "round": i + 1, "connections": c, "per_s": w.rps,
                                        "p50_us": w.p50_us, "p99_us": w.p99_us, "errors": w.errors})
        rows.append([f"**{name} median**", "", median(name, lambda r: r[1].p50_us), median(name, lambda r: r[1].p99_us),
                     median(name, lambda r: r[1].rps), median(name, lambda r: r[64].rps),
                     median(name, lambda r: r[64].p50_us), ""])
    c64 = median("after", lambda r: r[64].rps) / median("before", lambda r: r[64].rps)
    p50_gap = median("after", lambda r: r[1].p50_us) - median("before", lambda r: r[1].p50_us)
    errors = sum(w.errors for name in runs for r in runs[name] for w in r.values())
    report.add(f"`{args.before}` against `{args.after}`, {args.rounds} alternating rounds of wrk "
               f"{args.seconds} s at 1 and 64 connections. Latencies in µs.\n\n"
               + markdown_table(["binary", "round", "c=1 p50", "c=1 p99", "c=1 req/s", "c=64 req/s", "c=64 p50",
                                 "errors"], rows)
               + f"\n\nc=64 req/s after / before: {c64:.3f}; c=1 p50 after - before: {p50_gap:+.1f} µs.")
    report.checks.append(Check("c=64 req/s: after / before (median)", c64, 0.95))
    report.checks.append(Check("c=1 p50: after - before (median)", p50_gap, 5.0, higher_is_better=False, unit=" µs"))
    report.checks.append(Check("errors, both binaries", float(errors), 0.0, higher_is_better=False, unit=""))
    report.write(readme=False)
    return 0 if all(check.passed for check in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Compute-heavy check: on a model where the work is the matrix products (mlp_wide,
64-1024-1024-10), does the gateway deliver the rows/s that ONNX Runtime itself delivers at the
batch size the batcher formed?

1. Makes mlp_wide in a temporary repository (`.venv/models/bin/python models/make_models.py
   --out <tmp> --wide`; models/ is not touched).
2. Serves it with a release build of modelgate and drives it at each concurrency, with requests
   of one row and of 8 rows, with two clients: wrk over HTTP with binary tensors (the client that
   takes the least CPU from the 2 cores the server shares with it, so this is the measurement the
   target is checked on) and perf_analyzer over gRPC (Triton's tool; its client threads take most
   of a core at these rates, so the model thread gets less of one). The statistics endpoint, read
   before and after, gives the mean batch size the batcher formed (rows / executions), the mean
   compute time per execution, and the share of the time the instance thread computed.
   One-row requests cost the front end far more CPU per row than the model does; 8-row requests
   show the batcher and instance thread when the model is what limits.
3. With the server stopped, runs benches/ort_baseline.rs on the same file at the batch sizes
   just below and above that mean, and interpolates µs per call at the mean.

Target (issue 3): gateway rows/s ≥ 90 % of in-process rows/s at the mean batch size.

    .venv/client/bin/python load-tests/compute_heavy.py [--quick] [--readme]

Takes about 1 minute. Writes load-tests/results/compute_heavy.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import compute_time, model_counters, ort_baseline, perf_analyzer, wrk
from procs import REPO, RESULTS, Processes, cargo_release_binary, free_port, modelgate_argv, stop_on_sigterm
from report import UNSTABLE_NOTE, Check, Report, marked, markdown_table

MODEL = "mlp_wide"


def binary_body(directory: Path, rows: int) -> tuple[Path, int]:
    """A binary-extension request of `rows` random rows; returns the file and its JSON header length."""
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": rows * 64 * 4}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }).encode()
    rng = random.Random(rows)
    data = struct.pack(f"<{rows * 64}f", *(rng.random() for _ in range(rows * 64)))
    path = directory / f"wide-{rows}.bin"
    path.write_bytes(header + data)
    return path, len(header)


def make_wide_model(out: Path) -> Path:
    python = REPO / ".venv" / "models" / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} not found: run scripts/setup.sh models")
    subprocess.run([str(python), str(REPO / "models" / "make_models.py"), "--out", str(out), "--wide"],
                   check=True, capture_output=True, timeout=300)
    return out / MODEL / "1" / "model.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="16,64", help="levels (default: %(default)s)")
    parser.add_argument("--rows", default="1,8", help="rows per request (default: %(default)s)")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer window (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="concurrency 64 only, 1.5 s windows")
    parser.add_argument("--no-build", action="store_true", help="use target/release/modelgate as it is")
    parser.add_argument("--readme", action="store_true", help="copy the table into load-tests/README.md")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.interval_ms = "64", 1500
    levels = [int(c) for c in args.concurrency.split(",")]
    request_rows = [int(r) for r in args.rows.split(",")]
    stop_on_sigterm()

    binary = cargo_release_binary(build=not args.no_build)
    report = Report("compute_heavy", f"Compute-heavy model: `{MODEL}` (64-1024-1024-10), gateway vs in-process")
    measured = []
    with tempfile.TemporaryDirectory(prefix="mg-wide-") as tmp, Processes(RESULTS / "logs") as procs:
        model_file = make_wide_model(Path(tmp))
        http_port, grpc_port = free_port(), free_port()
        server = procs.start("modelgate-wide", modelgate_argv(binary, Path(tmp), http_port, grpc_port, [MODEL]))
        base = f"http://127.0.0.1:{http_port}"
        server.wait_http(f"{base}/v2/models/{MODEL}/ready", timeout=60)
        for n in request_rows:
            body, header_length = binary_body(Path(tmp), n)
            for c in levels:
                for client in ("wrk", "perf_analyzer"):
                    before, t0 = model_counters(base, MODEL), time.monotonic()
                    if client == "wrk":
                        w = wrk(f"{base}/v2/models/{MODEL}/infer", body, c, seconds=3 if args.quick else 6,
                                header_length=header_length)
                        if w.errors:
                            raise RuntimeError(f"wrk saw {w.errors} errors at c={c}, {n} rows/request")
                        rows_per_s, p50, stable, label = w.rps * n, w.p50_us, True, "wrk, HTTP binary"
                    else:
                        r = perf_analyzer(MODEL, f"127.0.0.1:{grpc_port}", "grpc", c, Path(tmp) / f"pa-{n}-{c}.csv",
                                          interval_ms=args.interval_ms, extra=["-b", str(n)])
                        rows_per_s, p50, stable, label = r.infer_per_s, r.p50_us, r.stable, "perf_analyzer, gRPC"
                    after, elapsed = model_counters(base, MODEL), time.monotonic() - t0
                    server.check_running()
                    batch = (after.rows - before.rows) / max(after.executions - before.executions, 1)
                    executions, computing = compute_time(before, after)
                    gateway_us = computing / executions * 1e6 if executions else None
                    measured.append((label, n, c, rows_per_s, stable, p50, batch, gateway_us, computing / elapsed))
                    print(f"{MODEL} {label:<20} rows/request={n} c={c:<3} {rows_per_s:>8.0f} rows/s  "
                          f"mean batch {batch:.1f}  instance busy {computing / elapsed:.0%}", flush=True)
        procs.stop(server)

        sizes = sorted({s for m in measured for s in (max(1, math.floor(m[6])), math.ceil(m[6]))})
        baseline = ort_baseline(model_file, sizes, seconds=0.5 if args.quick else 1.0)

    rows = []
    for label, n, c, rows_per_s, stable, p50, batch, gateway_us, busy in measured:
        lo, hi = baseline[max(1, math.floor(batch))], baseline[math.ceil(batch)]
        # µs per call is close to linear in the batch size between neighbours.
        us = lo.us_per_call + (batch - lo.batch_size) * (hi.us_per_call - lo.us_per_call) \
            if hi.batch_size != lo.batch_size else lo.us_per_call
        inprocess = batch / us * 1e6
        ratio = rows_per_s / inprocess
        rows.append([label, n, c, marked(rows_per_s, stable), batch, f"{busy:.0%}", gateway_us, us, inprocess,
                     f"{ratio:.0%}", p50])
        report.csv_rows.append({"client": label, "rows_per_request": n, "concurrency": c,
                                "gateway_rows_per_s": rows_per_s, "mean_batch": batch, "instance_busy": busy,
                                "gateway_compute_us_per_execution": gateway_us, "inprocess_us_per_call": us,
                                "inprocess_rows_per_s": inprocess, "ratio": ratio, "p50_us": p50,
                                "stable": stable})
        if c == max(levels) and label.startswith("wrk"):
            report.checks.append(Check(f"{n} row(s)/request, c={c} ({label}): gateway rows/s / in-process rows/s "
                                       f"at batch {batch:.1f}",
                                       ratio * 100, 90.0, unit=" %"))
    report.add("Mean batch, instance busy share and gateway compute per execution from the statistics endpoint; "
               "in-process = benches/ort_baseline.rs on the same file (1 intra-op thread, as the gateway), "
               "interpolated at the mean batch. Both clients run on the server's 2 cores:\n\n"
               + markdown_table(["client", "rows/request", "concurrency", "gateway rows/s", "mean batch",
                                 "instance busy", "gateway µs/execution", "in-process µs/call", "in-process rows/s",
                                 "gateway / in-process", "p50 µs"], rows)
               + ("\n\n" + UNSTABLE_NOTE if any(not m[4] for m in measured) else ""))
    report.write(readme=args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())

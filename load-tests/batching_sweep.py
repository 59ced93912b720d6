#!/usr/bin/env python3
"""Dynamic batching on and off: perf_analyzer at concurrency 1..64 over HTTP and gRPC against a
release build of modelgate, plus the in-process ONNX Runtime baseline (benches/ort_baseline.rs)
at the same batch sizes.

* on:  the model as it is: models/mlp (dynamic_batching, max_queue_delay 0, max_batch_size 64),
       or with --model mlp_wide the compute-heavy MLP made by models/make_models.py --wide in a
       temporary folder.
* off: a copy of it in a temporary repository whose config.pbtxt has no dynamic_batching
       block, so every request runs alone (max_batch_size stays 64).

Target (issue 3): at concurrency 64 on the example MLP, infer/s with batching ≥ 3× without.
perf_analyzer's own client takes much of the 2 cores at high rates, so each mode is also driven
by wrk (C, V2 JSON, 64 connections), with the instance thread's busy share from the statistics
endpoint: it shows whether the model or the front end is what limits.

Run from the repository root, with the client venv (perf_analyzer's wrapper lives there):

    .venv/client/bin/python load-tests/batching_sweep.py [--model mlp|mlp_wide] [--quick] [--readme]

Takes about 2 minutes (--quick: about 1). Writes load-tests/results/batching_sweep[_MODEL].{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import compute_time, mean_batch, model_counters, ort_baseline, perf_analyzer, wrk
from procs import REPO, RESULTS, Processes, cargo_release_binary, free_port, modelgate_argv, stop_on_sigterm
from report import UNSTABLE_NOTE, Check, Report, marked, markdown_table

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]
MODELS = {"mlp": "64-256-256-10", "mlp_wide": "64-1024-1024-10"}


def without_dynamic_batching(config: str) -> str:
    """config.pbtxt text with its `dynamic_batching { ... }` block removed (braces may nest)."""
    match = re.search(r"^\s*dynamic_batching\s*\{", config, flags=re.MULTILINE)
    if match is None:
        raise ValueError("the config has no dynamic_batching block to remove")
    depth, end = 0, None
    for i in range(match.end() - 1, len(config)):
        depth += {"{": 1, "}": -1}.get(config[i], 0)
        if depth == 0:
            end = i + 1
            break
    if end is None:
        raise ValueError("unbalanced braces in the dynamic_batching block")
    return config[:match.start()] + "\n# dynamic_batching removed by load-tests/batching_sweep.py\n" + config[end:]


def source_repository(model: str, scratch: Path) -> Path:
    """The repository holding `model` as it is: models/, or a fresh one for mlp_wide."""
    if model == "mlp":
        return REPO / "models"
    python = REPO / ".venv" / "models" / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} not found: run scripts/setup.sh models")
    subprocess.run([str(python), str(REPO / "models" / "make_models.py"), "--out", str(scratch), "--wide"],
                   check=True, capture_output=True, timeout=300)
    return scratch


def unbatched_repository(source: Path, model: str, root: Path) -> Path:
    """<root>/<model>: a copy of the model with batching turned off."""
    target = root / model
    shutil.copytree(source / model / "1", target / "1")
    (target / "config.pbtxt").write_text(without_dynamic_batching((source / model / "config.pbtxt").read_text()))
    return root


LABEL = {"http": "HTTP", "grpc": "gRPC"}


def json_body(path: Path) -> Path:
    """A V2 JSON request of one row of 64 FP32 values (the input of both MLPs)."""
    rng = random.Random(20251123)
    data = [round(rng.uniform(-1, 1), 6) for _ in range(64)]
    path.write_text(json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data}]}))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp", help="default: %(default)s")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="levels (default: %(default)s)")
    parser.add_argument("--protocols", default="http,grpc", help="http, grpc or both (default: %(default)s)")
    # 1 s windows: at ~20k requests/s perf_analyzer's own main thread is the first to run out of CPU
    # here, and the longer its windows the more it has to sort through.
    parser.add_argument("--interval-ms", type=int, default=1000, help="perf_analyzer window (default: %(default)s)")
    parser.add_argument("--wrk-seconds", type=int, default=5, help="wrk run per mode (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="levels 1,8,64, 1 s windows, 2 s wrk: a smoke run")
    parser.add_argument("--no-build", action="store_true", help="use target/release/modelgate as it is")
    parser.add_argument("--readme", action="store_true", help="copy the table into load-tests/README.md")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.interval_ms, args.wrk_seconds = "1,8,64", 1000, 2
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    stop_on_sigterm()

    model = args.model
    binary = cargo_release_binary(build=not args.no_build)
    name = "batching_sweep" if model == "mlp" else f"batching_sweep_{model}"
    report = Report(name, f"Dynamic batching on and off: `{model}` ({MODELS[model]}), perf_analyzer")
    results: dict[tuple[str, str, int], dict] = {}
    wrk_results: dict[str, dict] = {}
    log_dir = RESULTS / "logs"

    with tempfile.TemporaryDirectory(prefix="mg-sweep-") as tmp_name, Processes(log_dir) as procs:
        tmp = Path(tmp_name)
        body = json_body(tmp / "body.json")
        source = source_repository(model, tmp / "on")
        repositories = {"on": source, "off": unbatched_repository(source, model, tmp / "off")}
        for mode, repository in repositories.items():
            http_port, grpc_port = free_port(), free_port()
            server = procs.start(f"modelgate-batching-{mode}",
                                 modelgate_argv(binary, repository, http_port, grpc_port, [model]))
            base = f"http://127.0.0.1:{http_port}"
            server.wait_http(f"{base}/v2/models/{model}/ready", timeout=60)
            for protocol in protocols:
                address = f"127.0.0.1:{http_port if protocol == 'http' else grpc_port}"
                for c in levels:
                    before = model_counters(base, model)
                    r = perf_analyzer(model, address, protocol, c, tmp / f"pa-{mode}-{protocol}-{c}.csv",
                                      interval_ms=args.interval_ms)
                    server.check_running()
                    batch = mean_batch(before, model_counters(base, model))
                    results[(mode, protocol, c)] = {"result": r, "mean_batch": batch}
                    print(f"batching {mode:3} {protocol:4} c={c:<3} {r.infer_per_s:>9.0f} infer/s  "
                          f"p50 {r.p50_us:>7.0f} µs  mean batch {batch or 0:.1f}"
                          f"{'' if r.stable else '  (unstable)'}", flush=True)
            before, t0 = model_counters(base, model), time.monotonic()
            w = wrk(f"{base}/v2/models/{model}/infer", body, 64, args.wrk_seconds)
            after, elapsed = model_counters(base, model), time.monotonic() - t0
            server.check_running()
            busy = compute_time(before, after)[1] / elapsed
            wrk_results[mode] = {"result": w, "mean_batch": mean_batch(before, after), "busy": busy}
            print(f"batching {mode:3} wrk  c=64  {w.rps:>9.0f} req/s    p50 {w.p50_us:>7.0f} µs  "
                  f"mean batch {wrk_results[mode]['mean_batch'] or 0:.1f}  instance busy {busy:.0%}", flush=True)
            procs.stop(server)

        # The in-process baseline runs with no server up, on the same machine, same library.
        baseline = ort_baseline(source / model / "1" / "model.onnx", BATCH_SIZES,
                                seconds=0.3 if args.quick else 0.5)

    for protocol in protocols:
        rows = []
        for c in levels:
            on, off = results[("on", protocol, c)], results[("off", protocol, c)]
            ron, roff = on["result"], off["result"]
            ratio = ron.infer_per_s / roff.infer_per_s if roff.infer_per_s else None
            rows.append([c, marked(ron.infer_per_s, ron.stable), marked(roff.infer_per_s, roff.stable),
                         f"{ratio:.2f}×" if ratio else "–", ron.p50_us, roff.p50_us, ron.p99_us, roff.p99_us,
                         on["mean_batch"],
                         ron.server_compute_us, roff.server_compute_us])
            for mode, entry in (("on", on), ("off", off)):
                r = entry["result"]
                report.csv_rows.append({
                    "protocol": protocol, "batching": mode, "concurrency": c, "infer_per_s": r.infer_per_s,
                    "p50_us": r.p50_us, "p99_us": r.p99_us, "server_queue_us": r.server_queue_us,
                    "server_compute_us": r.server_compute_us, "mean_batch": entry["mean_batch"],
                    "stable": r.stable,
                })
        unstable = any(not e["result"].stable for (_, p, _), e in results.items() if p == protocol)
        report.add(f"perf_analyzer over {LABEL[protocol]}"
                   f"{' (binary tensors)' if protocol == 'http' else ''}, batch-1 requests, "
                   f"{args.interval_ms} ms windows:\n\n" + markdown_table(
                       ["concurrency", "infer/s on", "infer/s off", "on/off", "p50 µs on", "p50 µs off",
                        "p99 µs on", "p99 µs off", "mean batch on", "server compute µs/req on", "server compute µs/req off"], rows)
                   + ("\n\n" + UNSTABLE_NOTE if unstable else ""))
        top = max(levels)
        ron, roff = results[("on", protocol, top)]["result"], results[("off", protocol, top)]["result"]
        if roff.infer_per_s:
            report.checks.append(Check(f"`{model}` {LABEL[protocol]} c={top}: infer/s batching on / off",
                                       ron.infer_per_s / roff.infer_per_s, 3.0))

    rows = []
    for mode, entry in wrk_results.items():
        w = entry["result"]
        rows.append([mode, w.rps, w.p50_us, w.p99_us, w.errors, entry["mean_batch"], f"{entry['busy']:.0%}"])
        report.csv_rows.append({"protocol": "http-json-wrk", "batching": mode, "concurrency": 64, "infer_per_s": w.rps,
                                "p50_us": w.p50_us, "p99_us": w.p99_us, "server_queue_us": None,
                                "server_compute_us": None, "mean_batch": entry["mean_batch"], "stable": True})
    if len(wrk_results) == 2:
        report.add(f"wrk -t1 -c64 -d{args.wrk_seconds}s, V2 JSON over HTTP (one row per request); instance busy = "
                   "share of the time the instance thread ran the model (statistics endpoint):\n\n"
                   + markdown_table(["batching", "req/s", "p50 µs", "p99 µs", "errors", "mean batch", "instance busy"],
                                    rows))
        on, off = wrk_results["on"]["result"], wrk_results["off"]["result"]
        report.checks.append(Check("wrk errors (non-2xx, socket errors), both runs", on.errors + off.errors, 0,
                                   higher_is_better=False, unit=""))
        if off.rps:
            report.checks.append(Check(f"`{model}` HTTP JSON (wrk) c=64: req/s batching on / off", on.rps / off.rps, 3.0))

    report.add("In-process ONNX Runtime, the gateway's backend called in a loop (benches/ort_baseline.rs, "
               "1 intra-op thread as served):\n\n" + markdown_table(
                   ["batch size", "µs per call", "rows/s"],
                   [[b.batch_size, b.us_per_call, b.rows_per_s] for b in baseline.values()]))
    for b in baseline.values():
        report.csv_rows.append({"protocol": "in-process", "batching": "", "concurrency": b.batch_size,
                                "infer_per_s": b.rows_per_s, "p50_us": b.us_per_call, "p99_us": None,
                                "server_queue_us": None, "server_compute_us": b.us_per_call,
                                "mean_batch": b.batch_size, "stable": True})
    report.write(readme=args.readme)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What the drift profiler costs a serving gateway: throughput with `[drift]` on against off, and
the profiler thread's own CPU, in one run.

Two gateways from one binary serve models/mlp (64-256-256-10, one JSON row per request): one with
`[drift] enabled = true`, one without. wrk at 64 connections drives them in turn, the order
swapped every round so that a change in the machine's load falls on both; the ratio is the
median of the rounds' on/off ratios. Before the first round the drift-on gateway serves one whole
drift window (`--window` seconds), so the rounds see the profiler as it runs from then on: its
quantile sketches sample above `drift.sketch_rows_per_second` from the previous window's rows.

The profiler's CPU is read from /proc (utime + stime of the `mg-drift` thread) over each on-round,
with the rows it profiled (`modelgate_drift_rows_total`), the rows it dropped because its
queue was full (`modelgate_drift_rows_dropped_total`) and the sampling the gateway chose
(`modelgate_drift_sampled_one_in`: above `drift.max_rows_per_second`, `--max-rows`, a version
offers one batch in n) from /metrics; the share of a core is also given per 10,000 rows/s (the
issue's yardstick: 64 features at 10,000 rows/s, goal <= 2 %).

Each gateway's whole CPU time per request (utime + stime of the process over the round) is read
too: its off/on ratio is the throughput a CPU-bound machine would see, without wrk's share and
with far less noise than requests/s on a shared 2-core VM.

Targets: throughput on/off >= 0.98 (median of rounds); profiler CPU per 10,000 rows/s <= 2 % of a
core. Exits 1 when one is missed.

    cargo build --release --bin modelgate
    .venv/client/bin/python load-tests/drift/throughput.py [--rounds 6] [--seconds 5] [--window 10] [--max-rows N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import wrk  # noqa: E402
from procs import REPO, RESULTS, Processes, free_port, http_post_json, modelgate_argv, stop_on_sigterm  # noqa: E402

MODEL = "mlp"
TICKS = os.sysconf("SC_CLK_TCK")


def request() -> dict:
    row = [((i * 37) % 101) / 101.0 - 0.5 for i in range(64)]
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}


def drift_thread_ticks(pid: int) -> int | None:
    """utime + stime of the gateway's `mg-drift` thread, in clock ticks."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "mg-drift":
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return None


def process_ticks(pid: int) -> int:
    """utime + stime of the whole gateway process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def metric_sum(port: int, family: str) -> float:
    """The sum of a counter family's samples on the gateway's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    pattern = re.compile(rf"^{family}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", re.M)
    return sum(float(m.group(1)) for m in pattern.finditer(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "modelgate")
    parser.add_argument("--rounds", type=int, default=6, help="pairs of wrk runs, on and off (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run (default: %(default)s)")
    parser.add_argument("--window", type=int, default=10, help="drift window in seconds (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-rows", type=int, default=None,
                        help="drift.max_rows_per_second for the drift-on gateway (default: the gateway's own)")
    parser.add_argument("--queue", type=int, default=None,
                        help="drift.queue for the drift-on gateway (default: the gateway's own default)")
    args = parser.parse_args()
    stop_on_sigterm()
    failures: list[str] = []
    report: dict = {"binary": str(args.binary), "rounds": args.rounds, "seconds": args.seconds,
                    "window_seconds": args.window, "connections": args.connections, "queue": args.queue,
                    "max_rows_per_second": args.max_rows}
    with tempfile.TemporaryDirectory(prefix="mg-drift-cost-") as tmp, Processes(RESULTS / "logs") as procs:
        tmp = Path(tmp)
        body_file = tmp / "body.json"
        body_file.write_text(json.dumps(request(), separators=(",", ":")))
        gateways = {}
        for name, enabled in (("on", "true"), ("off", "false")):
            config = tmp / f"{name}.toml"
            queue = f"queue = {args.queue}\n" if args.queue else ""
            queue += f"max_rows_per_second = {args.max_rows}\n" if args.max_rows and enabled == "true" else ""
            config.write_text(f"[drift]\nenabled = {enabled}\nwindow_seconds = {args.window}\n{queue}")
            port = free_port()
            argv = modelgate_argv(args.binary, REPO / "models", port, free_port(), [MODEL])
            argv += ["--config", str(config), "--data-dir", str(tmp / f"data-{name}"), "--control-plane-port", "0"]
            server = procs.start(f"modelgate-drift-{name}", argv)
            server.wait_http(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=60)
            status, reply = http_post_json(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", request())
            if status != 200:
                raise RuntimeError(f"{name}: answered {status} {reply}")
            gateways[name] = (server, port)
        on_server, on_port = gateways["on"]
        pid = on_server.popen.pid
        if drift_thread_ticks(pid) is None:
            raise RuntimeError("no mg-drift thread in the drift-on gateway")
        # One whole window of traffic first: the next windows sample from its row count.
        warm = wrk(f"http://127.0.0.1:{on_port}/v2/models/{MODEL}/infer", body_file, args.connections,
                   seconds=args.window + 2)
        report["warm_up_rps"] = warm.rps
        runs: dict[str, list[float]] = {"on": [], "off": []}
        ratios, cpu, per_10k, dropped_share, profiled, one_in = [], [], [], [], [], []
        cpu_per_request: dict[str, list[float]] = {"on": [], "off": []}
        capacity = []
        for round_ in range(args.rounds):
            for name in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                server, port = gateways[name]
                url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
                process0 = process_ticks(server.popen.pid)
                if name == "on":
                    ticks0, t0 = drift_thread_ticks(pid), time.monotonic()
                    rows0 = metric_sum(port, "modelgate_drift_rows_total")
                    dropped0 = metric_sum(port, "modelgate_drift_rows_dropped_total")
                result = wrk(url, body_file, args.connections, seconds=args.seconds)
                if result.errors:
                    failures.append(f"{result.errors} errors on the drift-{name} gateway")
                runs[name].append(result.rps)
                served = result.rps * args.seconds
                cpu_per_request[name].append((process_ticks(server.popen.pid) - process0) / TICKS / served * 1e6
                                             if served else float("nan"))
                if name == "on":
                    elapsed = time.monotonic() - t0
                    share = (drift_thread_ticks(pid) - ticks0) / TICKS / elapsed
                    rows = (metric_sum(port, "modelgate_drift_rows_total") - rows0) / elapsed
                    dropped = (metric_sum(port, "modelgate_drift_rows_dropped_total") - dropped0) / elapsed
                    cpu.append(share)
                    per_10k.append(share * 10_000 / rows if rows else float("nan"))
                    dropped_share.append(dropped / (rows + dropped) if rows + dropped else 0.0)
                    profiled.append(rows)
                    one_in.append(metric_sum(port, "modelgate_drift_sampled_one_in"))
            ratios.append(runs["on"][-1] / runs["off"][-1])
            capacity.append(cpu_per_request["off"][-1] / cpu_per_request["on"][-1])
            print(f"round {round_ + 1}: on {runs['on'][-1]:8.0f} req/s, off {runs['off'][-1]:8.0f} req/s, "
                  f"ratio {ratios[-1]:.3f}; profiler {100 * cpu[-1]:.2f} % of a core, "
                  f"{100 * per_10k[-1]:.2f} % per 10,000 rows/s, {profiled[-1]:.0f} rows/s profiled (one batch in "
                  f"{one_in[-1]:.0f}), dropped {100 * dropped_share[-1]:.1f} %; CPU per request on "
                  f"{cpu_per_request['on'][-1]:.1f} µs, off {cpu_per_request['off'][-1]:.1f} µs "
                  f"(ratio {capacity[-1]:.3f})", flush=True)
    ratio = statistics.median(ratios)
    cost = statistics.median(per_10k)
    report.update({"rps_on": runs["on"], "rps_off": runs["off"], "round_ratios": ratios, "median_ratio": ratio,
                   "profiler_core_share": cpu, "profiler_core_share_per_10k_rows_per_s": per_10k,
                   "median_core_share_per_10k_rows_per_s": cost, "rows_dropped_share": dropped_share,
                   "rows_profiled_per_s": profiled, "sampled_one_in": one_in, "cpu_us_per_request": cpu_per_request,
                   "round_cpu_ratios": capacity, "median_cpu_ratio": statistics.median(capacity)})
    if ratio < 0.98:
        failures.append(f"throughput with drift on / off {ratio:.3f} < 0.98")
    if cost > 0.02:
        failures.append(f"profiler {100 * cost:.2f} % of a core per 10,000 rows/s > 2 %")
    report["failures"] = failures
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"drift-throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"median on/off {ratio:.3f} (CPU per request off/on {statistics.median(capacity):.3f}); "
          f"profiler {100 * cost:.2f} % of a core per 10,000 rows/s; written {out}")
    for f in failures:
        print("MISSED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

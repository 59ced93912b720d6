#!/usr/bin/env python3
"""The front door's own cost (issue 16): modelgate against nginx's fixed reply, alternating, in one run.

nginx (one worker, `return 200` with the V2 JSON reply of the same request) is what HTTP itself
costs on this machine; modelgate serves models/mlp (64-256-256-10, one JSON row per request,
dynamic batching with no queue delay). With `--before BINARY` a second modelgate binary takes part
too, so a change is measured against its baseline in the same run.

Each round starts every server in turn (nginx, [before], modelgate), checks its answer against
onnxruntime's, and drives it with `wrk -t1` for `--seconds` at 1 and at 64 connections; rounds
alternate so that drift in the load of this shared machine falls on every server. Next to wrk's
figures, the server's own cost per request is read from /proc during each wrk run: CPU time
(user + system, every thread; at c=64 also split between the runtime workers and the model's
threads) and context switches (voluntary + involuntary, every thread). A third run per server
GETs `/v2/health/ready` at 64 connections: the HTTP floor, what the HTTP stack costs without the
model's JSON, queue and run (nginx answers it with its fixed reply).

Then, for the last binary only: idle CPU over `--idle-seconds` (after a 2 s burst of load, so
the instance threads have just run), and, with `--grpc`, perf_analyzer over gRPC at
concurrency 64 against the HTTP c=64 figure of the same binary (there is no cheap fixed-reply
HTTP/2 floor here).

Targets (issue 16), on the medians over rounds of the per-round differences and ratios:
  c=1 p50 ≤ nginx p50 + 40 µs; c=1 p99 ≤ nginx p99 + 200 µs; c=64 req/s ≥ 60 % of nginx's;
  idle CPU ≤ 1 % of a core. Exits 1 when one is missed.

    .venv/client/bin/python load-tests/front_door.py [--rounds 3] [--seconds 5] [--before OLD_BINARY]
        [--idle-seconds 60] [--grpc] [--also NAME=BINARY ...] [--no-build] [--readme]

Writes load-tests/results/front_door.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadgen import WrkResult, perf_analyzer, wrk
from peers import MODEL, check_answer, request_and_reference, start_modelgate, start_nginx, v2_reply
from procs import RESULTS, Processes, cargo_release_binary, stop_on_sigterm
from report import Check, Report, markdown_table

CONNECTIONS = (1, 64)
# The HTTP floor: a GET of the health endpoint at 64 connections (nginx answers any path with its
# fixed reply), what the HTTP stack costs without the model's JSON, queue and run.
FLOOR = "floor"
TICKS = os.sysconf("SC_CLK_TCK")


# modelgate's threads by what they do: the runtime workers (HTTP, JSON, routing) and the rest
# (instance threads running the model, housekeeping); nginx's worker is all "runtime".
THREAD_GROUPS = ("runtime", "model")


@dataclass
class ProcessCost:
    """CPU seconds and context switches of a process group's main process, all threads, and the
    user and system CPU seconds of each of THREAD_GROUPS."""

    cpu_s: float
    switches: int
    split_s: dict[str, tuple[float, float]]


def thread_group(comm: str) -> str:
    return "model" if comm.startswith("mg-") and not comm.startswith("mg-io") else "runtime"


def process_cost(pid: int) -> ProcessCost:
    """Sums utime + stime and the context switches of every thread of `pid` (nginx: its worker too)."""
    pids = [pid] + children(pid)
    cpu = 0
    switches = 0
    split = {group: [0, 0] for group in THREAD_GROUPS}
    for p in pids:
        # The process's own stat includes every thread's (and reaped children's) time.
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += int(fields[11]) + int(fields[12])
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                status = (task / "status").read_text()
            except FileNotFoundError:  # a thread that ended while we read
                continue
            group = split[thread_group(comm)]
            group[0] += int(stat[11])
            group[1] += int(stat[12])
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    return ProcessCost(cpu / TICKS, switches, {g: (u / TICKS, k / TICKS) for g, (u, k) in split.items()})


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


@dataclass
class Run:
    """One wrk run with the server's cost per request."""

    wrk: WrkResult
    cpu_us_per_request: float
    switches_per_request: float
    # Per thread group: user and system CPU µs per request.
    split_us: dict[str, tuple[float, float]]


def measured_run(pid: int, url: str, body_file: Path | None, connections: int, seconds: int) -> Run:
    before = process_cost(pid)
    result = wrk(url, body_file, connections, seconds)
    after = process_cost(pid)
    n = max(result.requests, 1)
    split = {g: tuple((a - b) * 1e6 / n for a, b in zip(after.split_s[g], before.split_s[g]))
             for g in THREAD_GROUPS}
    return Run(result, (after.cpu_s - before.cpu_s) * 1e6 / n, (after.switches - before.switches) / n, split)


def idle_cpu(pid: int, url: str, body_file: Path, seconds: int) -> float:
    """Share of one core the server uses while idle, after a short burst of load."""
    wrk(url, body_file, 1, 2)
    time.sleep(0.5)
    before = process_cost(pid)
    time.sleep(seconds)
    after = process_cost(pid)
    return (after.cpu_s - before.cpu_s) / seconds


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}–{max(values):,.0f}" if len(values) > 1 else f"{values[0]:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default: %(default)s)")
    parser.add_argument("--before", type=Path, help="a baseline modelgate binary, measured in the same rounds")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=BINARY",
                        help="more modelgate binaries (or wrapper scripts) measured in the same rounds")
    parser.add_argument("--binary", type=Path, help="the modelgate binary (default: target/release/modelgate, built)")
    parser.add_argument("--idle-seconds", type=int, default=60, help="idle CPU window, 0 skips (default: %(default)s)")
    parser.add_argument("--grpc", action="store_true", help="perf_analyzer gRPC c=64 against HTTP c=64")
    parser.add_argument("--no-build", action="store_true", help="use target/release/modelgate as it is")
    parser.add_argument("--readme", action="store_true", help="copy the table into load-tests/README.md")
    args = parser.parse_args()
    stop_on_sigterm()
    binary = (args.binary or cargo_release_binary(build=not args.no_build)).resolve()
    contestants: list[tuple[str, Path | None]] = [("nginx", None)]
    if args.before:
        contestants.append(("before", args.before.resolve()))
    for extra in args.also:
        name, _, path = extra.partition("=")
        contestants.append((name, Path(path).resolve()))
    contestants.append(("modelgate", binary))

    body, expected = request_and_reference()
    runs: dict[str, list[dict[int | str, Run]]] = {name: [] for name, _ in contestants}
    idle = grpc64 = None
    report = Report("front_door", f"The front door's own cost: `{MODEL}` against nginx's fixed reply, alternating")
    with tempfile.TemporaryDirectory(prefix="mg-door-") as tmp_name, Processes(RESULTS / "logs") as procs:
        tmp = Path(tmp_name)
        body_file = tmp / "body.json"
        body_file.write_text(json.dumps(body, separators=(",", ":")))
        for round_ in range(args.rounds):
            for name, path in contestants:
                if name == "nginx":
                    nginx_dir = tmp / f"round{round_}"
                    nginx_dir.mkdir()
                    started = start_nginx(procs, nginx_dir, v2_reply(expected))
                else:
                    started = start_modelgate(procs, path)
                check_answer(name, started.infer_url, body, expected)
                pid = started.server.popen.pid
                result = {c: measured_run(pid, started.infer_url, body_file, c, args.seconds) for c in CONNECTIONS}
                health = started.infer_url.split("/v2/")[0] + "/v2/health/ready"
                result[FLOOR] = measured_run(pid, health, None, 64, args.seconds)
                started.server.check_running()
                runs[name].append(result)
                one, many = result[1], result[64]
                print(f"round {round_ + 1} {name:<9} c=1 p50 {one.wrk.p50_us:5.0f} p99 {one.wrk.p99_us:6.0f} µs "
                      f"{one.wrk.rps:7.0f}/s {one.cpu_us_per_request:5.1f} CPU µs {one.switches_per_request:4.1f} cs | "
                      f"c=64 {many.wrk.rps:7.0f}/s {many.cpu_us_per_request:5.1f} CPU µs "
                      f"{many.switches_per_request:4.2f} cs  errors {one.wrk.errors + many.wrk.errors} | "
                      f"GET health c=64 {result[FLOOR].wrk.rps:7.0f}/s", flush=True)
                last_round = round_ == args.rounds - 1
                if last_round and name == "modelgate":
                    if args.idle_seconds:
                        idle = idle_cpu(pid, started.infer_url, body_file, args.idle_seconds)
                        print(f"idle CPU over {args.idle_seconds} s: {idle * 100:.2f} % of a core", flush=True)
                    if args.grpc and started.grpc_address:
                        grpc64 = perf_analyzer(MODEL, started.grpc_address, "grpc", 64, tmp / "pa-grpc-64.csv",
                                               interval_ms=2000)
                        print(f"gRPC c=64 (perf_analyzer): {grpc64.infer_per_s:.0f} infer/s", flush=True)
                procs.stop(started.server)

    def per_round(name: str, pick) -> list[float]:
        return [pick(r) for r in runs[name]]

    def gaps(name: str, pick) -> list[float]:
        return [pick(a) - pick(b) for a, b in zip(runs[name], runs["nginx"])]

    def ratios(name: str, pick) -> list[float]:
        return [pick(a) / pick(b) for a, b in zip(runs[name], runs["nginx"])]

    p50 = lambda r: r[1].wrk.p50_us  # noqa: E731
    p99 = lambda r: r[1].wrk.p99_us  # noqa: E731
    rps64 = lambda r: r[64].wrk.rps  # noqa: E731
    floor64 = lambda r: r[FLOOR].wrk.rps  # noqa: E731
    rows = []
    for name, _ in contestants:
        rows.append([name, spread(per_round(name, p50)), spread(per_round(name, p99)),
                     spread(per_round(name, lambda r: r[1].wrk.rps)), spread(per_round(name, rps64)),
                     f"{statistics.median(per_round(name, lambda r: r[1].cpu_us_per_request)):.1f}",
                     f"{statistics.median(per_round(name, lambda r: r[1].switches_per_request)):.1f}",
                     f"{statistics.median(per_round(name, lambda r: r[64].cpu_us_per_request)):.1f}",
                     f"{statistics.median(per_round(name, lambda r: r[64].switches_per_request)):.2f}",
                     sum(r[c].wrk.errors for r in runs[name] for c in (*CONNECTIONS, FLOOR))])
        for i, r in enumerate(runs[name]):
            for c, run in r.items():
                report.csv_rows.append({"server": name, "round": i + 1, "connections": c, "per_s": run.wrk.rps,
                                        "p50_us": run.wrk.p50_us, "p99_us": run.wrk.p99_us, "errors": run.wrk.errors,
                                        "cpu_us_per_request": run.cpu_us_per_request,
                                        "switches_per_request": run.switches_per_request})
    ratio_rows = []
    for name, _ in contestants[1:]:
        g50, g99, r64, f64 = gaps(name, p50), gaps(name, p99), ratios(name, rps64), ratios(name, floor64)
        ratio_rows.append([name, f"{statistics.median(g50):+.0f} ({min(g50):+.0f} to {max(g50):+.0f})",
                           f"{statistics.median(g99):+.0f} ({min(g99):+.0f} to {max(g99):+.0f})",
                           f"{statistics.median(r64):.0%} ({min(r64):.0%}–{max(r64):.0%})",
                           f"{statistics.median(f64):.0%} ({min(f64):.0%}–{max(f64):.0%})"])
    split_rows = []
    for name, _ in contestants:
        cells = [name]
        for group in THREAD_GROUPS:
            for i in range(2):
                cells.append(f"{statistics.median(per_round(name, lambda r: r[64].split_us[group][i])):.1f}")
        cells.append(f"{statistics.median(per_round(name, lambda r: r[FLOOR].cpu_us_per_request)):.1f}")
        split_rows.append(cells)
    text = (f"{args.rounds} alternating rounds of `wrk -t1 -d{args.seconds}s`, one JSON row (1×64 FP32) per "
            "request, at 1 and 64 connections; ranges are min–max over rounds, latencies in µs. CPU µs and "
            "context switches (cs) are the server's own per request (all threads, from /proc), medians.\n\n"
            + markdown_table(["server", "c=1 p50", "c=1 p99", "c=1 req/s", "c=64 req/s", "c=1 CPU µs/req",
                              "c=1 cs/req", "c=64 CPU µs/req", "c=64 cs/req", "errors"], rows)
            + "\n\nAgainst nginx in the same round (median, min to max over rounds). The HTTP floor is a "
            "GET of `/v2/health/ready` at 64 connections (nginx: its fixed reply): the HTTP stack without "
            "the model's JSON, queue and run.\n\n"
            + markdown_table(["server", "c=1 p50 − nginx µs", "c=1 p99 − nginx µs", "c=64 req/s / nginx",
                              "HTTP floor c=64 / nginx"], ratio_rows)
            + "\n\nWhere the CPU goes at c=64 (µs per request, medians): the runtime workers (`mg-io`: HTTP, "
            "JSON, routing; nginx: its worker) and the rest (instance threads running the model, "
            "housekeeping), user and system time; and the HTTP floor's CPU µs per request.\n\n"
            + markdown_table(["server", "runtime user", "runtime sys", "model user", "model sys",
                              "HTTP floor, all threads"], split_rows))
    if idle is not None:
        text += f"\n\nIdle CPU of `modelgate` over {args.idle_seconds} s after a 2 s burst: {idle * 100:.2f} % of a core."
    if grpc64 is not None:
        http64 = runs["modelgate"][-1][64].wrk.rps
        text += (f"\n\ngRPC c=64 (perf_analyzer, last round): {grpc64.infer_per_s:,.0f} infer/s = "
                 f"{grpc64.infer_per_s / http64:.0%} of HTTP c=64 in the same round ({http64:,.0f} req/s).")
    report.add(text)
    report.checks.append(Check("c=1 p50: modelgate − nginx (median)", statistics.median(gaps("modelgate", p50)),
                               40.0, higher_is_better=False, unit=" µs"))
    report.checks.append(Check("c=1 p99: modelgate − nginx (median)", statistics.median(gaps("modelgate", p99)),
                               200.0, higher_is_better=False, unit=" µs"))
    report.checks.append(Check("c=64 req/s: modelgate / nginx (median)",
                               statistics.median(ratios("modelgate", rps64)) * 100, 60.0, unit=" %"))
    if idle is not None:
        report.checks.append(Check("idle CPU, % of a core", idle * 100, 1.0, higher_is_better=False, unit=" %"))
    errors = sum(run.wrk.errors for name, _ in contestants for r in runs[name] for run in r.values())
    report.checks.append(Check("wrk errors, every server", float(errors), 0.0, higher_is_better=False, unit=""))
    report.write(readme=args.readme)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())

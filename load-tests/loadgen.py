"""The two load generators, run with bounded time and parsed into plain dicts.

* wrk (Debian): HTTP/1.1 keep-alive, one thread, N connections, a fixed JSON body (post.lua).
  A C tool that does not run out of CPU before the servers do at these rates.
* perf_analyzer (Triton's, from .venv/client via scripts/perf_analyzer): HTTP or gRPC, closed
  loop at a fixed concurrency, random input data, reads the model config and statistics from the
  server. Its CSV latencies are in microseconds.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from procs import REPO, RESULTS, http_get

PERF_ANALYZER = REPO / "scripts" / "perf_analyzer"
WRK_SCRIPT = REPO / "load-tests" / "post.lua"


@dataclass
class WrkResult:
    """One wrk run."""

    connections: int
    requests: int
    seconds: float
    errors: int  # connect/read/write/timeout errors plus non-2xx answers
    p50_us: float
    p90_us: float
    p99_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, body: Path | None, connections: int, seconds: int = 5, threads: int = 1,
        header_length: int | None = None) -> WrkResult:
    """`wrk -t1 -cN -dS` POSTing `body` (JSON, or with `header_length` a binary-extension body
    whose JSON header is that long), or with `body=None` GETting `url`; raises if wrk fails or
    prints no summary."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), url, "--", "-" if body is None else str(body)]
    if header_length is not None:
        argv.append(str(header_length))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    line = next((l for l in done.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(s[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_status", "errors_timeout"))
    return WrkResult(connections=connections, requests=s["requests"], seconds=s["duration_us"] / 1e6,
                     errors=errors, p50_us=s["p50_us"], p90_us=s["p90_us"], p99_us=s["p99_us"])


@dataclass
class PerfResult:
    """One perf_analyzer concurrency level."""

    concurrency: int
    infer_per_s: float
    p50_us: float
    p99_us: float
    server_queue_us: float
    server_compute_us: float  # input + infer + output, per request
    stable: bool  # False: the windows varied more than 25 % and the loose retry was taken


UNSTABLE = "Failed to obtain stable measurement"


def perf_analyzer(model: str, address: str, protocol: str, concurrency: int, csv_path: Path,
                  interval_ms: int = 2000, max_trials: int = 3, extra: list[str] | None = None,
                  timeout: float = 60) -> PerfResult:
    """perf_analyzer at one concurrency against `address` (host:port); raises on failure.

    Stability: `-s 50` first, because on 2 shared cores the default 10 % rarely settles. A level
    that does not settle within `max_trials` windows (a busy machine) is measured once more with
    `-s 1000` (any three windows), and the result is marked unstable rather than dropped. Few
    windows on purpose: perf_analyzer keeps every request's record of the level, and its main
    thread's work per window grows with them (see Stalls).

    Stalls: at ~20k requests/s perf_analyzer 2.50's main thread can fall behind for good in
    `InferenceProfiler::Summarize` → `ValidLatencyMeasurement` (gdb), while its workers keep adding
    records: seen here at 100 % of a core and 1-1.7 GB resident after a minute, replies left unread
    in its sockets while the server kept serving. A level then never ends. It happened when the
    server ran in a session of its own (see procs.py); the check stays for other causes. A run past `timeout` is reported (`hang_report`: sockets, perf_analyzer's threads,
    the server's threads) and run once more; a second one is an error.
    """
    argv = [str(PERF_ANALYZER), "-m", model, "-u", address, "-i", protocol,
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(interval_ms), "-f", str(csv_path), *(extra or [])]
    csv_path.unlink(missing_ok=True)
    stable = True
    done = _run_perf_analyzer([*argv, "--stability-percentage", "50", "--max-trials", str(max_trials)], timeout)
    if done.returncode != 0 and UNSTABLE in done.stdout + done.stderr:
        stable = False
        done = _run_perf_analyzer([*argv, "--stability-percentage", "1000", "--max-trials", "3"], timeout)
    if done.returncode != 0 or not csv_path.exists():
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {' '.join(argv)}\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))

    def col(name: str) -> float:
        return float(row.get(name) or 0)

    return PerfResult(
        concurrency=int(col("Concurrency")),
        infer_per_s=col("Inferences/Second"),
        p50_us=col("p50 latency"),
        p99_us=col("p99 latency"),
        server_queue_us=col("Server Queue"),
        server_compute_us=col("Server Compute Input") + col("Server Compute Infer") + col("Server Compute Output"),
        stable=stable,
    )


class Hung(RuntimeError):
    """perf_analyzer ran past its time limit."""


def _run_perf_analyzer(argv: list[str], timeout: float, retry_hang: bool = True) -> subprocess.CompletedProcess:
    """Runs perf_analyzer; past `timeout` it is treated as hung: the sockets of its server port
    and its output so far are saved under results/logs for a look, it is killed, and (once) run
    again."""
    try:
        return _run_once(argv, timeout)
    except Hung as e:
        if not retry_hang:
            raise
        print(f"warning: {e}; running it again", flush=True)
        return _run_perf_analyzer(argv, timeout, retry_hang=False)


def _run_once(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        report = hang_report(argv, popen.pid)
        popen.kill()
        stdout, stderr = popen.communicate()
        with open(report, "a") as f:
            f.write(f"\n== perf_analyzer output\n{stdout}\n{stderr}\n")
        raise Hung(f"perf_analyzer ran past {timeout:.0f} s (hung?): {' '.join(argv)}; "
                           f"sockets and output saved in {report}") from None
    return subprocess.CompletedProcess(argv, popen.returncode, stdout, stderr)


def hang_report(argv: list[str], client_pid: int) -> Path:
    """Writes what the connections to the server perf_analyzer was driving look like, what
    perf_analyzer's threads are doing, and where the server's threads are (their kernel wait
    channel, and a gdb backtrace when gdb exists). Also run by tests/compat/run.sh for a stuck
    measurement: `python load-tests/loadgen.py hang-report CLIENT_PID PERF_ANALYZER_ARGV...`."""
    RESULTS.joinpath("logs").mkdir(parents=True, exist_ok=True)
    path = RESULTS / "logs" / f"perf_analyzer-hang-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    port = argv[argv.index("-u") + 1].rsplit(":", 1)[1]
    parts = [" ".join(argv), f"load average: {os.getloadavg()}"]
    sockets = subprocess.run(["ss", "-tnoi", f"( sport = :{port} or dport = :{port} )"],
                             capture_output=True, text=True).stdout
    parts.append(f"== ss -tnoi (server port {port}), while perf_analyzer waits\n{sockets}")
    # The wrapper script execs perf_analyzer, so the pid is perf_analyzer's own.
    client = subprocess.run(["top", "-H", "-b", "-n", "1", "-p", str(client_pid)], capture_output=True, text=True).stdout
    parts.append(f"== perf_analyzer threads (top -H)\n{client}")
    if shutil.which("gdb"):
        bt = subprocess.run(["gdb", "-p", str(client_pid), "-batch", "-ex", "thread apply 1 bt 40"],
                            capture_output=True, text=True, timeout=60).stdout
        parts.append(f"== gdb backtrace of perf_analyzer's main thread\n{bt}")
    listening = subprocess.run(["ss", "-tlnpH", f"( sport = :{port} )"], capture_output=True, text=True).stdout
    pids = sorted(set(re.findall(r"pid=(\d+)", listening)))
    for pid in pids:
        threads = []
        for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
            try:
                comm = (task / "comm").read_text().strip()
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (task / "wchan").read_text().strip()
            except OSError:
                continue
            threads.append(f"{task.name} {comm} state={state} wchan={wchan}")
        parts.append(f"== server pid {pid} threads\n" + "\n".join(threads))
        if shutil.which("gdb"):
            bt = subprocess.run(["gdb", "-p", pid, "-batch", "-ex", "thread apply all bt 30"],
                                capture_output=True, text=True, timeout=60).stdout
            parts.append(f"== gdb backtraces of pid {pid}\n{bt}")
    path.write_text("\n\n".join(parts))
    return path


@dataclass
class BaselineRow:
    """In-process ONNX Runtime at one batch size (benches/ort_baseline.rs)."""

    batch_size: int
    us_per_call: float
    rows_per_s: float


def ort_baseline(model: Path, batch_sizes: list[int], seconds: float) -> dict[int, BaselineRow]:
    """Runs `cargo bench --bench ort_baseline` (release settings) and parses its CSV."""
    argv = ["cargo", "bench", "--quiet", "--bench", "ort_baseline", "--", "--model", str(model),
            "--batch-sizes", ",".join(map(str, batch_sizes)), "--seconds", str(seconds), "--csv"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                          timeout=900 + seconds * 1.2 * len(batch_sizes))
    if done.returncode != 0:
        raise RuntimeError(f"ort_baseline failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    rows = {}
    for record in csv.DictReader(line for line in done.stdout.splitlines() if line.strip()):
        b = int(record["batch_size"])
        rows[b] = BaselineRow(b, float(record["us_per_call"]), float(record["rows_per_s"]))
    return rows


@dataclass
class Counters:
    """Triton statistics counters of one model version at one moment."""

    rows: int  # inference_count: rows (batch elements) executed
    executions: int  # execution_count: model runs
    # batch size -> (executions, total compute_infer ns)
    per_batch: dict[int, tuple[int, int]]


def model_counters(http_base: str, model: str, headers: dict[str, str] | None = None) -> Counters:
    """GET /v2/models/{model}/stats (the first version listed)."""
    status, body = http_get(f"{http_base}/v2/models/{model}/stats", headers=headers)
    if status != 200:
        raise RuntimeError(f"stats of {model}: HTTP {status}: {body[:300]!r}")
    stats = json.loads(body)["model_stats"][0]
    per_batch = {int(b["batch_size"]): (int(b["compute_infer"]["count"]), int(b["compute_infer"]["ns"]))
                 for b in stats.get("batch_stats", [])}
    return Counters(int(stats["inference_count"]), int(stats["execution_count"]), per_batch)


def mean_batch(before: Counters, after: Counters) -> float | None:
    """Rows per execution between two readings (None if nothing ran)."""
    executions = after.executions - before.executions
    return (after.rows - before.rows) / executions if executions > 0 else None


def compute_time(before: Counters, after: Counters) -> tuple[int, float]:
    """(executions, seconds the model ran) between two readings, from the per-batch-size stats."""
    count = sum(after.per_batch[b][0] - before.per_batch.get(b, (0, 0))[0] for b in after.per_batch)
    ns = sum(after.per_batch[b][1] - before.per_batch.get(b, (0, 0))[1] for b in after.per_batch)
    return count, ns / 1e9


if __name__ == "__main__":
    import sys

    # `loadgen.py hang-report CLIENT_PID ARGV...`: the report of a stuck perf_analyzer, printed.
    if len(sys.argv) < 4 or sys.argv[1] != "hang-report":
        sys.exit("usage: loadgen.py hang-report CLIENT_PID PERF_ANALYZER_ARGV...")
    print(hang_report(sys.argv[3:], int(sys.argv[2])).read_text())

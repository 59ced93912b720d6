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


def wrk(url: str, body: Path, connections: int, seconds: int = 5, threads: int = 1) -> WrkResult:
    """`wrk -t1 -cN -dS` POSTing `body`; raises if wrk fails or prints no summary."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), url, "--", str(body)]
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
                  interval_ms: int = 2000, max_trials: int = 6, extra: list[str] | None = None,
                  timeout: float = 120) -> PerfResult:
    """perf_analyzer at one concurrency against `address` (host:port); raises on failure.

    Stability: `-s 25` first, because on 2 shared cores the default 10 % rarely settles. A level
    that still does not settle within `max_trials` windows (a busy machine) is measured once more
    with `-s 100`, and the result is marked unstable rather than dropped.
    """
    argv = [str(PERF_ANALYZER), "-m", model, "-u", address, "-i", protocol,
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(interval_ms), "--max-trials", str(max_trials),
            "-f", str(csv_path), *(extra or [])]
    csv_path.unlink(missing_ok=True)
    stable = True
    done = _run_perf_analyzer([*argv, "--stability-percentage", "25"], timeout)
    if done.returncode != 0 and UNSTABLE in done.stdout + done.stderr:
        stable = False
        done = _run_perf_analyzer([*argv, "--stability-percentage", "100"], timeout)
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


def _run_perf_analyzer(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs perf_analyzer; past `timeout` it is treated as hung: the sockets of its server port
    and its output so far are saved under results/logs for a look, then it is killed."""
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        report = _hang_report(argv)
        popen.kill()
        stdout, stderr = popen.communicate()
        with open(report, "a") as f:
            f.write(f"\n== perf_analyzer output\n{stdout}\n{stderr}\n")
        raise RuntimeError(f"perf_analyzer ran past {timeout:.0f} s (hung?): {' '.join(argv)}; "
                           f"sockets and output saved in {report}") from None
    return subprocess.CompletedProcess(argv, popen.returncode, stdout, stderr)


def _hang_report(argv: list[str]) -> Path:
    """Writes the state of the connections to the server perf_analyzer was driving."""
    RESULTS.joinpath("logs").mkdir(parents=True, exist_ok=True)
    path = RESULTS / "logs" / f"perf_analyzer-hang-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    port = argv[argv.index("-u") + 1].rsplit(":", 1)[1]
    sockets = subprocess.run(["ss", "-tnoi", f"( sport = :{port} or dport = :{port} )"],
                             capture_output=True, text=True).stdout
    path.write_text(f"{' '.join(argv)}\n\n== ss -tnoi (server port {port}), while perf_analyzer waits\n{sockets}")
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

#!/usr/bin/env python3
"""Runs benches/batching.rs (criterion) and tabulates it: for concat and split, at each size, the
gateway's time and GiB/s next to a plain memcpy of the same bytes from the same run, and their
ratio.

    .venv/client/bin/python load-tests/bench_table.py [--quick] [--no-run] [--readme]

--no-run tabulates what target/criterion holds from the last `cargo bench --bench batching`.
Takes about 1.5 minutes (--quick: 30 s). Writes load-tests/results/bench_batching.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from procs import REPO, stop_on_sigterm
from report import Report, markdown_table

CRITERION = REPO / "target" / "criterion"


def estimate_ns(group: str, function: str, size: str) -> tuple[float, int]:
    """(mean ns per iteration, bytes per iteration) of one criterion benchmark."""
    folder = CRITERION / group / function / size / "new"
    mean = json.loads((folder / "estimates.json").read_text())["mean"]["point_estimate"]
    throughput = json.loads((folder / "benchmark.json").read_text())["throughput"]["Bytes"]
    return mean, throughput


def size_key(size: str) -> tuple[int, int]:
    """'64KiBx8' -> (65536, 8), for sorting."""
    row, n = size.split("x")
    value = int(row.rstrip("KiB")) * (1024 if row.endswith("KiB") else 1)
    return value, int(n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="criterion --quick")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the last results")
    parser.add_argument("--readme", action="store_true", help="copy the table into load-tests/README.md")
    args = parser.parse_args()
    stop_on_sigterm()

    report = Report("bench_batching", "Batch assembly and splitting against memcpy (criterion)")
    if not args.no_run:
        timing = ["--quick"] if args.quick else ["--warm-up-time", "1", "--measurement-time", "2"]
        subprocess.run(["cargo", "bench", "--quiet", "--bench", "batching", "--", *timing], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, timeout=1200)
    rows = []
    for group in ("concat", "split"):
        sizes = sorted((p.name for p in (CRITERION / group / "gateway").iterdir() if p.is_dir()), key=size_key)
        for size in sizes:
            ours, payload = estimate_ns(group, "gateway", size)
            base, _ = estimate_ns(group, "memcpy", size)
            gib = 2**30 / 1e9
            rows.append([group, size.replace("x", " × "), payload, ours, payload / ours / gib, base,
                         payload / base / gib, f"{ours / base:.2f}"])
            report.csv_rows.append({"operation": group, "size": size, "bytes": payload, "gateway_ns": ours,
                                    "memcpy_ns": base, "ratio": ours / base})
    report.add("`cargo bench --bench batching`: one FP32 row per request; memcpy = copying the same "
               "bytes into a warm, already allocated buffer (concat) or one buffer per request (split). "
               "`concat` of one request borrows its bytes and `split` slices the output (no copy), so "
               "their time does not grow with the size.\n\n" + markdown_table(
                   ["operation", "row × requests", "bytes", "gateway ns", "GiB/s", "memcpy ns", "GiB/s",
                    "gateway / memcpy time"], rows))
    report.write(readme=args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())

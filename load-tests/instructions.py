#!/usr/bin/env python3
"""CPU instructions per request (issue 16), counted by valgrind's callgrind: stable on a busy machine.

Wall-clock figures move with whatever else runs on these shared 2-core machines; the number of
instructions a server executes per request does not. Each server runs under
`valgrind --tool=callgrind --separate-threads=yes` with instrumentation off while it starts; then
instrumentation goes on, a 2 s warm-up runs, the counters are zeroed, wrk drives it for
`--seconds` at `--connections`, and the counters are dumped. Instructions per request = the dump's
total / the requests wrk completed (requests still in flight when wrk stops, at most
`--connections`, are counted in the instructions but not in the requests: ~1 % at the default).

Per thread: modelgate's runtime workers (`mg-io`: HTTP, JSON, routing) against its instance
thread (`mlp-0`: batching, the model, the answer) and the rest; nginx's one process, with
`master_process off`, for the floor. With `--functions N` the N costliest functions (inclusive) of
modelgate are listed too.

    .venv/client/bin/python load-tests/instructions.py [--binary B] [--before B0] [--connections 64]
        [--seconds 10] [--no-nginx]

Prints a table; writes load-tests/results/instructions.md and the callgrind files under
load-tests/results/callgrind/.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import wrk
from peers import MODEL, check_answer, nginx_conf, request_and_reference, v2_reply
from procs import REPO, RESULTS, Processes, free_port, modelgate_argv, stop_on_sigterm
from report import Report, markdown_table

OUT = RESULTS / "callgrind"


def valgrind(out_prefix: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out_prefix}.%p"]


def control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True, timeout=120)


def thread_totals(prefix: Path, pid: int, since: float) -> dict[str, int]:
    """Instructions per thread name in the dumps written after `since` (one file per thread)."""
    totals: dict[str, int] = {}
    # `callgrind_control -d` writes part 1 (`<prefix>.<pid>.1-<thread>`); the files without a part
    # number are written at exit and hold only what ran after the dump.
    for f in prefix.parent.glob(f"{prefix.name}.{pid}.1-*"):
        if f.stat().st_mtime < since:
            continue
        text = f.read_text(errors="replace")
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        thread = re.search(r"^thread: (\d+)", text, re.M)
        name = thread_name(pid, int(thread.group(1))) if thread else "?"
        if m:
            totals[name] = totals.get(name, 0) + int(m.group(1))
    return totals


_names: dict[tuple[int, int], str] = {}


def remember_thread_names(pid: int) -> None:
    """Valgrind numbers threads 1.. in creation order; /proc lists them by tid, same order."""
    tids = sorted(int(t.name) for t in Path(f"/proc/{pid}/task").iterdir())
    for i, tid in enumerate(tids, start=1):
        try:
            name = (Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except OSError:
            continue
        _names[(pid, i)] = re.sub(r"-\d+$", "", name)


def thread_name(pid: int, index: int) -> str:
    return _names.get((pid, index), f"thread {index}")


def measure(procs: Processes, name: str, argv: list[str], url: str, ready: str, body_file: Path,
            connections: int, seconds: int, body: dict, expected) -> tuple[int, dict[str, int]]:
    prefix = OUT / name
    for old in OUT.glob(f"{name}.*"):
        old.unlink()
    server = procs.start(f"callgrind-{name}", valgrind(prefix) + argv)
    server.wait_http(ready, timeout=300)
    check_answer(name, url, body, expected)
    pid = server.popen.pid
    control(pid, "-i", "on")
    wrk(url, body_file, connections, 2)
    remember_thread_names(pid)
    control(pid, "-z")
    since = time.time()
    result = wrk(url, body_file, connections, seconds)
    control(pid, "-d")
    time.sleep(1)
    totals = thread_totals(prefix, pid, since - 1)
    procs.stop(server)
    return result.requests, totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "modelgate")
    parser.add_argument("--before", type=Path, help="a baseline modelgate binary, counted the same way")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-nginx", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    OUT.mkdir(parents=True, exist_ok=True)
    body, expected = request_and_reference()
    servers: list[tuple[str, Path | None]] = [] if args.no_nginx else [("nginx", None)]
    if args.before:
        servers.append(("before", args.before.resolve()))
    servers.append(("modelgate", args.binary.resolve()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mg-ir-") as tmp_name, Processes(RESULTS / "logs") as procs:
        tmp = Path(tmp_name)
        body_file = tmp / "body.json"
        body_file.write_text(json.dumps(body, separators=(",", ":")))
        for name, binary in servers:
            if name == "nginx":
                port = free_port()
                conf = nginx_conf(tmp / "nginx", port, v2_reply(expected), single_process=True)
                argv = [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp / "nginx"), "-c", str(conf)]
                url, ready = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", f"http://127.0.0.1:{port}/"
            else:
                http_port, grpc_port = free_port(), free_port()
                argv = modelgate_argv(binary, REPO / "models", http_port, grpc_port, [MODEL])
                url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer"
                ready = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready"
            requests, totals = measure(procs, name, argv, url, ready, body_file, args.connections,
                                          args.seconds, body, expected)
            total = sum(totals.values())
            split = ", ".join(f"{t}: {n / requests:,.0f}" for t, n in sorted(totals.items(), key=lambda kv: -kv[1])
                              if n / requests >= 50)
            print(f"{name:<9} {requests:>7} requests  {total / requests:>9,.0f} instructions/request  ({split})",
                  flush=True)
            rows.append([name, requests, f"{total / requests:,.0f}", split])
    report = Report("instructions", f"Instructions per request (callgrind), `{MODEL}`, wrk c={args.connections}")
    report.add(f"`valgrind --tool=callgrind`, counters zeroed after a 2 s warm-up, then `wrk -t1 "
               f"-c{args.connections} -d{args.seconds}s`; instructions of every thread / requests completed. "
               "Per thread name, instructions per request.\n\n"
               + markdown_table(["server", "requests", "instructions/request", "by thread"], rows))
    report.write(readme=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

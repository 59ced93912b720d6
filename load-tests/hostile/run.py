#!/usr/bin/env python3
"""Hostile load (issue #15): each attack of the issue, one at a time, against a gateway on default
limits, with a well-behaved client beside it sending one small inference every 50 ms.

Per attack it measures the server's peak RSS (/proc/PID/status, every 50 ms), the bystander's p99
latency and errors, whether every listener (HTTP, gRPC, metrics, admin) still accepts in the middle
of the attack, and how long the server takes after the attack to come back to its idle RSS
(+-10 %, at most 30 s). It prints a table and exits 1 when a goal is missed:

    peak RSS < server.max_inflight_bytes + 256 MiB, bystander p99 < 50 ms, 0 bystander errors,
    every listener accepting, idle RSS again within 30 s.

Attacks run one after another on one server, so a row's idle RSS is what the previous attack left.

Every attack is bounded in count and time and runs on loopback only. `--fast` runs the attacks
that cost the server no CPU to speak of (idle connections: scripts/test.sh runs those, about
30 s); the whole run takes about 4 minutes. The CPU-heavy attacks (inflating gzip bombs, encoding
360 MB of JSON) compete with the bystander for the machine's cores, so their p99 says as much
about the machine as about the server: run them on an otherwise idle machine and a release build.

    .venv/client/bin/python load-tests/hostile/run.py [--fast] [--binary target/release/modelgate] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import REPO, RESULTS, Processes, free_port, stop_on_sigterm  # noqa: E402

MIB = 1 << 20
MAX_INFLIGHT = 1 << 30  # the default server.max_inflight_bytes
RSS_GOAL = MAX_INFLIGHT + 256 * MIB
P99_GOAL_MS = 50.0
RECOVERY_S = 30.0
SIMPLE = json.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}).encode()
IDENTITY_TYPES = [("BOOL", 1), ("INT8", 1), ("INT16", 2), ("INT32", 4), ("INT64", 8), ("UINT8", 1),
                  ("UINT16", 2), ("UINT32", 4), ("UINT64", 8), ("FP16", 2), ("FP32", 4), ("FP64", 8)]


@dataclass
class Gateway:
    pid: int
    http: int
    grpc: int
    metrics: int
    admin: int


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopping = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.05)


# --- the well-behaved client: its own process, so an attack's Python threads cannot skew it ---

def bystander(port: int, seconds: float, out: Path) -> None:
    latencies, errors = [], []
    conn = HTTPConnection("127.0.0.1", port, timeout=5)
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            conn.request("POST", "/v2/models/simple/infer", SIMPLE, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"HTTP {response.status}")
        except OSError as e:
            errors.append(repr(e))
            conn.close()
            conn = HTTPConnection("127.0.0.1", port, timeout=5)
        latencies.append((time.monotonic() - start) * 1000)
        next_at += 0.05
        time.sleep(max(0.0, next_at - time.monotonic()))
    out.write_text(json.dumps({"latencies": latencies, "errors": errors}))


# --- the listeners: each must still accept (and answer) during an attack ---

def listeners_accept(g: Gateway) -> list[str]:
    failed = []
    for name, port, path in [("http", g.http, "/v2/health/live"), ("grpc", g.grpc, "/v2/health/live"),
                             ("metrics", g.metrics, "/metrics"), ("admin", g.admin, "/admin/v1/routes")]:
        try:
            conn = HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status >= 500:
                failed.append(f"{name}: HTTP {status}")
        except OSError as e:
            failed.append(f"{name}: {e!r}")
    return failed


# --- the attacks: each takes the gateway and a stop event, and holds until it is set ---

def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return s


def hold(sockets: list[socket.socket], stop: threading.Event) -> None:
    """Holds the sockets until `stop`, then ends them. A shutdown first: a plain close leaves the
    connection open while another thread of the attack still blocks in a send on it."""
    stop.wait()
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the server
        s.close()


def silent_sockets(g: Gateway, stop: threading.Event) -> None:
    """Finding 1: 2,000 connections that send nothing."""
    hold([connect(g.http) for _ in range(2000)], stop)


def h2_without_streams(g: Gateway, stop: threading.Event) -> None:
    """Finding 1: 300 HTTP/2 connections that send the preface and SETTINGS, then no request."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    sockets = []
    for _ in range(300):
        s = connect(g.http)
        s.sendall(preface)
        sockets.append(s)
    hold(sockets, stop)


def stalled_chunked_uploads(g: Gateway, stop: threading.Event) -> None:
    """Finding 2: 40 chunked uploads of 32 MiB each (1.25 GiB together) that then stall."""
    chunk = b"%x\r\n" % MIB + b" " * MIB + b"\r\n"
    head = b"POST /v2/models/simple/infer HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"

    def upload(sockets: list[socket.socket]) -> None:
        s = connect(g.http)
        sockets.append(s)
        try:
            s.sendall(head)
            for _ in range(32):
                if stop.is_set():
                    return
                s.sendall(chunk)
        except OSError:
            pass  # refused (429) and closed: what the budget is for

    sockets: list[socket.socket] = []
    threads = [threading.Thread(target=upload, args=(sockets,), daemon=True) for _ in range(40)]
    for t in threads:
        t.start()
    hold(sockets, stop)


GZIP_BOMB = gzip.compress(b" " * (80 * MIB), 9)


def flood(clients: int, call, stop: threading.Event) -> None:
    """`clients` threads, each making `call()` again and again until `stop` (a refusal is the point)."""
    def loop() -> None:
        while not stop.is_set():
            try:
                call()
            except OSError:
                pass

    for _ in range(clients):
        threading.Thread(target=loop, daemon=True).start()
    stop.wait()


def gzip_bombs(g: Gateway, stop: threading.Event) -> None:
    """Finding 3: 48 concurrent gzip bodies of ~80 KB, each inflating to 80 MiB (over the 64 MiB limit)."""
    def bomb() -> None:
        conn = HTTPConnection("127.0.0.1", g.http, timeout=30)
        conn.request("POST", "/v2/models/simple/infer", GZIP_BOMB,
                     {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        conn.getresponse().read()
        conn.close()

    flood(48, bomb, stop)


def json_response_request() -> tuple[bytes, int]:
    """A gzip body of ~60 KB asking identity for OUT_BOOL as JSON: 60 MiB of BOOL become 360 MB of `false,`."""
    n = 60 * MIB
    inputs, sections = [], []
    for dtype, size in IDENTITY_TYPES + [("BYTES", 5)]:
        count = n if dtype == "BOOL" else 1
        data = bytes(count) if dtype == "BOOL" else (b"\x01\x00\x00\x00x" if dtype == "BYTES" else bytes(size))
        inputs.append({"name": f"IN_{dtype}", "datatype": dtype, "shape": [1, count],
                       "parameters": {"binary_data_size": len(data)}})
        sections.append(data)
    header = json.dumps({"inputs": inputs, "outputs": [{"name": "OUT_BOOL"}]}).encode()
    return gzip.compress(header + b"".join(sections), 9), len(header)


def unread_json_responses(g: Gateway, stop: threading.Event) -> None:
    """Finding 4: 8 clients each send that request and never read the 360 MB answer."""
    body, header_length = json_response_request()
    head = (f"POST /v2/models/identity/infer HTTP/1.1\r\nhost: t\r\ncontent-encoding: gzip\r\n"
            f"inference-header-content-length: {header_length}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    sockets = []
    for _ in range(8):
        s = connect(g.http)
        s.sendall(head + body)
        sockets.append(s)
    hold(sockets, stop)


def pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(num: int, payload: bytes) -> bytes:
    return pb_varint(num << 3 | 2) + pb_varint(len(payload)) + payload


def empty_bytes_message(size: int) -> bytes:
    """A ModelInferRequest for identity whose IN_BYTES has `size`/2 empty bytes_contents entries."""
    contents = b"\x42\x00" * (size // 2)  # field 8 (bytes_contents), length 0
    tensor = pb_field(1, b"IN_BYTES") + pb_field(2, b"BYTES") + pb_field(3, pb_varint(1) + pb_varint(size // 2)) \
        + pb_field(5, contents)
    return pb_field(1, b"identity") + pb_field(5, tensor)


def grpc_post(port: int, message: bytes, stop: threading.Event) -> None:
    """One unary ModelInfer call with `message` as it is (grpcio, no serializer)."""
    import grpc  # from the client venv (.venv/client)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            call(message, timeout=30)
        except grpc.RpcError:
            pass  # refused: what the bound is for


def grpc_empty_elements(g: Gateway, stop: threading.Event) -> None:
    """Finding 6: 4 concurrent 60 MB gRPC messages of empty bytes_contents (30 M elements each), twice."""
    message = empty_bytes_message(60_000_000)
    for _ in range(2):
        threads = [threading.Thread(target=grpc_post, args=(g.grpc, message, stop), daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stop.wait()


GRPC_BOMB = gzip.compress(bytes(60 * MIB), 9)  # ~61 KB: fits HTTP/2's first 64 KiB window


def h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name: str, value: str) -> bytes:
    """A header as HPACK's "literal without indexing, new name", no Huffman (lengths < 127)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def grpc_compressed_call(port: int, message: bytes) -> None:
    """One ModelInfer call whose message is sent gzip-compressed as it is, over HTTP/2 written by hand
    (grpcio would compress 60 MiB on the attacking side every time); waits for the call's end."""
    headers = b"".join(hpack_literal(n, v) for n, v in [
        (":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", "t"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip"), ("te", "trailers")])
    framed = b"\x01" + struct.pack(">I", len(message)) + message
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"") + h2_frame(1, 4, 1, headers)
                  + h2_frame(0, 1, 1, framed))
        buffered = b""
        while True:
            while len(buffered) < 9 or len(buffered) < 9 + int.from_bytes(buffered[:3], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    return
                buffered += chunk
            length, kind, flags = int.from_bytes(buffered[:3], "big"), buffered[3], buffered[4]
            buffered = buffered[9 + length:]
            if kind == 4 and not flags & 1:
                s.sendall(h2_frame(4, 1, 0, b""))  # SETTINGS ack
            if (kind == 1 and flags & 1) or kind in (3, 7):  # trailers, RST_STREAM, GOAWAY
                return


def grpc_gzip_bombs(g: Gateway, stop: threading.Event) -> None:
    """Finding 6: 8 clients in a loop, each sending a ~61 KB gzip gRPC message that inflates to 60 MiB."""
    flood(8, lambda: grpc_compressed_call(g.grpc, GRPC_BOMB), stop)


@dataclass
class Attack:
    name: str
    run: object
    seconds: float
    fast: bool


ATTACKS = [
    Attack("silent sockets (2,000)", silent_sockets, 12, True),
    Attack("HTTP/2 without streams (300)", h2_without_streams, 8, True),
    Attack("stalled chunked uploads (40 x 32 MiB)", stalled_chunked_uploads, 12, False),
    Attack("gzip bombs (48 x 80 MiB)", gzip_bombs, 10, False),
    Attack("unread 360 MB JSON responses (8)", unread_json_responses, 15, False),
    Attack("gRPC empty elements (4 x 60 MB)", grpc_empty_elements, 8, False),
    Attack("gRPC gzip bombs (8 x 60 MiB)", grpc_gzip_bombs, 10, False),
]


@dataclass
class Row:
    attack: str
    idle_rss: int
    peak_rss: int
    p99_ms: float
    requests: int
    errors: list[str]
    listeners: list[str]
    recovered_s: float | None
    final_rss: int
    missed: list[str] = field(default_factory=list)


def run_attack(g: Gateway, attack: Attack, log_dir: Path) -> Row:
    idle = rss(g.pid)
    sampler = RssSampler(g.pid)
    sampler.start()
    out = log_dir / "bystander.json"
    by = subprocess.Popen([sys.executable, __file__, "--bystander", str(g.http), str(attack.seconds + 2), str(out)])
    time.sleep(1)
    stop = threading.Event()
    worker = threading.Thread(target=attack.run, args=(g, stop), daemon=True)
    worker.start()
    time.sleep(attack.seconds / 2)
    listeners = listeners_accept(g)
    time.sleep(attack.seconds / 2)
    stop.set()
    worker.join(30)
    by.wait(60)
    sampler.stopping.set()
    sampler.join()
    result = json.loads(out.read_text())
    lat = sorted(result["latencies"])
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("inf")
    start = time.monotonic()
    recovered = None
    while time.monotonic() - start < RECOVERY_S:
        if rss(g.pid) <= idle * 1.10:
            recovered = time.monotonic() - start
            break
        time.sleep(0.25)
    row = Row(attack.name, idle, sampler.peak, p99, len(lat), result["errors"], listeners, recovered, rss(g.pid))
    if row.peak_rss >= RSS_GOAL:
        row.missed.append("RSS")
    if p99 >= P99_GOAL_MS:
        row.missed.append("p99")
    if row.errors:
        row.missed.append("errors")
    if listeners:
        row.missed.append("listeners")
    if recovered is None:
        row.missed.append("recovery")
    return row


def start_gateway(procs: Processes, binary: Path, workdir: Path) -> Gateway:
    ports = [free_port() for _ in range(4)]
    token = workdir / "admin-token"
    token.write_text("hostile-harness-token\n")
    argv = [str(binary), "serve", "--model-repository", str(REPO / "models"), "--http-address", "127.0.0.1",
            "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
            "--admin-port", str(ports[3]), "--admin-token-file", str(token), "--control-plane-port", "0",
            "--data-dir", str(workdir / "data"), "--load-model", "simple", "--load-model", "identity"]
    server = procs.start("modelgate", argv)
    server.wait_http(f"http://127.0.0.1:{ports[0]}/v2/health/ready", 60)
    # Warm both models once.
    conn = HTTPConnection("127.0.0.1", ports[0], timeout=10)
    conn.request("POST", "/v2/models/simple/infer", SIMPLE, {"Content-Type": "application/json"})
    conn.getresponse().read()
    return Gateway(server.popen.pid, *ports)


def mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="only the attacks that take a few seconds")
    parser.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "modelgate")
    parser.add_argument("--only", action="append", help="attacks whose name contains this (repeatable)")
    parser.add_argument("--bystander", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bystander:
        bystander(int(args.bystander[0]), float(args.bystander[1]), Path(args.bystander[2]))
        return 0
    stop_on_sigterm()
    attacks = [a for a in ATTACKS if (a.fast or not args.fast)
               and (not args.only or any(o.lower() in a.name.lower() for o in args.only))]
    log_dir = RESULTS / "hostile"
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Processes(log_dir) as procs:
        g = start_gateway(procs, args.binary, Path(tmp))
        for attack in attacks:
            print(f"-- {attack.name} ({attack.seconds:.0f} s)", flush=True)
            rows.append(run_attack(g, attack, log_dir))
    print()
    print(f"| attack | idle RSS | peak RSS (< {mib(RSS_GOAL)}) | bystander p99 (< {P99_GOAL_MS:.0f} ms) | "
          f"bystander requests | errors | listeners | back to idle | missed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        errors = f"{len(r.errors)}" + (f" ({r.errors[0]})" if r.errors else "")
        back = f"{r.recovered_s:.1f} s" if r.recovered_s is not None else f"no ({mib(r.final_rss)} at 30 s)"
        print(f"| {r.attack} | {mib(r.idle_rss)} | {mib(r.peak_rss)} | {r.p99_ms:.1f} ms | {r.requests} | {errors} | "
              f"{'all accept' if not r.listeners else '; '.join(r.listeners)} | {back} | {', '.join(r.missed) or '-'} |")
    return 1 if any(r.missed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

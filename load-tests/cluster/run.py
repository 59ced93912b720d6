#!/usr/bin/env python3
"""100 gateways long-polling two control-plane replicas on one PostgreSQL, with blobs in S3.

Run under a throwaway PostgreSQL (stdlib Python only; moto from `scripts/setup.sh moto`):

    scripts/with-postgres.sh python3 load-tests/cluster/run.py [--pollers 100] [--rounds 6]

What it starts, all on 127.0.0.1 ports the OS picks, and stops at the end:
- moto's S3 server with one bucket;
- replicas A and B: `modelgate-control-plane --db postgres://.../cluster_load --blob-store s3://...`
  (each with its own data directory, `application_name` set so PostgreSQL can count each one's
  connections);
- L: a third control plane on SQLite with blobs in its data directory (the local-store baseline
  for blob fetch throughput).

What it measures:
1. Fan-out: N pollers (half on A, half on B, each knowing both URLs like a gateway with
   `sync.registry = "http://a,http://b"`) long-poll `/cp/v1/sync`; the champion alias is moved at
   A or B in turn; per round, the time from the move until each poller holds the new version
   (p50/p99/max, how many within 1 s).
2. Resources of replica A while N long polls wait and during the rounds: CPU (% of one core, from
   /proc), RSS, and each replica's PostgreSQL connections (pg_stat_activity).
3. Failover: replica B is killed (SIGKILL); its pollers move to A; one more alias move at A must
   reach all N. Every state every poller received is checked afterwards: generations never go
   back, and the champion in each state is the one the alias history says for that generation
   (nothing serves a wrong version).
4. Blob fetch throughput through the control plane: the same blob from A (S3 bucket behind it)
   and from L (local files), alternating, several times.

Exit status 1 when a fan-out round misses the 1 s goal, a poller saw a wrong version, or a
poller did not fail over.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = "fraud"


# === processes ===


class Processes:
    """Started processes, stopped (with SIGTERM, then SIGKILL) when the run ends."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=False)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for process in self.started:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    """The rest of the first stdout line starting with `prefix`."""
    result: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(prefix):
                result.append(line[len(prefix) :].strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        raise RuntimeError(f"no '{prefix}' line within {timeout} s (exit status {process.poll()})")
    return result[0]


def psql(db_url: str, sql: str) -> str:
    psql_bin = os.environ.get("PSQL", "/usr/lib/postgresql/15/bin/psql")
    return subprocess.run([psql_bin, db_url, "-Atc", sql], check=True, capture_output=True, text=True).stdout


# === the control plane's API, for the driver ===


class Api:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: bytes | dict | None = None, timeout: float = 120):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("authorization", f"Bearer {self.token}")
        if isinstance(body, dict):
            request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return json.loads(text) if text else None

    def put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.call("PUT", f"/cp/v1/blobs/{digest}", data)
        return digest

    def push(self, files: dict[str, bytes]) -> int:
        entries = [{"path": p, "size": len(b), "sha256": self.put_blob(b)} for p, b in files.items()]
        return self.call("POST", f"/cp/v1/models/{MODEL}/versions", {"format": "onnx", "files": entries})["version"]

    def set_champion(self, version: int) -> int:
        """Moves the alias; returns the generation it committed at (the answer's ETag)."""
        request = urllib.request.Request(
            f"{self.base}/cp/v1/models/{MODEL}/aliases/champion",
            data=json.dumps({"version": version}).encode(),
            method="PUT",
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.headers["etag"].strip('"'))


# === pollers: the sync protocol as a gateway speaks it ===


class Poller:
    """One simulated gateway: long-polls its replica, fails over to the next URL on errors."""

    def __init__(self, index: int, urls: list[str], token: str, wait_s: int):
        self.id = f"gw-{index:03d}"
        self.urls = urls
        self.current = 0
        self.token = token
        self.wait_s = wait_s
        self.generation = 0
        self.champion: int | None = None
        self.seen: list[tuple[float, int, int | None, str]] = []  # (when, generation, champion, replica)
        self.failovers = 0
        self.changed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        reader = writer = None
        while not stop.is_set():
            url = self.urls[self.current]
            host, port = url.removeprefix("http://").split(":")
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
                path = f"/cp/v1/sync?gateway={self.id}&since={self.generation}&wait={self.wait_s}s"
                writer.write(
                    f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {self.token}\r\n\r\n".encode()
                )
                await writer.drain()
                status, body = await asyncio.wait_for(read_response(reader), self.wait_s + 15)
                if status == 200:
                    state = json.loads(body)
                    champion = state.get("models", {}).get(MODEL, {}).get("aliases", {}).get("champion")
                    self.seen.append((time.monotonic(), state["generation"], champion, url))
                    self.generation = state["generation"]
                    if champion != self.champion:
                        self.champion = champion
                        self.changed.set()
                elif status != 304:
                    raise ConnectionError(f"status {status}")
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                if writer is not None:
                    writer.close()
                reader = writer = None
                if stop.is_set():
                    return
                # The gateway's client hands the call to the next replica at once.
                self.current = (self.current + 1) % len(self.urls)
                self.failovers += 1
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]
    return status, b""


# === resource sampling ===


class Sampler:
    """CPU and RSS of processes from /proc, every `period` seconds, in a thread."""

    def __init__(self, pids: dict[str, int], period: float = 0.5):
        self.pids, self.period = pids, period
        self.samples: list[tuple[float, dict[str, tuple[float, int]]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.ticks = os.sysconf("SC_CLK_TCK")

    def read(self, pid: int) -> tuple[float, int] | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / self.ticks
            rss = next(
                int(line.split()[1]) * 1024
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
            return cpu, rss
        except (OSError, StopIteration):
            return None

    def loop(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            row = {name: r for name, pid in self.pids.items() if (r := self.read(pid)) is not None}
            self.samples.append((now, row))
            self.stop.wait(self.period)

    def window(self, name: str, start: float, end: float) -> dict[str, float]:
        inside = [(t, row[name]) for t, row in self.samples if start <= t <= end and name in row]
        if len(inside) < 2:
            return {"cpu_pct": float("nan"), "rss_mib_max": float("nan")}
        (t0, (c0, _)), (t1, (c1, _)) = inside[0], inside[-1]
        return {
            "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
            "rss_mib_max": max(rss for _, (_, rss) in inside) / 2**20,
        }


def pg_connections(db_url: str, database: str) -> dict[str, int]:
    out = psql(
        db_url,
        f"SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = '{database}' GROUP BY 1 ORDER BY 1",
    )
    return {name: int(count) for name, count in (line.split("|") for line in out.splitlines() if line)}


# === measurements ===


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def fan_out(pollers: list[Poller], api: Api, version: int, timeout: float = 10) -> tuple[list[float], int]:
    """Moves champion to `version` through `api`; the seconds until each poller holds it."""
    for poller in pollers:
        poller.changed.clear()
    moved = time.monotonic()
    generation = await asyncio.to_thread(api.set_champion, version)
    deadline = moved + timeout
    while time.monotonic() < deadline and any(p.champion != version for p in pollers):
        await asyncio.sleep(0.005)
    latencies = []
    for poller in pollers:
        first = next((t for t, _, champion, _ in poller.seen if t >= moved and champion == version), None)
        latencies.append(first - moved if first is not None else float("inf"))
    return latencies, generation


async def settle(pollers: list[Poller], version: int, seconds: float = 1.5) -> None:
    """Waits until every poller holds `version`, then `seconds` more so each is in its next poll."""
    deadline = time.monotonic() + 30
    while any(p.champion != version for p in pollers):
        if time.monotonic() > deadline:
            missing = [p.id for p in pollers if p.champion != version]
            raise RuntimeError(f"{len(missing)} pollers never reached version {version}: {missing[:5]}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(seconds)


def fetch_throughput(base: str, token: str, digest: str, expected: bytes | None) -> float:
    """MB/s of one streamed download (1 MiB reads), hashed only when `expected` is given."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    start = time.perf_counter()
    connection.request("GET", f"/cp/v1/blobs/{digest}", headers={"authorization": f"Bearer {token}"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET blob from {base}: {response.status} {response.read()[:200]!r}")
    hasher = hashlib.sha256() if expected is not None else None
    total = 0
    while chunk := response.read(1 << 20):
        total += len(chunk)
        if hasher:
            hasher.update(chunk)
    elapsed = time.perf_counter() - start
    connection.close()
    if hasher and "sha256:" + hasher.hexdigest() != digest:
        raise RuntimeError(f"blob from {base} does not hash to {digest}")
    return total / elapsed / 1e6


def check_versions(pollers: list[Poller], moves: list[tuple[int, int]]) -> list[str]:
    """Every state each poller received against the alias history: problems found."""
    problems = []
    moves = sorted(moves)
    for poller in pollers:
        last = 0
        for _, generation, champion, replica in poller.seen:
            if generation < last:
                problems.append(f"{poller.id}: generation went back from {last} to {generation} ({replica})")
            last = generation
            expected = None
            for moved_at, version in moves:
                if moved_at <= generation:
                    expected = version
            if champion != expected:
                problems.append(f"{poller.id}: generation {generation} served champion {champion}, history says {expected}")
    return problems


# === the run ===


def find_binary(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "modelgate-control-plane"
        if candidate.exists():
            return candidate
    raise SystemExit("no modelgate-control-plane: cargo build -p modelgate-registry --bin modelgate-control-plane")


def find_moto(given: str | None) -> str:
    for candidate in (given, str(REPO / ".venv/moto/bin/moto_server")):
        if candidate and Path(candidate).exists():
            return candidate
    from shutil import which

    found = which("moto_server")
    if not found:
        raise SystemExit("no moto_server: scripts/setup.sh moto")
    return found


async def main_async(args: argparse.Namespace) -> int:
    admin_url = args.db or os.environ.get("MODELGATE_TEST_POSTGRES_URL")
    if not admin_url:
        raise SystemExit("no PostgreSQL: run under scripts/with-postgres.sh or pass --db postgres://...")
    binary = find_binary(args.binary)
    results = REPO / "load-tests" / "results" / "cluster"
    results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="modelgate-cluster-"))
    processes = Processes(results)
    token = secrets.token_hex(16)
    database = "cluster_load"
    psql(admin_url, f"DROP DATABASE IF EXISTS {database}")
    psql(admin_url, f"CREATE DATABASE {database}")
    db_base = admin_url.rsplit("/", 1)[0] + f"/{database}"
    report: list[str] = []
    failed = False
    try:
        # --- moto, with the bucket ---
        moto_port = free_port()
        processes.start("moto", [find_moto(args.moto), "-H", "127.0.0.1", "-p", str(moto_port)])
        endpoint = f"http://127.0.0.1:{moto_port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/modelgate-blobs", method="PUT"), timeout=2)
                break
            except OSError:
                time.sleep(0.05)
        env = dict(os.environ, MODELGATE_ADMIN_TOKEN=token, RUST_LOG="warn")
        s3 = [
            "--blob-store", "s3://modelgate-blobs/blobs",
            "--blob-store-option", f"aws_endpoint={endpoint}",
            "--blob-store-option", "aws_region=us-east-1",
            "--blob-store-option", "aws_access_key_id=test",
            "--blob-store-option", "aws_secret_access_key=test",
        ]  # fmt: skip
        replicas: dict[str, subprocess.Popen] = {}
        urls: dict[str, str] = {}
        max_blob = str(max(args.blob_mib, 1) << 21)
        for name in ("a", "b"):
            argv = [str(binary), "--db", f"{db_base}?application_name=replica-{name}", "--data-dir",
                    str(work / name), "--port", "0", "--max-blob-size", max_blob, *s3]  # fmt: skip
            replicas[name] = processes.start(f"replica-{name}", argv, env)
            urls[name] = "http://" + wait_for_line(replicas[name], "control plane listening on")
        local = processes.start("local", [str(binary), "--data-dir", str(work / "local"), "--port", "0",
                                          "--max-blob-size", max_blob], env)  # fmt: skip
        urls["local"] = "http://" + wait_for_line(local, "control plane listening on")
        api = {name: Api(url, token) for name, url in urls.items()}
        print(f"replicas {urls['a']} {urls['b']}, local {urls['local']}, moto {endpoint}, {binary}", flush=True)

        # --- a model with versions to move the alias between ---
        api["a"].call("POST", "/cp/v1/models", {"name": MODEL})
        versions = [api["a"].push({"model.onnx": f"weights {n}".encode()}) for n in range(2)]
        moves = [(api["a"].set_champion(versions[0]), versions[0])]

        # --- pollers ---
        stop = asyncio.Event()
        pollers = [
            Poller(i, [urls["a"], urls["b"]] if i % 2 == 0 else [urls["b"], urls["a"]], token, args.wait)
            for i in range(args.pollers)
        ]
        tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
        sampler = Sampler({"a": replicas["a"].pid, "b": replicas["b"].pid})
        sampler.thread.start()
        await settle(pollers, versions[0])

        # --- idle: N long polls waiting ---
        idle_start = time.monotonic()
        await asyncio.sleep(args.idle)
        idle_end = time.monotonic()
        connections_idle = pg_connections(admin_url, database)

        # --- fan-out rounds ---
        rounds = []
        rounds_start = time.monotonic()
        current = versions[0]
        for n in range(args.rounds):
            target = versions[1] if current == versions[0] else versions[0]
            at = "a" if n % 2 == 0 else "b"
            latencies, generation = await fan_out(pollers, api[at], target)
            moves.append((generation, target))
            rounds.append((at, latencies))
            current = target
            await settle(pollers, current)
        rounds_end = time.monotonic()
        connections_busy = pg_connections(admin_url, database)

        # --- failover: B goes away ---
        on_b = [p for p in pollers if p.urls[p.current] == urls["b"]]
        replicas["b"].send_signal(signal.SIGKILL)
        replicas["b"].wait()
        killed = time.monotonic()
        deadline = killed + 10
        while time.monotonic() < deadline and any(p.urls[p.current] != urls["a"] for p in pollers):
            await asyncio.sleep(0.01)
        moved_over = sum(1 for p in on_b if p.urls[p.current] == urls["a"])
        moved_over_s = time.monotonic() - killed
        await asyncio.sleep(1.5)
        target = versions[1] if current == versions[0] else versions[0]
        failover_start = time.monotonic()
        after_kill, generation = await fan_out(pollers, api["a"], target)
        moves.append((generation, target))
        await settle(pollers, target)
        failover_end = time.monotonic()
        connections_one = pg_connections(admin_url, database)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sampler.stop.set()
        problems = check_versions(pollers, moves)

        # --- blob fetch throughput: S3 behind replica A vs local files behind L ---
        blob = os.urandom(args.blob_mib << 20)
        upload = {}
        for name in ("a", "local"):
            start = time.perf_counter()
            digest = api[name].put_blob(blob)
            upload[name] = len(blob) / (time.perf_counter() - start) / 1e6
        throughput: dict[str, list[float]] = {"a": [], "local": []}
        for n in range(args.fetches):
            for name in ("a", "local") if n % 2 == 0 else ("local", "a"):
                throughput[name].append(fetch_throughput(urls[name], token, digest, blob if n == 0 else None))

        # --- report ---
        report.append(f"{args.pollers} pollers (half on each replica), {binary.relative_to(REPO)}, "
                      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
        report.append("| round | moved at | p50 ms | p99 ms | max ms | within 1 s |")
        report.append("|---|---|---|---|---|---|")
        for n, (at, latencies) in enumerate(rounds, 1):
            report.append(row(str(n), at.upper(), latencies))
            failed |= max(latencies) > 1.0
        all_latencies = [x for _, latencies in rounds for x in latencies]
        report.append(row("all rounds", "A/B", all_latencies))
        report.append(row("after B killed", "A", after_kill))
        failed |= max(after_kill) > 1.0
        report.append("")
        report.append(f"Failover: {moved_over} of {len(on_b)} pollers on B were polling A {moved_over_s:.2f} s after "
                      f"B was killed (SIGKILL); failovers counted: {sum(p.failovers for p in pollers)}. "
                      f"States checked against the alias history: {sum(len(p.seen) for p in pollers)}, "
                      f"wrong versions or generations going back: {len(problems)}.")  # fmt: skip
        failed |= bool(problems) or moved_over != len(on_b)
        report.append("")
        idle_a = sampler.window("a", idle_start, idle_end)
        busy_a = sampler.window("a", rounds_start, rounds_end)
        one_a = sampler.window("a", failover_start, failover_end)
        report.append("| replica A | CPU % of a core | RSS MiB (max) | PostgreSQL connections (A / B) |")
        report.append("|---|---|---|---|")
        conn = lambda c: f"{c.get('replica-a', 0)} / {c.get('replica-b', 0)}"  # noqa: E731
        report.append(f"| {args.idle:.0f} s idle, {args.pollers // 2} polls waiting | {idle_a['cpu_pct']:.1f} | "
                      f"{idle_a['rss_mib_max']:.1f} | {conn(connections_idle)} |")  # fmt: skip
        report.append(f"| {args.rounds} fan-out rounds | {busy_a['cpu_pct']:.1f} | {busy_a['rss_mib_max']:.1f} | "
                      f"{conn(connections_busy)} |")  # fmt: skip
        report.append(f"| B killed, all {args.pollers} polls on A, one move | {one_a['cpu_pct']:.1f} | "
                      f"{one_a['rss_mib_max']:.1f} | {conn(connections_one)} |")  # fmt: skip
        report.append("")
        report.append(f"Blob of {args.blob_mib} MiB through the control plane ({args.fetches} fetches each, "
                      f"alternating; MB/s):")  # fmt: skip
        report.append("")
        report.append("| store behind the control plane | upload MB/s | fetch MB/s median | min | max |")
        report.append("|---|---|---|---|---|")
        for name, label in (("a", "S3 (moto) behind replica A"), ("local", "local files (L)")):
            values = throughput[name]
            report.append(f"| {label} | {upload[name]:.0f} | {statistics.median(values):.0f} | {min(values):.0f} | "
                          f"{max(values):.0f} |")  # fmt: skip
        ratio = statistics.median(throughput["a"]) / statistics.median(throughput["local"])
        report.append("")
        report.append(f"S3 / local fetch throughput: {ratio:.2f}")
        if problems:
            report.append("")
            report.extend(f"- {p}" for p in problems[:20])
    finally:
        processes.stop_all()
        try:
            psql(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        except subprocess.CalledProcessError:
            pass
    text = "\n".join(report)
    print(text)
    (results / "cluster.md").write_text(text + "\n")
    return 1 if failed else 0


def row(name: str, at: str, latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    within = sum(1 for x in latencies if x <= 1.0)
    return (f"| {name} | {at} | {percentile(ms, 0.5):.0f} | {percentile(ms, 0.99):.0f} | {max(ms):.0f} | "
            f"{within}/{len(ms)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--wait", type=int, default=30, help="seconds each long poll asks to wait")
    parser.add_argument("--idle", type=float, default=10, help="seconds of idle long polls measured")
    parser.add_argument("--blob-mib", type=int, default=64)
    parser.add_argument("--fetches", type=int, default=6)
    parser.add_argument("--binary", help="modelgate-control-plane (default: target/release, else target/debug)")
    parser.add_argument("--moto", help="moto_server (default: .venv/moto/bin/moto_server, else PATH)")
    parser.add_argument("--db", help="PostgreSQL admin URL (default: $MODELGATE_TEST_POSTGRES_URL)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()

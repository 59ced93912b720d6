"""Starting and stopping the servers a load test measures, on loopback ports the OS picks.

Every process is started in its own process group so that stopping it also stops what it spawned
(PyTriton's tritonserver, MLServer's worker processes, nginx's worker), and every process is
registered in a `Processes` context so that an exception or Ctrl-C still stops them.

A process group, not a session: with the kernel's autogroup scheduling (on here), a new session
gets its own CPU share, and a server in its own share next to perf_analyzer's 1 + N threads in
another starves perf_analyzer's main thread until it never finishes a level (measured: stuck at
concurrency 16 on 2 of 2 tries with `setsid`, 0 of 2 without). In one share they compete as
threads, as on a machine without autogroups.
Output goes to a log file under the results folder, never to the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "load-tests" / "results"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET `url`; returns (status, body). Connection errors raise OSError."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post_json(url: str, body: dict, timeout: float = 10.0) -> tuple[int, dict]:
    """POST a JSON body; returns (status, decoded JSON reply)."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace")}


class Server:
    """One started process and its log."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path):
        self.name = name
        self.popen = popen
        self.log = log

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}; last lines of {self.log}:\n{self.log_tail()}")

    def wait_http(self, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        """Waits until GET `url` answers 200, the process dies, or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_running()
            try:
                status, body = http_get(url, headers=headers)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout:.0f} s ({last}); "
                           f"last lines of {self.log}:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        if self.popen.poll() is not None:
            return
        pgid = self.popen.pid  # process_group=0: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.popen.wait(5)
        # Children that outlived their leader (e.g. tritonserver) are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


class Processes(contextlib.AbstractContextManager):
    """Starts servers and stops every one of them on exit, in reverse order."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.servers: list[Server] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Server:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd, process_group=0,
            )
        server = Server(name, popen, log)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def __exit__(self, *exc) -> None:
        while self.servers:
            self.servers.pop().stop()


def stop_on_sigterm() -> None:
    """Turns SIGTERM into KeyboardInterrupt so `with Processes(...)` still cleans up."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def cargo_release_binary(build: bool = True) -> Path:
    """target/release/modelgate, built first unless `build` is False."""
    if build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "modelgate"], cwd=REPO, check=True)
    binary = REPO / "target" / "release" / "modelgate"
    if not binary.exists():
        raise RuntimeError(f"{binary} not found: run `cargo build --release`")
    return binary


def modelgate_argv(binary: Path, repository: Path, http_port: int, grpc_port: int,
                   models: list[str]) -> list[str]:
    """`modelgate serve` on loopback with only `models` loaded and no metrics port."""
    argv = [str(binary), "serve", "--model-repository", str(repository),
            "--http-address", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
            "--metrics-port", "0", "--model-control-mode", "none"]
    for model in models:
        argv += ["--load-model", model]
    return argv

"""Fixtures of the operations page's browser test.

A real `modelgate serve` (MODELGATE_BINARY, default target/debug/modelgate: this suite builds
nothing) on free loopback ports, with a model repository made here from the example models:

- `mlp` with versions 1 and 2 (the same file twice), the canary and its baseline;
- `simple`, a model without a route;
- `broken`, whose config names the model `<img src=x onerror=...>`: it fails to load, and the
  repository index carries that HTML in its reason (model names themselves cannot hold `<`);
- a model with a 128-character name (the longest allowed).

`RegistryGateway` (tests/ui/test_registry_panels.py) is a second gateway, with the embedded
control plane and drift profiling on, serving `drift16` (models/make_models.py --drift, through
.venv/models) from its registry.

The browser is Debian's chromium driven by Playwright (`playwright install` is not used).
Screenshots go to load-tests/results/ui/ (git-ignored).
"""

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MODELGATE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "load-tests" / "results" / "ui"
HTML_NAME = "<img src=x onerror=window.__xss=1>"
LONG_NAME = "a_model_with_a_very_long_name_" + "x" * 98


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repository(root: Path):
    models = REPO_ROOT / "models"
    mlp = root / "mlp"
    for version in ("1", "2"):
        (mlp / version).mkdir(parents=True)
        shutil.copy(models / "mlp" / "1" / "model.onnx", mlp / version / "model.onnx")
    config = (models / "mlp" / "config.pbtxt").read_text()
    (mlp / "config.pbtxt").write_text(config + "version_policy: { all { } }\n")
    shutil.copytree(models / "simple", root / "simple")
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    shutil.copy(models / "simple" / "1" / "model.onnx", broken / "model.onnx")
    (root / "broken" / "config.pbtxt").write_text(f'name: "{HTML_NAME}"\nplatform: "onnxruntime_onnx"\n')
    shutil.copytree(models / "identity", root / LONG_NAME)


class Gateway:
    """A running `modelgate serve` with its admin listener."""

    # Seconds a stopping gateway has before it is killed.
    grace = 10

    def __init__(self, work: Path):
        binary = Path(os.environ.get("MODELGATE_BINARY", REPO_ROOT / "target" / "debug" / "modelgate"))
        if not binary.exists():
            pytest.exit(f"no gateway binary at {binary}: run `cargo build --bin modelgate` first", returncode=2)
        self.binary = binary
        repository = work / "models"
        make_repository(repository)
        self._write_token(work)
        self.http_port, self.admin_port = free_port(), free_port()
        self.log = open(work / "server.log", "w")
        command = [
            str(binary), "serve", "--model-repository", str(repository),
            "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
            "--grpc-port", "0", "--metrics-port", "0", "--strict-readiness", "false",
            "--admin-port", str(self.admin_port), "--admin-token-file", str(self.token_file),
            "--control-plane-port", "0", "--data-dir", str(work / "data"),
        ]
        env = dict(os.environ, RUST_LOG="warn")
        env.pop("MODELGATE_ADMIN_TOKEN", None)
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.admin_port}"
        self.page_url = self.url + "/admin/ui/"
        self._wait_ready("mlp/versions/2", seconds=60)

    def _write_token(self, work: Path):
        self.token = secrets.token_hex(16)
        self.token_file = work / "admin-token"
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)

    def _wait_ready(self, model: str, seconds: int):
        """Until `model` is ready and the page answers (exits pytest when the gateway dies or is late)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.exit(f"the gateway exited with {self.process.returncode} (log: {self.log.name})", returncode=1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/models/{model}/ready", timeout=2):
                    pass
                with urllib.request.urlopen(self.page_url, timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.exit(f"the gateway did not become ready within {seconds} s", returncode=1)

    def admin_cli(self, *args):
        """`modelgate admin ARGS...` against this gateway; its standard output."""
        command = [str(self.binary), "admin", "--address", f"127.0.0.1:{self.admin_port}",
                   "--token-file", str(self.token_file), *args]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class RegistryGateway(Gateway):
    """A `modelgate serve` that runs the embedded control plane and profiles traffic for drift:
    1-second windows, the evaluator every second over the last 4 s, 100 rows a verdict. Its
    repository holds `drift16` (models/make_models.py --drift: INPUT0 FP32 [n, 16], CAT INT64
    [n, 1]), which the embedded registry is seeded with (alias champion) and serves from then on.
    `restart()` stops it and starts it again on the same ports and data directory."""

    grace = 15

    def __init__(self, work: Path):
        self.binary = Path(os.environ.get("MODELGATE_BINARY", REPO_ROOT / "target" / "debug" / "modelgate"))
        self.work = work
        python = REPO_ROOT / ".venv" / "models" / "bin" / "python"
        if not python.exists():
            pytest.exit(f"{python} is missing: scripts/setup.sh models", returncode=2)
        subprocess.run([str(python), str(REPO_ROOT / "models" / "make_models.py"), "--drift", "--only", "drift16",
                        "--out", str(work / "built")], check=True, capture_output=True, timeout=120)
        shutil.copytree(work / "built" / "drift16", work / "models" / "drift16")
        self._write_token(work)
        self.http_port, self.admin_port, self.cp_port = free_port(), free_port(), free_port()
        config = work / "modelgate.toml"
        config.write_text(
            f'[server]\naddress = "127.0.0.1"\nhttp_port = {self.http_port}\ngrpc_port = 0\nmetrics_port = 0\n'
            f'\n[repository]\npath = "{work / "models"}"\n'
            f'\n[admin]\nport = {self.admin_port}\n'
            "\n[drift]\nenabled = true\nwindow_seconds = 1\n")
        self.command = [
            str(self.binary), "serve", "--config", str(config), "--admin-token-file", str(self.token_file),
            "--data-dir", str(work / "data"), "--control-plane-port", str(self.cp_port),
            "--drift-every", "1", "--drift-span", "4", "--drift-min-rows", "100",
        ]
        self.url = f"http://127.0.0.1:{self.admin_port}"
        self.page_url = self.url + "/admin/ui/"
        self.starts = 0
        self.start()

    def start(self):
        self.starts += 1
        self.log = open(self.work / f"server-{self.starts}.log", "w")
        env = dict(os.environ, RUST_LOG="warn")
        env.pop("MODELGATE_ADMIN_TOKEN", None)
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready("drift16", seconds=90)

    def registry_cli(self, *args, actor="ui-test"):
        """`modelgate registry ARGS...` against the embedded control plane; its standard output."""
        command = [str(self.binary), "registry", "--address", f"127.0.0.1:{self.cp_port}",
                   "--token-file", str(self.token_file), "--actor", actor, *args]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout

    def restart(self):
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("modelgate-ui")
    gateway = Gateway(work)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.exit(f"no chromium at {CHROMIUM}: scripts/setup.sh apt (or set MODELGATE_CHROMIUM)", returncode=2)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh tab (its own session storage) on a laptop-sized screen; fails the test on any
    error the page's scripts throw."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture(scope="session")
def shoot():
    """shoot(page, name): a full-page screenshot in load-tests/results/ui/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shoot(page, name):
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    return shoot

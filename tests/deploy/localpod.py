"""Runs the containers of rendered Kubernetes manifests as local processes.

What a pod would get from the cluster is laid out under a temporary directory instead: the
ConfigMaps' files, the Secrets' keys (test values), emptyDir and PersistentVolumeClaim volumes as
empty directories owned by the pod's runAsUser, and the image's own paths (read from
deploy/Dockerfile's COPY lines) mapped back to the repository. Then the container's command,
args and env are rewritten in exactly two ways, paths (mount and image paths to their local
stand-ins) and ports (every port the manifests name to a free local one), plus the Service names
a config refers to (to 127.0.0.1 and the local port of the pod behind the Service), and the real
binary from target/debug is started with them, as the pod's user. Nothing else is changed, so a
flag, a config key or an env name that the binary does not know fails here as it would in a pod.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = DEPLOY / "kubernetes" / "overlays"
DOCKERFILE = DEPLOY / "Dockerfile"
# Where the binaries come from (built by scripts/test.sh, or `cargo build --bin modelgate ...`).
BIN_DIR = Path(os.environ.get("MODELGATE_BIN_DIR", REPO / "target" / "debug"))
# Every port number the manifests use; each is replaced by a free local port per run.
MANIFEST_PORTS = (8000, 8001, 8002, 8003, 8004)
# Longest wait for a startup probe here (the manifests allow minutes for big models).
START_TIMEOUT_S = 60.0


def overlays() -> list[str]:
    return sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists())


def render(overlay: str) -> list[dict]:
    """`kubectl kustomize` of an overlay, as a list of objects."""
    if shutil.which("kubectl") is None:
        raise RuntimeError("kubectl not found: it renders the Kustomize overlays (kubectl kustomize)")
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS / overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# === deploy/Dockerfile ===


@dataclass
class Image:
    """What deploy/Dockerfile puts in the image that the manifests rely on."""

    entrypoint: list[str]
    env: dict[str, str]
    user: str
    # image path -> local path standing in for it (COPY sources, laid out under `root`)
    paths: dict[str, Path]
    # /usr/local/bin/NAME -> the local binary standing in for it
    binaries: dict[str, Path]
    cargo_build: list[str]
    root: Path


def read_dockerfile() -> Image:
    """Reads deploy/Dockerfile and lays out what its final stage COPYs under a temporary
    "image root" (symlinks to the repository, the build stage's target/release/X being
    BIN_DIR/X), so that an image path P stands for ROOT/P."""
    text = DOCKERFILE.read_text()
    # Join continuation lines.
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages: list[str] = []
    entrypoint: list[str] = []
    env: dict[str, str] = {}
    user = ""
    copies: dict[str, Path] = {}
    binaries: dict[str, Path] = {}
    cargo_build: list[str] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append(rest)
        elif word == "RUN" and "cargo build" in rest:
            cargo_build = rest[rest.index("cargo build") :].split("&&")[0].split()
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "ENV" and len(stages) > 1:
            key, _, value = rest.partition("=")
            env[key.strip()] = value.strip()
        elif word == "USER":
            user = rest.strip()
        elif word == "COPY" and len(stages) > 1:  # the final stage's
            parts = rest.split()
            from_build = any(p.startswith("--from=") for p in parts)
            src, dest = [p for p in parts if not p.startswith("--")]
            if from_build:
                # The build stage's WORKDIR is /src, a copy of the repository.
                rel = src.removeprefix("/src/")
                if rel.startswith("target/release/"):
                    local = BIN_DIR / rel.removeprefix("target/release/")
                    binaries[dest] = local
                else:
                    local = REPO / rel
            else:
                local = REPO / src
            copies[dest.rstrip("/")] = local
    root = Path(tempfile.mkdtemp(prefix="modelgate-image-"))
    root.chmod(0o755)
    atexit.register(shutil.rmtree, root, True)
    paths: dict[str, Path] = {}
    for dest, local in copies.items():
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(local.resolve())
        # The path and every folder above it stand for their place under the image root.
        for p in [Path(dest), *Path(dest).parents]:
            if str(p) != "/":
                paths[str(p)] = root / str(p).lstrip("/")
    return Image(entrypoint, env, user, paths, binaries, cargo_build, root)


# === Pods ===


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def modelgate_containers(pod_spec: dict) -> list[dict]:
    """The containers that run the modelgate image (init sidecars included)."""
    return [
        c
        for c in pod_spec.get("initContainers", []) + pod_spec.get("containers", [])
        if c["image"].split("/")[-1].split(":")[0] == "modelgate"
    ]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class Secrets:
    """Test values of the Secrets the manifests reference: one random value per key."""

    def __init__(self, overrides: dict[tuple[str, str], str] | None = None):
        self.values = dict(overrides or {})

    def has(self, name: str) -> bool:
        """Whether the Secret `name` was given (optional Secrets exist only when given)."""
        return any(secret == name for secret, _ in self.values)

    def get(self, name: str, key: str) -> str:
        if (name, key) not in self.values:
            self.values[(name, key)] = os.urandom(24).hex()
        return self.values[(name, key)]


@dataclass
class Running:
    """One container running as a local process."""

    name: str
    container: dict
    pod_spec: dict
    process: subprocess.Popen
    ports: dict[int, int]  # manifest port -> local port
    log: Path
    argv: list[str]
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    # The pod template's annotations (prometheus.io/*), set by the caller.
    annotations: dict[str, str] = field(default_factory=dict)

    def port(self, ref) -> int:
        """The local port of a probe's or Service's port (a number or a containerPort name)."""
        if isinstance(ref, str):
            named = [p["containerPort"] for p in self.container.get("ports", []) if p.get("name") == ref]
            if not named:
                raise AssertionError(f"{self.name}: no containerPort named {ref!r}")
            ref = named[0]
        return self.ports.get(ref, ref)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float) -> float:
        """SIGTERM, as the kubelet sends it; returns seconds to exit. Kills after `timeout`."""
        start = time.monotonic()
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.name}: still running {timeout:.0f} s after SIGTERM\n{self.log_tail()}")
        return time.monotonic() - start


class LocalPod:
    """Lays out a pod's volumes under `root` and runs its modelgate containers."""

    def __init__(self, workload: dict, objects: list[dict], root: Path, secrets: Secrets, image: Image):
        self.workload = workload
        self.objects = objects
        self.spec = workload["spec"]["template"]["spec"]
        self.root = root
        self.secrets = secrets
        self.image = image
        self.uid = self.spec.get("securityContext", {}).get("runAsUser")
        self.gid = self.spec.get("securityContext", {}).get("runAsGroup", self.uid)
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.running: list[Running] = []

    # --- volumes ---

    def _volume_dir(self, name: str) -> Path:
        volume = self.volumes.get(name)
        if volume is None:
            raise AssertionError(f"volumeMount {name!r} names no volume of the pod")
        path = self.root / "volumes" / name
        if path.exists():
            return path
        path.mkdir(parents=True)
        if "configMap" in volume:
            cm_name = volume["configMap"]["name"]
            cms = [o for o in by_kind(self.objects, "ConfigMap") if o["metadata"]["name"] == cm_name]
            if not cms:
                raise AssertionError(f"volume {name!r}: ConfigMap {cm_name!r} is not in the rendered manifests")
            for key, text in cms[0].get("data", {}).items():
                (path / key).write_text(text)
        elif "secret" in volume:
            secret = volume["secret"]
            items = secret.get("items") or [{"key": "token", "path": "token"}]
            for item in items:
                (path / item["path"]).write_text(self.secrets.get(secret["secretName"], item["key"]) + "\n")
        elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                names = [o["metadata"]["name"] for o in by_kind(self.objects, "PersistentVolumeClaim")]
                if claim not in names:
                    raise AssertionError(f"volume {name!r}: PersistentVolumeClaim {claim!r} is not rendered")
            # Writable by the pod's user only (fsGroup): the rest of the "root filesystem" is not.
            if self.uid is not None:
                os.chown(path, self.uid, self.gid)
            path.chmod(0o770)
        else:
            raise AssertionError(f"volume {name!r}: kind not handled here: {sorted(volume)}")
        return path

    def path_map(self, container: dict) -> dict[str, str]:
        """Image or mount path -> local path, for this container."""
        mapping = {k: str(v) for k, v in self.image.paths.items()}
        for mount in container.get("volumeMounts", []):
            mapping[mount["mountPath"].rstrip("/")] = str(self._volume_dir(mount["name"]))
        return mapping

    # --- rewriting ---

    @staticmethod
    def rewrite(text: str, paths: dict[str, str], ports: dict[int, int], hosts: dict[str, str]) -> str:
        # One pass each, so that a replacement is never rewritten again (a local path under /tmp
        # must not be taken for the pod's /tmp).
        if hosts:
            alternatives = "|".join(re.escape(h) for h in sorted(hosts, key=len, reverse=True))
            text = re.sub(rf"(?<![\w.-])({alternatives})(?![\w.-])", lambda m: hosts[m.group(1)], text)
        if paths:
            alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
            text = re.sub(
                rf"(?<![\w/.-])({alternatives})(?=/|\"|'|\s|,|$)", lambda m: paths[m.group(1)], text, flags=re.M
            )
        alternatives = "|".join(str(p) for p in ports)
        return re.sub(rf"(?<![\d.])({alternatives})(?!\d)", lambda m: str(ports[int(m.group(1))]), text)

    def _env(self, container: dict, paths, ports, hosts) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            # Kubernetes sets HOSTNAME to the pod's name.
            "HOSTNAME": f"{self.workload['metadata']['name']}-7d4b9c-x2x4q",
        }
        env.update({k: self.rewrite(v, paths, ports, hosts) for k, v in self.image.env.items()})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.rewrite(item["value"], paths, ports, hosts)
            elif "secretKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["secretKeyRef"]
                if ref.get("optional") and not self.secrets.has(ref["name"]):
                    # Kubernetes leaves the variable unset when an optional Secret is absent.
                    continue
                env[item["name"]] = self.secrets.get(ref["name"], ref["key"])
            else:
                raise AssertionError(f"env {item['name']}: source not handled here: {item}")
        return env

    def start(self, container: dict, hosts: dict[str, str] | None = None) -> Running:
        hosts = hosts or {}
        ports = {p: free_port() for p in MANIFEST_PORTS}
        paths = self.path_map(container)
        # Config files of ConfigMap volumes: rewrite their paths, ports and Service hosts in place.
        for mount in container.get("volumeMounts", []):
            if "configMap" in self.volumes[mount["name"]]:
                for f in self._volume_dir(mount["name"]).iterdir():
                    f.write_text(self.rewrite(f.read_text(), paths, ports, hosts))
        command = container.get("command") or self.image.entrypoint[:1]
        args = (self.image.entrypoint[1:] if not container.get("command") else []) + container.get("args", [])
        binary = command[0]
        image_binary = f"/usr/local/bin/{binary}"
        if image_binary not in self.image.binaries:
            raise AssertionError(f"{container['name']}: {binary!r} is not a binary deploy/Dockerfile copies")
        local_binary = self.image.binaries[image_binary]
        if not local_binary.exists():
            raise AssertionError(f"{local_binary} is missing: build it first (cargo build --bin {binary})")
        argv = [str(local_binary)] + [self.rewrite(a, paths, ports, hosts) for a in command[1:] + args]
        env = self._env(container, paths, ports, hosts)
        # The working directory: the image's WORKDIR stands for a read-only place.
        cwd = self.root / "image-root"
        cwd.mkdir(exist_ok=True)
        log = self.root / f"{container['name']}.log"
        user = []
        if self.uid is not None and os.getuid() == 0:
            user = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                user + argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        running = Running(container["name"], container, self.spec, process, ports, log, argv, self.root, env)
        self.running.append(running)
        return running

    def stop_all(self) -> None:
        for r in self.running:
            if r.alive():
                r.process.kill()
                r.process.wait()


# === Checks on a running container ===


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def probe_ok(running: Running, probe: dict) -> tuple[bool, str]:
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            status, body = http_get(running.port(get["port"]), get.get("path", "/"))
            return status == 200, f"GET {get.get('path')} -> {status} {body[:200]}"
        if "tcpSocket" in probe:
            with socket.create_connection(("127.0.0.1", running.port(probe["tcpSocket"]["port"])), timeout=2):
                return True, "connected"
        raise AssertionError(f"probe kind not handled here: {sorted(probe)}")
    except (OSError, urllib.error.URLError) as e:
        return False, str(e)


def wait_probe(running: Running, probe: dict, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        if not running.alive():
            raise AssertionError(
                f"{running.name} exited ({running.process.returncode}) before its {what} passed\n"
                f"argv: {running.argv}\n{running.log_tail()}"
            )
        ok, detail = probe_ok(running, probe)
        if ok:
            return
        time.sleep(0.2)
    raise AssertionError(f"{running.name}: {what} did not pass in {timeout:.0f} s: {detail}\n{running.log_tail()}")


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets `pid` listens on."""
    out = subprocess.run(["ss", "-Hltnp"], check=True, capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        found.add((address.strip("[]"), int(port)))
    return found


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"
